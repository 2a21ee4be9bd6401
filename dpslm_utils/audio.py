"""Audio in and out: read and write files, check waveforms, make them mono, resample, and find example recordings.

Waveforms are float32 tensors ``[channels, samples]`` in [-1, 1]. torchaudio 2.9 no longer reads
files itself, so files are read with soundfile (wav, flac, ogg, ...); torchaudio is used for
resampling only.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import warnings

import numpy as np
import soundfile
import torch
import torchaudio

from .checks import audio_format, check_file, check_int
from .registry import OFFICIAL_EXAMPLES

BUNDLED_EXAMPLES: dict[str, str] = {
    "librispeech": "mister_quilter.flac",
    "manufacture": "manufacture.flac",
    "manufelture": "manufelture.flac",
}
"""The project's own espeak-ng recordings, standing in for the official examples: package data in
``dpslm_utils/examples/`` (made by ``data/make_examples.sh``, described in ``data/README.md``)."""

_UNREACHABLE: set[str] = set()
"""Official examples whose download failed in this process: not tried again until it restarts."""

_INT_SCALE = {torch.int16: 32768.0, torch.int32: 2147483648.0, torch.int8: 128.0}

MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 4000, 384000
"""Accepted sample rates in Hz (telephone speech to studio audio); others are almost surely a mistake."""

PLAUSIBLE_PEAK = 2.0
"""Float waveforms whose peak exceeds this get a warning: probably integer PCM cast to float unscaled."""

log = logging.getLogger(__name__)


def load_audio(path: str | os.PathLike) -> tuple[torch.Tensor, int]:
    """Read an audio file: ``(wav: FloatTensor[channels, samples] in [-1, 1], sample_rate)``.

    Integer PCM is scaled to float; every format libsndfile reads works (wav, flac, ogg, ...).
    """
    path = check_file(path, "audio file")
    try:
        data, sr = soundfile.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile's errors do not name the file
        raise ValueError(f"cannot read audio file {path}: {e}") from e
    return torch.from_numpy(np.ascontiguousarray(data.T)), int(sr)


def save_audio(path: str | os.PathLike, wav: torch.Tensor, sample_rate: int, format: str | None = None) -> None:
    """Write a mono waveform (any shape holding one channel), atomically, in the soundfile ``format``: by
    default the one the suffix names (:func:`~dpslm_utils.checks.audio_format`: .wav, .flac, .ogg, .mp3, ...)."""
    from .checkpoints import write_atomically

    format = format or audio_format(path)
    write_atomically(path, lambda tmp: soundfile.write(tmp, wav.reshape(-1).cpu().numpy(), sample_rate, format=format))


def save_wav(path: str | os.PathLike, wav: torch.Tensor, sample_rate: int) -> None:
    """Write a mono waveform (any shape holding one channel) as a WAV file, whatever the suffix, atomically."""
    save_audio(path, wav, sample_rate, "WAV")


def as_waveform(wav: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Return ``wav`` as a float32 tensor ``[channels, samples]``, checked.

    Accepts ``[samples]`` or ``[channels, samples]``, float or integer PCM (int8/16/32, scaled to
    [-1, 1]). Raises ValueError for empty audio, other shapes, more channels than samples (soundfile's
    ``[samples, channels]`` layout: pass ``wav.T``), and NaN or infinite samples. Warns when float
    samples reach far beyond [-1, 1] (peak above :data:`PLAUSIBLE_PEAK`).
    """
    if isinstance(wav, np.ndarray):
        wav = torch.from_numpy(wav)
    if not isinstance(wav, torch.Tensor):
        raise TypeError(f"expected a waveform tensor or numpy array, got {type(wav).__name__}")
    if wav.dtype in _INT_SCALE:
        wav = wav.float() / _INT_SCALE[wav.dtype]
    elif wav.dtype == torch.uint8:
        wav = (wav.float() - 128.0) / 128.0
    elif not wav.is_floating_point():
        raise TypeError(f"unsupported waveform dtype {wav.dtype}; use float or int8/16/32 PCM")
    wav = wav.float()
    if wav.dim() == 1:
        wav = wav.unsqueeze(0)
    if wav.dim() != 2:
        raise ValueError(f"expected a waveform of shape [samples] or [channels, samples], got {list(wav.shape)}")
    if wav.shape[-1] == 0:
        raise ValueError("the waveform is empty (0 samples)")
    channels, samples = wav.shape
    if channels > samples:
        raise ValueError(
            f"got a waveform of shape [{channels}, {samples}]: more channels than samples, so probably "
            f"[samples, channels] (soundfile's layout); pass its transpose wav.T, of shape [{samples}, {channels}]"
        )
    if not torch.isfinite(wav).all():
        raise ValueError("the waveform contains NaN or infinite samples")
    peak = wav.abs().max().item()
    if peak > PLAUSIBLE_PEAK:
        warnings.warn(
            f"the waveform's peak amplitude is {peak:g}, far outside [-1, 1]: integer PCM cast to float? "
            "Scale it (int16: divide by 32768) or pass the integer array itself", stacklevel=2,
        )
    return wav


