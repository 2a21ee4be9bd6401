"""Training data for the unit LM and ELLA-V: unit and codec files, tokenization, chunks and batches.

File formats the trainers read (matched by relative path without suffix):

* units: ``.npy`` int ``[N, 2]`` table of (unit, duration in 50 Hz frames), as ``dpslm encode``
  writes it (:func:`save_units`); a 1-D ``.npy`` of framewise units (the original scripts'); a
  ``.txt`` of framewise unit names ``"u74 u74 u123 ..."`` (the original ELLA-V data). ``dpslm
  encode``'s own ``.txt`` is *deduplicated* (no durations): train from its ``.npy`` instead, which
  is preferred when a folder holds both.
* codec tokens: 1-D ``.npy`` integer arrays (``dpslm encode-codec``) or the original's ``.pt`` tensors.

The unit LM's objective (Mistral-ULM): every utterance deduplicated and tokenized as BOS (0) then
unit + 1; a training chunk starts at a random position inside one utterance and continues with the
whole following utterances of the same chapter (parent folder), cut to ``chunk_size`` ids; the
model reads ``ids[:-1]`` and predicts ``ids[1:]``, and the loss skips each chunk's first target.

ELLA-V's (:func:`ellav_example`): the original ``encode_train`` interleaving of units, codec
tokens and EOP, with its loss mask.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoints import write_atomically
from .ellav import UNIT_NAME
from .ulm import BOS_ID, UNIT_OFFSET

UNIT_SUFFIXES = (".npy", ".txt")  # in order of preference for one stem
CODE_SUFFIXES = (".npy", ".pt")


# -- unit and codec files -------------------------------------------------------------------------


def save_units(path: str | os.PathLike, units, durations) -> None:
    """Write deduplicated ``units [N]`` and their ``durations [N]`` (50 Hz frames) as ``.npy`` int64 ``[N, 2]``.

    The file ``dpslm encode`` writes; written atomically (no half-written file on failure).
    """
    units, durations = torch.as_tensor(units).long().reshape(-1), torch.as_tensor(durations).long().reshape(-1)
    if len(units) != len(durations):
        raise ValueError(f"units ({len(units)}) and durations ({len(durations)}) differ in length")
    if len(durations) and int(durations.min()) < 1:
        raise ValueError("every duration must be at least one frame")
    save_array(path, torch.stack([units, durations], dim=1).numpy())


def save_array(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` to ``path``, atomically."""

    def save(tmp: Path) -> None:
        with tmp.open("wb") as f:  # np.save(path) would append ".npy" to the temporary name
            np.save(f, array)

    write_atomically(Path(path), save)


def load_frame_units(path: str | os.PathLike) -> torch.LongTensor:
    """Framewise (50 Hz) units ``[T]`` from any unit file the trainers accept (see the module docstring)."""
    path = Path(path)
    if path.suffix == ".txt":
        names = path.read_text().split()
        bad = [n for n in names if not UNIT_NAME.fullmatch(n)]
        if bad:
            raise ValueError(f"{path}: expected unit names like 'u74', found {bad[0]!r}")
        return torch.tensor([int(n[1:]) for n in names], dtype=torch.long)
    if path.suffix != ".npy":
        raise ValueError(f"{path}: unit files are .npy or .txt, not {path.suffix!r}")
    array = np.load(path, allow_pickle=False)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{path}: units must be integers, found {array.dtype}")
    if array.ndim == 2 and array.shape[1] == 2:  # (unit, duration) table
        table = torch.from_numpy(array.astype(np.int64))
        return table[:, 0].repeat_interleave(table[:, 1].clamp(min=0))
    if array.ndim == 1:
        return torch.from_numpy(array.astype(np.int64))
    raise ValueError(f"{path}: expected a [N, 2] (unit, duration) table or 1-D framewise units, got shape {array.shape}")


def load_codes(path: str | os.PathLike) -> torch.LongTensor:
    """Codec tokens ``[T]`` (40 Hz) from a ``.npy`` array or the original's ``.pt`` tensor."""
    path = Path(path)
    if path.suffix == ".pt":
        codes = torch.load(path, map_location="cpu", weights_only=True)
    elif path.suffix == ".npy":
        codes = torch.from_numpy(np.load(path, allow_pickle=False))
    else:
        raise ValueError(f"{path}: codec files are .npy or .pt, not {path.suffix!r}")
    if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.dtype == torch.bool:
        raise ValueError(f"{path}: codec tokens must be an integer array")
    if codes.dim() != 1:
        codes = codes.squeeze()
        if codes.dim() != 1:
            raise ValueError(f"{path}: expected one sequence of codec tokens, got shape {list(codes.shape)}")
    return codes.long()


