"""What a model family's training task hands the training loop: packed batches, seeded and fingerprinted data.

Each family (:class:`dpslm_utils.ulm.UnitLMTask`, :class:`dpslm_utils.ellav.ELLAVTask`) turns its data
into :class:`PackedBatch` es; :mod:`dpslm_utils.training` runs the same loop over either.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

FILLER_ID = 0
"""The one input of a micro-batch that holds no sequence (id 0 exists in every vocabulary: BOS, or ELLA-V's UNK)."""


@dataclass
class PackedBatch:
    """Sequences packed end to end, as the originals' collate: every array ``[N]``, ``sum(seqlens) == N``."""

    src_ids: torch.Tensor
    tgt_ids: torch.Tensor
    loss_mask: torch.Tensor
    seqlens: list[int]

    @classmethod
    def pack(cls, sequences: list[torch.Tensor], loss_masks: list[torch.Tensor]) -> PackedBatch:
        """Each sequence ``ids [L]`` becomes input ``ids[:-1]`` and targets ``ids[1:]`` with its mask ``[L - 1]``.

        No sequence at all (every chunk of a micro-batch too short) gives one :data:`FILLER_ID` input whose
        target the loss does not count: every process still runs its forward and backward pass, as DDP
        needs at each gradient synchronisation, and the batch adds nothing to the loss.
        """
        if not sequences:
            return cls.pack([torch.tensor([FILLER_ID, FILLER_ID])], [torch.tensor([False])])
        return cls(
            src_ids=torch.cat([s[:-1] for s in sequences]),
            tgt_ids=torch.cat([s[1:] for s in sequences]),
            loss_mask=torch.cat(list(loss_masks)),
            seqlens=[len(s) - 1 for s in sequences],
        )

    @property
    def num_tokens(self) -> int:
        return len(self.src_ids)

    def to(self, device: torch.device) -> PackedBatch:
        return PackedBatch(self.src_ids.to(device), self.tgt_ids.to(device), self.loss_mask.to(device), self.seqlens)


def data_fingerprint(parts) -> str:
    """SHA-256 of tensors and strings in order, each prefixed by its size: what a resume compares to the saved data."""
    digest = hashlib.sha256()
    for part in parts:
        data = memoryview(part.encode() if isinstance(part, str) else part.contiguous().numpy()).cast("B")
        digest.update(f"{len(data)}:".encode())
        digest.update(data)
    return digest.hexdigest()


def derived_seed(seed: int, index: int, purpose: int) -> int:
    """The seed of one kind of random draw of a run: ``purpose`` 0 the data order and 1 the chunk starts of epoch
    ``index``, 2 the initial weights (``index`` 0), 3 the dropout masks of rank ``index``."""
    return (seed * 1_000_003 + index * 101 + purpose) % (2**63)
