"""Training data files: read, check and write unit and codec files, find them and pair them.

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

What the models make of the files (tokens, training examples, loss masks) lives with each model
family: :mod:`dpslm_utils.ulm` (the unit LM) and :mod:`dpslm_utils.ellav` (ELLA-V).
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from .checkpoints import CheckpointError, load_checkpoint, write_atomically

log = logging.getLogger(__name__)

UNIT_SUFFIXES = (".npy", ".txt")  # in order of preference for one stem
CODE_SUFFIXES = (".npy", ".pt")
MAX_K = 1 << 20
"""Largest codebook size (unit vocabulary) the trainers accept: unit ids are stored as int32."""
MAX_FRAMES = 50 * 3600 * 10
"""Most 50 Hz frames one unit file may cover (10 hours): larger durations are taken for corruption."""
UNIT_NAME = re.compile(r"u(0|[1-9][0-9]*)")
"""A unit's name in the original ELLA-V's ``.txt`` files, and so its token in ELLA-V's vocabulary: ``u74``."""
NUM_CODEC_TYPES = 4096
"""Codec tokens are WavTokenizer codes ``0 .. 4095`` (the codec of every released ELLA-V)."""
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


def hold_out(files: dict, fraction: float, seed: int) -> tuple[dict, dict]:
    """``(training, validation)`` files: a seeded ``fraction`` of ``files`` (at least one) held out for validation."""
    if len(files) < 2:
        raise ValueError(f"found {len(files)} usable file(s): need at least 2 to hold one out for validation "
                         "(or give val_dir)")  # fmt: skip
    keys = list(files)
    held_out = set(random.Random(seed).sample(keys, max(1, round(fraction * len(keys)))))
    return {k: v for k, v in files.items() if k not in held_out}, {k: v for k, v in files.items() if k in held_out}


def unit_files(root: str | os.PathLike) -> dict[str, Path]:
    """:func:`find_files` for unit files; ValueError if ``root`` holds none."""
    files = find_files(root, UNIT_SUFFIXES)
    if not files:
        raise ValueError(f"no unit files (.npy, .txt) under {root}")
    return files


def paired_files(unit_root: str | os.PathLike, code_root: str | os.PathLike) -> dict[str, tuple[Path, Path]]:
    """Relative path without suffix -> ``(unit file, codec file)`` for the unit files that have a codec file.

    Unit files without codes are left out (with a warning); ValueError if none has codes.
    """
    units, codes = find_files(unit_root, UNIT_SUFFIXES), find_files(code_root, CODE_SUFFIXES)
    matched = {key: (path, codes[key]) for key, path in units.items() if key in codes}
    if not matched:
        raise ValueError(f"no unit file under {unit_root} has a codec file of the same relative path under {code_root}")
    if len(matched) < len(units):
        log.warning("%d unit file(s) without codes are left out", len(units) - len(matched))
    return matched
