"""Training data for the unit LM and ELLA-V: unit and codec files, tokenization, chunks and batches.

File formats the trainers read (matched by relative path without suffix):

* units: ``.npy`` int ``[N, 2]`` table of (unit, duration in 50 Hz frames), as ``dpslm encode``
  writes it (:func:`save_units`); a 1-D ``.npy`` of framewise units (the original scripts'); a
  ``.txt`` of framewise unit names ``"u74 u74 u123 ..."`` (the original ELLA-V data). ``dpslm
  encode``'s own ``.txt`` is *deduplicated* (no durations): train from its ``.npy`` instead, which
  is preferred when a folder holds both.
* codec tokens: 1-D ``.npy`` integer arrays (``dpslm encode-codec``) or the original's ``.pt`` tensors.

Every file is checked as it is read, and refused with a ValueError that names it and the offending
value: files that are not ``.npy`` arrays or plain tensors (``.pt`` files load with
``weights_only=True``: nothing in them runs), non-integer arrays, units below 0 or (given ``k``) at or
beyond k, codes outside 0 .. 4095, durations below one frame or more than :data:`MAX_FRAMES` frames in
one file, and a ``.txt`` that holds deduplicated units (:data:`DEDUPLICATED_CHECK_UNITS`).

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

from .checkpoints import CheckpointError, load_checkpoint, write_atomically
from .ellav import NUM_CODEC_TYPES, UNIT_NAME
from .ulm import BOS_ID, UNIT_OFFSET

UNIT_SUFFIXES = (".npy", ".txt")  # in order of preference for one stem
CODE_SUFFIXES = (".npy", ".pt")
MAX_K = 1 << 20
"""Largest codebook size (unit vocabulary) the trainers accept: unit ids are stored as int32."""
MAX_FRAMES = 50 * 3600 * 10
"""Most 50 Hz frames one unit file may cover (10 hours): larger durations are taken for corruption."""
DEDUPLICATED_CHECK_UNITS = 50
"""A framewise ``.txt`` of this many units or more without one repeated unit is taken for ``dpslm
encode``'s deduplicated ``.txt`` and refused (framewise 50 Hz units repeat: a unit lasts several frames)."""


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


def load_frame_units(path: str | os.PathLike, k: int | None = None) -> torch.LongTensor:
    """Framewise (50 Hz) units ``[T]`` from any unit file the trainers accept (see the module docstring).

    Units must lie in ``0 .. k - 1`` (given ``k``; else below :data:`MAX_K`). Raises ValueError naming
    the file and the offending value for anything the module docstring lists as refused.
    """
    path = Path(path)
    if path.suffix == ".txt":
        units, durations = _read_unit_names(path), None
    elif path.suffix == ".npy":
        units, durations = _read_unit_array(path)
    else:
        raise ValueError(f"{path}: unit files are .npy or .txt, not {path.suffix!r}")
    limit = f"k - 1 = {k - 1}: is k right?" if k is not None else f"the largest unit id allowed ({MAX_K - 1})"
    _check_range(path, units, "unit", MAX_K if k is None else k, limit)
    units = torch.from_numpy(units.astype(np.int64))
    if durations is None:
        return units
    _check_durations(path, durations)
    return units.repeat_interleave(torch.from_numpy(durations.astype(np.int64)))


def _read_unit_names(path: Path) -> np.ndarray:
    """The units of a framewise ``.txt`` of unit names ``"u74 u74 u123"``: ``[T]`` Python ints (exact, any size)."""
    names = path.read_text().split()
    bad = [n for n in names if not UNIT_NAME.fullmatch(n)]
    if bad:
        raise ValueError(f"{path}: expected unit names like 'u74', found {bad[0]!r}")
    units = np.array([int(n[1:]) for n in names], dtype=object)
    if len(units) >= DEDUPLICATED_CHECK_UNITS and not (units[1:] == units[:-1]).any():
        raise ValueError(f"{path} holds deduplicated units (no unit repeats in {len(units)} units), as `dpslm encode` "
                         "writes .txt files; the trainers need framewise units or durations: train from the .npy "
                         "files `dpslm encode --format npy` writes")  # fmt: skip
    return units