def to_mono(wav: torch.Tensor) -> torch.Tensor:
    """Average the channels: ``[channels, samples]`` (or ``[samples]``) -> ``[1, samples]``."""
    wav = as_waveform(wav)
    return wav.mean(dim=0, keepdim=True)


def load_mono(path: str | os.PathLike) -> tuple[torch.Tensor, int]:
    """Read an audio file as one channel: ``(wav: FloatTensor[1, samples], sample_rate)`` (:func:`load_audio`, :func:`to_mono`)."""
    wav, sample_rate = load_audio(path)
    return to_mono(wav), sample_rate


def resample(wav: torch.Tensor, sample_rate: int, target_rate: int) -> torch.Tensor:
    """``torchaudio.functional.resample`` with default settings (identity when the rates match)."""
    sample_rate, target_rate = check_sample_rate(sample_rate), check_sample_rate(target_rate, "target_rate")
    if sample_rate == target_rate:
        return wav
    return torchaudio.functional.resample(wav, sample_rate, target_rate)


def check_sample_rate(sample_rate: int, name: str = "sample_rate") -> int:
    """``sample_rate`` as an int if it is an integer number of Hz from 4 kHz to 384 kHz, else raise."""
    return check_int(name, sample_rate, MIN_SAMPLE_RATE, MAX_SAMPLE_RATE)


def bundled_example(name: str) -> tuple[torch.Tensor, int]:
    """The project's own recording ``name`` (a key of :data:`BUNDLED_EXAMPLES`), read from the installed
    package: ``(wav [channels, samples], sample_rate)``."""
    resource = importlib.resources.files(__package__) / "examples" / BUNDLED_EXAMPLES[name]
    with importlib.resources.as_file(resource) as path:
        return load_audio(path)


def example_audio(name: str = "librispeech", official: bool = True) -> tuple[torch.Tensor, int]:
    """An example recording ``(wav [1, samples], sample_rate)`` by name.

    ``"librispeech"`` (LibriSpeech dev-clean 1272-128104-0000, "Mister Quilter is the apostle of the
    middle classes ..."), ``"manufacture"`` and ``"manufelture"`` (a word / non-word pair). With
    ``official=True`` the original project's recording is used when it is cached or can be
    downloaded; otherwise (or with ``official=False``) the project's own espeak-ng recording of the
    same words, shipped with the package. Which one you got is logged (``logging``, logger
    ``dpslm_utils.audio``); falling back to the bundled one is a warning.
    """
    from .checkpoints import CheckpointError, download

    if name not in BUNDLED_EXAMPLES:
        raise ValueError(f"unknown example {name!r}; choose from {sorted(BUNDLED_EXAMPLES)}")
    if official and name not in _UNREACHABLE:
        try:
            path = download(OFFICIAL_EXAMPLES[name], progress=False)
            wav, sr = load_mono(path)
            log.info("example %r: the official recording %s", name, path.name)
            return wav, sr
        except CheckpointError as e:  # no network, or an unwritable cache
            _UNREACHABLE.add(name)
            log.warning("example %r: the official recording could not be fetched (%s); using the bundled "
                        "espeak-ng recording %s instead", name, str(e).splitlines()[0], BUNDLED_EXAMPLES[name])
    wav, sr = bundled_example(name)
    log.info("example %r: bundled espeak-ng recording %s", name, BUNDLED_EXAMPLES[name])
    return to_mono(wav), sr
