"""The unit language model (Mistral-ULM): how likely is a unit sequence, and how does it continue?

Token ids are the units shifted by one: ``[0 (BOS)] + [u + 1 for u in units]``, so unit ``u`` is
token ``u + 1`` and the vocabulary has ``k + 1`` entries. There is no end-of-sequence token.
All log-probabilities are natural logarithms (nats).

Training (Mistral-ULM's objective, :class:`UnitLMTask`): every utterance deduplicated and tokenized as
above (:func:`tokenize_units`); a training chunk starts at a random position inside one utterance and
continues with the whole following utterances of the same chapter (parent folder), cut to
``chunk_size`` ids; the model reads ``ids[:-1]`` and predicts ``ids[1:]``, and the loss skips each
chunk's first target (:func:`chunk_loss_mask`).

Checkpoint format (Mistral-ULM ``save_pretrained_checkpoint``):
``{"model_args": {dim, n_layers, head_dim, hidden_dim, n_heads, n_kv_heads, dropout, norm_eps,
vocab_size, rope_theta}, "model_state_dict": {...}}`` (no output bias).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import checkpoints, datasets, registry
from .batches import PackedBatch, data_fingerprint, derived_seed
from .checks import MAX_NEW_TOKENS, as_units, check_count, check_sampling
from .fast import kv_cache_dtype, make_fast
from .transformer import (
    Transformer,
    new_generator,
    prefill,
    sample,
    sequence_logprobs,
    steps,
)

BOS_ID = 0
UNIT_OFFSET = 1
"""Token id of unit ``u`` is ``u + UNIT_OFFSET``; id 0 is BOS."""

CHECKPOINT_KEYS = ("model_args", "model_state_dict")


def official_checkpoint(transformer: Transformer, dropout: float = 0.0) -> dict:
    """``transformer`` in the Mistral-ULM file layout ``{"model_args", "model_state_dict"}``, ready for ``torch.save``."""
    args = transformer.args.to_dict()
    before_dropout = ("dim", "n_layers", "head_dim", "hidden_dim", "n_heads", "n_kv_heads")  # the original's key order
    model_args = {name: args.pop(name) for name in before_dropout} | {"dropout": dropout} | args
    return {"model_args": model_args, "model_state_dict": transformer.state_dict()}


def _with_bos(units: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.tensor([BOS_ID]), units + UNIT_OFFSET])


def tokenize_units(frame_units) -> torch.LongTensor:
    """A training utterance: framewise units deduplicated and encoded as the model reads them,
    ``[BOS (0), u_1 + 1, ..., u_n + 1]`` (what :meth:`UnitLM.tokenize` gives for the deduplicated units)."""
    return _with_bos(torch.unique_consecutive(torch.as_tensor(frame_units).long()))


def chunk_loss_mask(length: int) -> torch.BoolTensor:
    """The loss mask of a training chunk of ``length`` ids: every target but the first."""
    return torch.arange(length - 1) > 0


def load_transformer(path: str | os.PathLike, family: str) -> Transformer:
    """The decoder of a Mistral-ULM checkpoint ``{"model_args", "model_state_dict"}`` (unit or phone LM)."""
    checkpoint = checkpoints.load_checkpoint(path)
    checkpoints.require_keys(checkpoint, CHECKPOINT_KEYS, path, f"Mistral-ULM {family}")
    try:
        return Transformer.from_state_dict(checkpoint["model_args"], checkpoint["model_state_dict"], output_bias=False)
    except ValueError as e:
        raise checkpoints.CheckpointError(f"{path} is not a valid {family} checkpoint: {e}") from e


class UnitLM(nn.Module):
    """A Mistral-style language model over deduplicated units (ids ``0..k-1``)."""

    def __init__(self, transformer: Transformer):
        super().__init__()
        self.transformer = transformer
        self.random_weights = False
        self.fast: str | None = None  # reduced-precision format (dpslm_utils.fast), None = as loaded

    @property
    def k(self) -> int:
        """Number of units (codebook size); the vocabulary is ``k + 1`` with BOS."""
        return self.transformer.args.vocab_size - UNIT_OFFSET

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, device=None, dtype: torch.dtype | None = None, fast: bool | str = False
    ) -> UnitLM:
        """Load an official Mistral-ULM checkpoint ``{"model_args", "model_state_dict"}``.

        ``fast=True``: reduced precision for faster generation (int8 weights on a CPU; see :mod:`dpslm_utils.fast`).
        """
        model = cls(load_transformer(path, "unit LM")).to(device=device, dtype=dtype)
        model.fast = make_fast(model.transformer, fast, weight_bound=True)
        return model

    @classmethod
    def from_pretrained(
        cls, k: int, lmbda: float, hours: str = "1k", device=None, dtype=None, fast: bool | str = False
    ) -> UnitLM:
        """The released unit LM for (k, λ), trained on 1k hours (all 24 pairs) or 60k hours (k=500, λ=4500)."""
        load = functools.partial(cls.from_checkpoint, device=device, dtype=dtype, fast=fast)
        return checkpoints.load_pretrained(load, registry.unit_lm_file(k, lmbda, hours), "unit_lm", k=k)

    def __repr__(self) -> str:
        t = self.transformer
        return checkpoints.describe(self, k=self.k, dim=t.args.dim, n_layers=t.args.n_layers,
                                    dtype=self.fast or t.dtype, device=t.device)  # fmt: skip

    def tokenize(self, units) -> torch.Tensor:
        """Token ids ``[N + 1]``: BOS (0), then each unit plus one."""
        return _with_bos(as_units(units, self.k))

    @torch.inference_mode()
    def logits(self, units) -> torch.Tensor:
        """``[N, k + 1]`` float32: row i scores token id ``units[i] + 1`` given BOS and ``units[:i]``."""
        ids = self.tokenize(units).to(self.transformer.device)
        return self.transformer(ids[None, :-1])[0]

    @torch.inference_mode()
    def _unit_logprobs(self, batch: list, batch_size: int = 16) -> list[torch.Tensor]:
        """For each sequence, ``log p(unit_i | BOS, units before i)`` as FloatTensor ``[N]`` (nats).

        Sequences run ``batch_size`` at a time in order of length, so each padded batch holds
        similar lengths (right padding needs no mask: causal attention never looks ahead to it).
        """
        if not isinstance(batch, (list, tuple)) or len(batch) == 0:
            raise ValueError("expected a non-empty list of unit sequences")
        batch_size = check_count("batch_size", batch_size)
        return sequence_logprobs(self.transformer, [self.tokenize(units) for units in batch], batch_size)

    def loglikelihood(self, units) -> float:
        """``Σ_i log p(unit_i | BOS, units before i)`` in nats for one deduplicated unit sequence."""
        return self.loglikelihood_batch([units])[0]

    def loglikelihood_batch(self, batch: list, batch_size: int = 16) -> list[float]:
        """:meth:`loglikelihood` of each sequence, computed ``batch_size`` sequences at a time."""
        return [row.sum().item() for row in self._unit_logprobs(batch, batch_size)]

    def surprisal(self, units) -> torch.Tensor:
        """``-log p(unit_i | BOS, units before i)`` per unit, FloatTensor ``[N]`` in nats (sum = -loglikelihood)."""
        return -self._unit_logprobs([units])[0]

    @torch.inference_mode()
    def generate(
        self,
        prompt_units,
        max_new_units: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int | None = None,
        n: int = 1,
        seed: int | None = None,
        progress: bool = False,
    ) -> list[torch.Tensor]:
        """``n`` continuations of ``prompt_units``, each LongTensor ``[max_new_units]`` of units ``0..k-1``.

        The n rows are decoded as one batch with a KV cache; BOS is never drawn. An empty prompt
        (``[]``) samples unconditionally from BOS. Sampling as :func:`dpslm_utils.transformer.sample`
        (temperature 0 = greedy), reproducible with ``seed``.
        """
        prompt = _with_bos(as_units(prompt_units, self.k, "prompt_units", allow_empty=True))
        max_new_units = check_count("max_new_units", max_new_units, maximum=MAX_NEW_TOKENS)
        n = check_count("n", n)
        check_sampling(temperature, top_p, top_k)

        generator = new_generator(seed, self.transformer.device)
        cache, logits, position = prefill(self.transformer, [prompt] * n, max_new_units, None, kv_cache_dtype(self.fast))
        new_tokens = []
        for step in steps(max_new_units, progress, "unit LM"):
            logits[:, BOS_ID] = float("-inf")
            token = sample(logits, temperature, top_p, top_k, generator)
            new_tokens.append(token)
            if step + 1 < max_new_units:
                logits = self.transformer(token[:, None], position, cache)[:, -1]
                position = position + 1
        units = (torch.stack(new_tokens, dim=1) - UNIT_OFFSET).cpu()
        return list(units)


# -- training: the tokenized corpus, its chunks and the training task ------------------------------


@dataclass
class UnitCorpus:
    """Tokenized utterances in file order, with their chapters (parent folders): one flat array."""

    ids: torch.Tensor  # [total] int16/int32 token ids of every utterance, one after the other
    offsets: torch.Tensor  # [U + 1] utterance u is ids[offsets[u]:offsets[u + 1]]
    chapters: list[str]  # [U]
    frames: int  # total 50 Hz frames (before deduplication)

    @classmethod
    def from_utterances(cls, utterances: list[torch.Tensor], chapters: list[str], frames: int = 0) -> UnitCorpus:
        lengths = torch.tensor([len(u) for u in utterances], dtype=torch.long)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        ids = torch.cat(list(utterances)).int() if utterances else torch.zeros(0, dtype=torch.int)
        return cls(ids, offsets, list(chapters), frames)

    @classmethod
    def from_files(cls, files: list[Path], root: Path, k: int | None = None) -> UnitCorpus:
        """Read (checking units against ``k``) and tokenize unit files; the chapter of a file is its parent folder relative to ``root``."""
        utterances, chapters, frames = [], [], 0
        for path in files:
            frame_units = datasets.load_frame_units(path, k)
            if len(frame_units) == 0:
                continue
            frames += len(frame_units)
            utterances.append(tokenize_units(frame_units))
            chapters.append(path.parent.relative_to(root).as_posix())
        return cls.from_utterances(utterances, chapters, frames)

    def __len__(self) -> int:
        return len(self.chapters)

    def utterance(self, index: int) -> torch.LongTensor:
        return self.ids[self.offsets[index] : self.offsets[index + 1]].long()

    def length(self, index: int) -> int:
        return int(self.offsets[index + 1] - self.offsets[index])

    def chunk(self, index: int, start: int, chunk_size: int) -> torch.LongTensor:
        """Utterance ``index`` from ``start``, then whole following utterances of its chapter, cut to ``chunk_size`` ids."""
        end = index + 1
        total = self.length(index) - start
        while total < chunk_size and end < len(self) and self.chapters[end] == self.chapters[index]:
            total += self.length(end)
            end += 1
        first = int(self.offsets[index]) + start
        return self.ids[first : min(first + chunk_size, int(self.offsets[end]))].long()


class UnitLMTask:
    """The unit LM's training task (a :class:`dpslm_utils.training.Task`): chunks of the unit corpus; whole
    utterances for validation; checkpoints in the Mistral-ULM layout."""

    ignore_index = -100
    output_bias = False

    def __init__(self, config: dict, train: UnitCorpus, val: UnitCorpus):
        self.config, self.train, self.val = config, train, val
        self.vocab_size = config["k"] + UNIT_OFFSET
        self._plan: tuple[int, torch.Tensor] | None = None
        self.lengths = train.offsets.diff()
        self.summary = {"train_files": len(train), "val_files": len(val), "train_tokens": len(train.ids),
                        "val_tokens": len(val.ids), "train_hours": round(train.frames / 50 / 3600, 4),
                        "units_per_second": round((len(train.ids) - len(train)) / max(train.frames / 50, 1e-9), 2)}  # fmt: skip

    @classmethod
    def from_folders(cls, config: dict, units_dir, val_dir=None) -> UnitLMTask:
        """The unit files under ``units_dir`` (validation: ``val_dir``'s, or a held-out fraction), read and checked."""
        found = datasets.unit_files(units_dir)
        if val_dir is not None:
            train_files, val_files = found, datasets.unit_files(val_dir)
        else:
            train_files, val_files = datasets.hold_out(found, config["val_fraction"], config["seed"])
        train = UnitCorpus.from_files(list(train_files.values()), Path(units_dir), config["k"])
        val = UnitCorpus.from_files(list(val_files.values()), Path(val_dir or units_dir), config["k"])
        if len(train) == 0 or len(val) == 0:
            raise ValueError("no training or no validation utterances (are the unit files empty?)")
        if int((val.offsets.diff() - 2).clamp(min=0).sum()) == 0:  # BOS, then a first unit the loss skips
            raise ValueError(f"no validation utterance has 2 or more units (the loss skips each one's first unit), so "
                             f"there is nothing to validate on: give longer or more validation files "
                             f"({'in ' + str(val_dir) if val_dir is not None else 'or val_dir'})")  # fmt: skip
        return cls(config, train, val)

    def num_items(self) -> int:
        return len(self.train)

    def fingerprint(self) -> str:
        return data_fingerprint(part for corpus in (self.train, self.val)
                                for part in (corpus.ids, corpus.offsets, "\n".join(corpus.chapters)))  # fmt: skip

    def batch(self, epoch: int, items: torch.Tensor) -> PackedBatch:
        if self._plan is None or self._plan[0] != epoch:  # the epoch's random chunk starts
            generator = torch.Generator().manual_seed(derived_seed(self.config["seed"], epoch, 1))
            self._plan = (epoch, (torch.rand(len(self.train), generator=generator, dtype=torch.float64)
                                  * self.lengths).long())  # fmt: skip
        chunks = [self.train.chunk(int(i), int(self._plan[1][i]), self.config["chunk_size"]) for i in items]
        chunks = [c for c in chunks if len(c) >= 2]
        return PackedBatch.pack(chunks, [chunk_loss_mask(len(c)) for c in chunks])

    def val_batches(self, rank: int, world_size: int):
        utterances = [self.val.utterance(i) for i in range(rank, len(self.val), world_size)]
        utterances = [u for u in utterances if len(u) >= 2]
        for begin in range(0, len(utterances), self.config["batch_size"]):
            group = utterances[begin : begin + self.config["batch_size"]]
            yield PackedBatch.pack(group, [chunk_loss_mask(len(u)) for u in group])

    def checkpoint(self, model: Transformer) -> dict:
        return official_checkpoint(model, dropout=self.config["dropout"])