def find_files(root: str | os.PathLike, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Relative path without suffix -> file, for files under ``root`` with one of ``suffixes``.

    When a stem exists with several suffixes the first in ``suffixes`` wins. Sorted by key.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory")
    found: dict[str, Path] = {}
    for path in root.rglob("*"):
        if path.suffix in suffixes and path.is_file():
            key = path.relative_to(root).with_suffix("").as_posix()
            if key not in found or suffixes.index(path.suffix) < suffixes.index(found[key].suffix):
                found[key] = path
    return dict(sorted(found.items()))


# -- unit LM --------------------------------------------------------------------------------------


def tokenize_units(frame_units: torch.Tensor) -> torch.LongTensor:
    """Deduplicate framewise units and encode them: ``[BOS (0), u_1 + 1, ..., u_n + 1]``."""
    units = torch.unique_consecutive(torch.as_tensor(frame_units).long())
    return torch.cat([torch.tensor([BOS_ID]), units + UNIT_OFFSET])


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


def read_unit_corpus(files: list[Path], root: Path) -> UnitCorpus:
    """Read and tokenize unit files; the chapter of a file is its parent folder relative to ``root``."""
    utterances, chapters, frames = [], [], 0
    for path in files:
        frame_units = load_frame_units(path)
        if len(frame_units) == 0:
            continue
        frames += len(frame_units)
        utterances.append(tokenize_units(frame_units))
        chapters.append(path.parent.relative_to(root).as_posix())
    return UnitCorpus.from_utterances(utterances, chapters, frames)


# -- ELLA-V ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ELLAVExample:
    """One ELLA-V training sequence: ``ids [L]`` and ``loss_mask [L - 1]`` (which targets ``ids[1:]`` count)."""

    ids: torch.LongTensor
    loss_mask: torch.BoolTensor


def ellav_example(frame_units, codes, tokenizer: dict) -> ELLAVExample:
    """The original ``encode_train``: framewise units ``[T_u]`` (50 Hz) + codes ``[T_c]`` (40 Hz) -> ids, loss mask.

    ``frame_units`` holds unit numbers (ints) or names (``"u74"``). The sequence is the deduplicated
    units ("global advance"), BOS, then every unit (at its first frame), codec token (at its frame)
    and EOP (at the end of each unit's run) sorted by time, at equal times EOP first, then the unit,
    then codes; then EOS. Tokens outside the vocabulary become UNK (the trainer's loss ignores UNK
    targets).

    The loss mask is ``~user_input[1:]``, where the original marks as user input BOS and the ids
    strictly *above* the first unit id and below the codec ids. So the unit with the lowest id (u0)
    is not masked and is predicted by the loss like a codec token: a quirk of the released models'
    training, reproduced here as it is.
    """
    vocab = tokenizer["token_to_id_dict"]
    unit_rate, codec_rate = float(tokenizer["phone_token_rate"]), float(tokenizer["codec_token_rate"])
    names = [u if isinstance(u, str) else f"u{int(u)}" for u in _as_list(frame_units)]
    codes = _as_list(codes)
    skip = set(tokenizer.get("tokens_not_to_sandwich", []))

    runs = []  # (name, first frame, last frame + 1)
    for i, name in enumerate(names):
        if runs and runs[-1][0] == name:
            runs[-1][2] = i + 1
        else:
            runs.append([name, i, i + 1])
    runs = [r for r in runs if r[0] not in skip]
    # (time in seconds, priority, token): EOP 0, unit 1, codec 2; times as the original computes them
    events = [(end / unit_rate, 0, "EOP") for _, _, end in runs]
    events += [(start / unit_rate, 1, name) for name, start, _ in runs]
    events += [(i / codec_rate, 2, str(c)) for i, c in enumerate(codes)]
    events.sort(key=lambda e: (e[0], e[1]))
    tokens = [name for name, _, _ in runs] + ["BOS"] + [e[2] for e in events] + ["EOS"]

    unk = vocab["UNK"]
    ids = torch.tensor([vocab.get(t, unk) for t in tokens], dtype=torch.long)
    specials, unit_types = int(tokenizer["num_special_types"]), int(tokenizer["num_phone_types"])
    user_input = ((ids > specials) & (ids < specials + unit_types)) | (ids == vocab["BOS"])
    return ELLAVExample(ids, ~user_input[1:])


def _as_list(values) -> list:
    return values.tolist() if isinstance(values, (torch.Tensor, np.ndarray)) else list(values)


def durations_match(num_units: int, num_codes: int, tokenizer: dict, tolerance: float = 0.1) -> bool:
    """The original's strict check: unit and codec durations differ by at most ``tolerance`` seconds."""
    return abs(num_units / tokenizer["phone_token_rate"] - num_codes / tokenizer["codec_token_rate"]) <= tolerance


# -- batches --------------------------------------------------------------------------------------


@dataclass
class PackedBatch:
    """Sequences packed end to end, as the originals' collate: every array ``[N]``, ``sum(seqlens) == N``."""

    src_ids: torch.Tensor
    tgt_ids: torch.Tensor
    loss_mask: torch.Tensor
    seqlens: list[int]

    @classmethod
    def pack(cls, sequences: list[torch.Tensor], loss_masks: list[torch.Tensor]) -> PackedBatch:
        """Each sequence ``ids [L]`` becomes input ``ids[:-1]`` and targets ``ids[1:]`` with its mask ``[L - 1]``."""
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


def chunk_loss_mask(length: int) -> torch.BoolTensor:
    """The unit LM's loss mask for a chunk of ``length`` ids: every target but the first."""
    return torch.arange(length - 1) > 0