def _read_unit_array(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``(units [N], durations [N])`` of a ``[N, 2]`` table, or ``(framewise units [T], None)`` of a 1-D array."""
    array = _load_npy(path)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{path}: units must be integers, found {array.dtype}")
    if array.ndim == 2 and array.shape[1] == 2:  # (unit, duration) table
        return array[:, 0], array[:, 1]
    if array.ndim == 1:
        return array, None
    raise ValueError(f"{path}: expected a [N, 2] (unit, duration) table or 1-D framewise units, got shape {array.shape}")


def _load_npy(path: Path) -> np.ndarray:
    """``np.load`` without pickles; ValueError naming ``path`` for anything but a complete ``.npy`` array."""
    with path.open("rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise ValueError(f"{path} is not a .npy file (it lacks the .npy header)")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, EOFError) as e:  # cut short, or Python objects
        raise ValueError(f"{path} is not a readable .npy array: {e}") from e


def _check_range(path: Path, values: np.ndarray, what: str, end: int, limit: str) -> None:
    """ValueError naming ``path`` unless every value lies in ``0 .. end - 1`` (compared exactly, before any cast);
    ``limit`` describes ``end - 1`` in the message."""
    if len(values) == 0:
        return
    for position in (int(np.argmin(values)), int(np.argmax(values))):
        value = int(values[position])
        if value < 0:
            raise ValueError(f"{path}: {what} {value} (at position {position}) is negative")
        if value >= end:
            raise ValueError(f"{path}: {what} {value} (at position {position}) is beyond {limit}")


def _check_durations(path: Path, durations: np.ndarray) -> None:
    """Durations are counts of 50 Hz frames: at least 1 each, at most :data:`MAX_FRAMES` in all."""
    if len(durations) == 0:
        return
    shortest, longest = (int(np.argmin(durations)), int(np.argmax(durations)))
    if int(durations[shortest]) < 1:
        raise ValueError(f"{path}: duration {int(durations[shortest])} (row {shortest}) is below one frame; "
                         "durations count 50 Hz frames, each at least 1")  # fmt: skip
    total = int(durations[longest]) if int(durations[longest]) > MAX_FRAMES else int(durations.astype(np.int64).sum())
    if total > MAX_FRAMES:
        raise ValueError(f"{path}: its durations reach {total} frames ({total / 50 / 3600:.1f} hours at 50 Hz), more "
                         f"than one unit file may cover ({MAX_FRAMES} frames = {MAX_FRAMES / 50 / 3600:g} hours): "
                         "are the durations corrupt?")  # fmt: skip


def load_codes(path: str | os.PathLike) -> torch.LongTensor:
    """Codec tokens ``[T]`` (40 Hz, each in ``0 .. 4095``) from a ``.npy`` array or the original's ``.pt`` tensor.

    A ``.pt`` file is loaded with ``weights_only=True``: one that holds other Python objects is refused.
    """
    path = Path(path)
    if path.suffix == ".pt":
        try:
            codes = load_checkpoint(path)
        except CheckpointError as e:
            raise ValueError(str(e)) from e
        if not isinstance(codes, torch.Tensor):
            raise ValueError(f"{path}: expected a tensor of codec tokens, found a {type(codes).__name__}")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"{path}: codec tokens must be an integer array, found {codes.dtype}")
        codes = codes.detach().numpy()
    elif path.suffix == ".npy":
        codes = _load_npy(path)
    else:
        raise ValueError(f"{path}: codec files are .npy or .pt, not {path.suffix!r}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"{path}: codec tokens must be an integer array, found {codes.dtype}")
    if codes.ndim != 1:
        codes = codes.squeeze()
        if codes.ndim != 1:
            raise ValueError(f"{path}: expected one sequence of codec tokens, got shape {list(codes.shape)}")
    _check_range(path, codes, "codec token", NUM_CODEC_TYPES, f"the last WavTokenizer code ({NUM_CODEC_TYPES - 1})")
    return torch.from_numpy(codes.astype(np.int64))


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


def read_unit_corpus(files: list[Path], root: Path, k: int | None = None) -> UnitCorpus:
    """Read (checking units against ``k``) and tokenize unit files; the chapter of a file is its parent folder relative to ``root``."""
    utterances, chapters, frames = [], [], 0
    for path in files:
        frame_units = load_frame_units(path, k)
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
