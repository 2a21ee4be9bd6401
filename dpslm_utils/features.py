"""Speech features on WavLM's 50 Hz frame grid, built by name: ``feature_encoder("wavlm" | "mfcc" | "fbank")``.

Every encoder maps a mono waveform (any sample rate) to float32 features ``[T, D]``, 50 per second:

======== ===== =====================================================================================
name      D    what
======== ===== =====================================================================================
wavlm    1024  WavLM Large layer 11 (``layer=``): the released model, or random-tiny offline (D = 64)
mfcc       39  Kaldi MFCCs (13 cepstra, 23 mel bins, Kaldi's defaults) + deltas + delta-deltas,
               normalised per utterance to zero mean and unit variance (``normalize=True``)
fbank      80  log-mel power spectrum, 80 bands from 20 Hz to 8 kHz, absolute (``normalize=False``),
               so that :meth:`LogMel.invert` can turn it back into audio
======== ===== =====================================================================================

**One frame grid.** Every encoder reads the audio the way WavLM does (:func:`~dpslm_utils.wavlm.padded_waveform`):
resampled to 16 kHz, 40 zeros padded on both sides, then one 400-sample (25 ms) window every 320
samples (20 ms). Frame t of MFCC, log-mel and WavLM covers the same 25 ms ``[320 t − 40, 320 t + 360)``
of the audio, so all three give ``T = floor((N + 80 − 400) / 320) + 1`` frames for N samples at
16 kHz (:func:`~dpslm_utils.wavlm.num_frames`) and refuse audio under 320 samples (20 ms). DPDP
durations, units per second and bits per second therefore mean the same thing for every feature.

**Weight-free features** need no download: they make the course's experiments measure something real
offline. λ is a squared distance in feature space, so its scale depends on the features and the
codebook; compare features at equal units per second (:func:`dpslm_utils.lambda_for_rate`), not at
equal λ.

torchaudio is used here for Kaldi's MFCCs only (``torchaudio.compliance.kaldi``); the log-mel
spectrum and its inversion are plain torch.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .checks import MAX_SEED, check_int
from .codebooks import check_vectors
from .wavlm import HOP_LENGTH, RECEPTIVE_FIELD, SAMPLE_RATE, WavLMEncoder, each_waveform, num_frames, padded_waveform

FRAME_RATE = SAMPLE_RATE // HOP_LENGTH
"""Frames per second of every encoder (50)."""

N_FFT = 512
"""FFT size of the log-mel spectrum: the 400-sample window zero-padded to 512 (257 bins, 31.25 Hz apart)."""
N_MELS = 80
MEL_MIN_HZ, MEL_MAX_HZ = 20.0, 8000.0
LOG_FLOOR = 1e-5
"""Added to every mel band power before the log: silence sits at log(1e-5) ≈ −11.5 instead of −∞
(band powers of speech in [-1, 1] audio reach 10–1000)."""

GRIFFIN_LIM_ITERATIONS = 64
GRIFFIN_LIM_MOMENTUM = 0.99
INVERSION_HOP = HOP_LENGTH // 2
"""Griffin-Lim runs on a 10 ms grid (two frames per feature frame, 60 % window overlap): the 20 ms
grid of the features overlaps its 25 ms windows too little to carry a consistent phase."""


# ---------------------------------------------------------------------------------------------
# By name
# ---------------------------------------------------------------------------------------------


def feature_encoder(name: str, **options: Any) -> FeatureEncoder:
    """The encoder called ``name``: ``"wavlm"``, ``"mfcc"`` or ``"fbank"`` (see the module docstring).

    ``options`` are the keyword arguments of its class: :class:`WavLMFeatures` (``layer=11``,
    ``device``, ``fast``), :class:`MFCC` (``normalize=True``, ``deltas=True``, ``device``) and
    :class:`LogMel` (``normalize=False``, ``device``). ``enc(wav, sr) -> [T, D]``,
    ``enc.batch(wavs, sr)``, ``enc.frame_rate``, ``enc.dim``, ``enc.name``, ``enc.settings``;
    ``enc.invert(features) -> wav`` for ``"fbank"`` only.
    """
    if name not in ENCODERS:
        raise ValueError(f"unknown features {name!r}; the known features are {', '.join(map(repr, ENCODERS))}")
    cls = ENCODERS[name]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"feature_encoder({name!r}) has no option {', '.join(unknown)}; its options are {', '.join(allowed)}")
    return cls(**options)


class FeatureEncoder:
    """Waveform -> features ``[T, D]`` at :data:`FRAME_RATE` frames per second (the interface every encoder has)."""

    name: str
    """Its name in :func:`feature_encoder`."""
    dim: int
    """Feature size D."""
    random_weights = False
    """True for WavLM in random-tiny mode; weight-free features never have weights."""
    frame_rate = FRAME_RATE
    sample_rate = SAMPLE_RATE
    """Audio is resampled to this rate before framing; :meth:`invert` returns audio at this rate."""
    num_frames = staticmethod(num_frames)

    def __call__(self, wav: Tensor | np.ndarray, sample_rate: int) -> Tensor:
        """Features ``[T, D]`` (float32) of one mono waveform ``[samples]`` or ``[1, samples]``."""
        raise NotImplementedError

    def batch(self, wavs: list[Tensor | np.ndarray], sample_rate: int) -> list[Tensor]:
        """Features ``[T_i, D]`` of several waveforms (one sample rate), each equal to the one-at-a-time result."""
        return each_waveform(wavs, lambda wav: self(wav, sample_rate))

    @property
    def settings(self) -> dict[str, Any]:
        """Everything that determines the features, as JSON values (``{"features": name, option: value, ...}``):
        what a settings record or a cache key needs to tell two encoders apart."""
        raise NotImplementedError

    def invert(self, features: Tensor) -> Tensor:
        """Features ``[T, D]`` -> waveform ``[samples]`` at :attr:`sample_rate`; only log-mel features can."""
        raise ValueError(
            f"{self.name!r} features cannot be inverted to audio: they keep no spectrum to rebuild it from. "
            "Only feature_encoder('fbank') (absolute log-mel, normalize=False) has invert()"
        )

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.settings.items() if k != "features")
        return f"{type(self).__name__}({self.name!r}, dim={self.dim}, {self.frame_rate} Hz, {options})"


# ---------------------------------------------------------------------------------------------
# WavLM
# ---------------------------------------------------------------------------------------------


class WavLMFeatures(FeatureEncoder):
    """One layer of WavLM (:class:`~dpslm_utils.wavlm.WavLMEncoder`): ``"wavlm"``, layer 11 by default.

    The model is the one ``WavLMEncoder.from_pretrained`` loads (random-tiny with ``DPSLM_WEIGHTS=random-tiny``),
    shared with every pipeline on the same device; ``encoder=`` wraps one you already have.
    """

    name = "wavlm"

    def __init__(self, layer: int = 11, device: torch.device | str | None = None, fast: bool | str = False,
                 encoder: WavLMEncoder | None = None):  # fmt: skip
        if encoder is None:
            from .checkpoints import weights_mode
            from .pipeline import resolve_device, shared_encoder

            encoder = shared_encoder(resolve_device(device), weights_mode(), fast)
        encoder._check_layer(layer)
        self.encoder, self.layer, self.dim = encoder, layer, encoder.dim
        self.random_weights = encoder.random_weights

    def __call__(self, wav: Tensor | np.ndarray, sample_rate: int) -> Tensor:
        return self.encoder(wav, sample_rate, layer=self.layer)

    def batch(self, wavs: list[Tensor | np.ndarray], sample_rate: int) -> list[Tensor]:
        """One padded WavLM batch (:meth:`WavLMEncoder.batch`): equal to one at a time up to float rounding."""
        return self.encoder.batch(wavs, sample_rate, layer=self.layer)

    @property
    def settings(self) -> dict[str, Any]:
        return {"features": self.name, "layer": self.layer, "random_weights": self.random_weights}


# ---------------------------------------------------------------------------------------------
# Weight-free features
# ---------------------------------------------------------------------------------------------


class _WeightFree(FeatureEncoder):
    """Features computed from the 400-sample windows of :func:`padded_waveform`, optionally normalised."""

    def __init__(self, normalize: bool, device: torch.device | str | None):
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be True or False, got {normalize!r}")
        self.normalize, self.device = normalize, torch.device(device or "cpu")

    def __call__(self, wav: Tensor | np.ndarray, sample_rate: int) -> Tensor:
        features = self._frames(padded_waveform(wav, sample_rate, self.device, reader=f"{self.name!r} features"))
        return normalize_per_utterance(features) if self.normalize else features

    def _frames(self, padded: Tensor) -> Tensor:
        """``[samples + 80]`` from :func:`padded_waveform` -> ``[T, D]``."""
        raise NotImplementedError


def normalize_per_utterance(features: Tensor) -> Tensor:
    """Every dimension of ``[T, D]`` shifted and scaled to mean 0, variance 1 over the T frames (constant ones -> 0)."""
    std = features.std(dim=0, unbiased=False)
    return (features - features.mean(dim=0)) / torch.where(std > 0, std, 1.0)


class MFCC(_WeightFree):
    """``"mfcc"``: Kaldi's ``compute-mfcc-feats`` defaults with a 20 ms shift and no dither, then ``add-deltas``.

    13 cepstra (c0 included, no energy), 23 mel bins from 20 Hz to 8 kHz, povey window, pre-emphasis
    0.97, cepstral lifter 22, computed on 16-bit-scaled samples (as Kaldi reads a wav file); then
    deltas and delta-deltas (Kaldi's window of 2): D = 39 (13 with ``deltas=False``). ``normalize``:
    per-utterance mean and variance normalisation (Kaldi's ``apply-cmvn --norm-vars``).
    """

    name = "mfcc"
    NUM_CEPS = 13

    def __init__(self, normalize: bool = True, deltas: bool = True, device: torch.device | str | None = None):
        super().__init__(normalize, device)
        if not isinstance(deltas, bool):
            raise TypeError(f"deltas must be True or False, got {deltas!r}")
        self.deltas = deltas
        self.dim = 3 * self.NUM_CEPS if deltas else self.NUM_CEPS

    def _frames(self, padded: Tensor) -> Tensor:
        from torchaudio.compliance import kaldi

        frame_ms, shift_ms = 1000 * RECEPTIVE_FIELD / SAMPLE_RATE, 1000 * HOP_LENGTH / SAMPLE_RATE
        cepstra = kaldi.mfcc(32768.0 * padded[None], frame_length=frame_ms, frame_shift=shift_ms, dither=0.0,
                             num_ceps=self.NUM_CEPS, sample_frequency=SAMPLE_RATE, snip_edges=True)  # fmt: skip
        return add_deltas(cepstra) if self.deltas else cepstra

    @property
    def settings(self) -> dict[str, Any]:
        return {"features": self.name, "normalize": self.normalize, "deltas": self.deltas}


DELTA_WINDOW = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0]) / 10.0
"""Kaldi's first-order delta filter (window 2): Σ_n n·(x[t+n] − x[t−n]) / (2 Σ_n n²)."""


def add_deltas(features: Tensor) -> Tensor:
    """Kaldi's ``add-deltas`` (order 2, window 2): ``[T, D]`` -> ``[T, 3D]`` = features, deltas, delta-deltas.

    The delta-delta filter is the delta filter convolved with itself (9 taps); as in Kaldi, each filter
    reads frames beyond the edges as copies of the first and last frame.
    """
    first = torch.nn.functional.pad(DELTA_WINDOW, (2, 2))
    second = torch.from_numpy(np.convolve(DELTA_WINDOW.numpy(), DELTA_WINDOW.numpy())).float()
    identity = torch.zeros(9).index_fill_(0, torch.tensor([4]), 1.0)
    filters = torch.stack([identity, first, second]).to(features)  # [3, 9]
    padded = torch.cat([features[:1].expand(4, -1), features, features[-1:].expand(4, -1)])  # [T + 8, D]
    windows = padded.unfold(0, 9, 1)  # [T, D, 9]: frames t − 4 .. t + 4
    return torch.einsum("tdw,ow->tod", windows, filters).reshape(features.shape[0], -1)


class LogMel(_WeightFree):
    """``"fbank"``: the log-mel power spectrum of every 25 ms window, 80 bands, invertible.

    Each 400-sample frame is Hann-windowed, zero-padded to 512 samples and Fourier-transformed; the
    power of its 257 bins is summed into :data:`N_MELS` triangular mel bands (HTK mel scale, 20 Hz to
    8 kHz) and ``log(band power + 1e-5)`` taken (:data:`LOG_FLOOR`). No pre-emphasis, dither or
    normalisation by default, so the features keep the absolute level that :meth:`invert` needs.
    ``normalize=True`` normalises each utterance (mean 0, variance 1 per band) like MFCC; such features
    cannot be inverted.
    """

    name = "fbank"

    def __init__(self, normalize: bool = False, device: torch.device | str | None = None):
        super().__init__(normalize, device)
        self.dim = N_MELS
        self.window = torch.hann_window(RECEPTIVE_FIELD, device=self.device)
        self.mel_filters = mel_filterbank(N_MELS, N_FFT, SAMPLE_RATE, MEL_MIN_HZ, MEL_MAX_HZ).to(self.device)

    def _frames(self, padded: Tensor) -> Tensor:
        frames = padded.unfold(0, RECEPTIVE_FIELD, HOP_LENGTH) * self.window  # [T, 400]
        power = torch.fft.rfft(frames, n=N_FFT).abs().square()  # [T, 257]
        return (power @ self.mel_filters + LOG_FLOOR).log()

    @property
    def settings(self) -> dict[str, Any]:
        return {"features": self.name, "normalize": self.normalize}

    def invert(self, features: Tensor, iterations: int = GRIFFIN_LIM_ITERATIONS, seed: int = 0) -> Tensor:
        """Log-mel features ``[T, 80]`` -> waveform ``[320 T]`` at 16 kHz: mel inversion + Griffin-Lim.

        1. band powers ``exp(features) − 1e-5``; linear power per FFT bin by the pseudo-inverse of the
           mel filterbank (least squares, negative values set to 0); magnitude = √power;
        2. magnitudes interpolated onto a 10 ms grid (:data:`INVERSION_HOP`), frame centres aligned
           with the features' windows;
        3. ``iterations`` rounds of fast Griffin-Lim (momentum 0.99, :func:`griffin_lim`) from a random
           phase drawn with ``seed``: same features and seed, same audio.

        The result sounds robotic: the phase is a guess and the mel bands blur the harmonics. Encoding it
        again gives features close to the input (``tests/test_features.py`` records how close).
        """
        if self.normalize:
            raise ValueError(
                "per-utterance normalised log-mel features (normalize=True) have lost their absolute level and "
                "cannot be inverted; use feature_encoder('fbank') (normalize=False) for audio"
            )
        features = check_vectors(features, "features")
        iterations, seed = check_int("iterations", iterations, minimum=0), check_int("seed", seed, 0, MAX_SEED)
        if features.shape[1] != self.dim:
            raise ValueError(f"features must be log-mel frames [T, {self.dim}], got shape {list(features.shape)}")
        if features.shape[0] == 0:
            return features.new_zeros(0)
        features = features.to(self.device, torch.float32)
        band_power = (features.exp() - LOG_FLOOR).clamp_min(0.0)  # [T, 80]
        magnitude = (band_power @ torch.linalg.pinv(self.mel_filters)).clamp_min(0.0).sqrt()  # [T, 257]
        magnitude = _to_inversion_grid(magnitude)  # [2T + 1, 257]
        return griffin_lim(magnitude, self.window, N_FFT, INVERSION_HOP, iterations, seed=seed)  # [320 T]


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, min_hz: float, max_hz: float) -> Tensor:
    """Triangular mel filters ``[n_fft // 2 + 1, n_mels]`` (HTK mel scale, peaks of 1): FFT bin power -> band power."""
    def mel(hz: Tensor) -> Tensor:
        return 2595.0 * torch.log10(1.0 + hz / 700.0)

    def hz(mel: Tensor) -> Tensor:
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)

    edges = hz(torch.linspace(mel(torch.tensor(min_hz)), mel(torch.tensor(max_hz)), n_mels + 2, dtype=torch.float64))
    bins = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)[:, None]
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising, falling = (bins - lower) / (centre - lower), (upper - bins) / (upper - centre)
    return torch.minimum(rising, falling).clamp_min(0.0).float()


def _to_inversion_grid(magnitude: Tensor) -> Tensor:
    """``[T, F]`` at the features' frames -> ``[2T + 1, F]`` at :data:`INVERSION_HOP`, linearly interpolated.

    Inversion frame j (a centred STFT frame) is centred at sample 160 j; feature frame t at
    ``320 t − 40 + 200 = 320 t + 160``, i.e. at j = 2t + 1. The first and last frames are held at the edges.
    """
    num_frames = magnitude.shape[0]
    step = HOP_LENGTH // INVERSION_HOP
    position = (torch.arange(step * num_frames + 1, device=magnitude.device) - (step // 2)) / step  # in feature frames
    position = position.clamp(0, num_frames - 1)
    below = position.floor().long()
    above = (below + 1).clamp(max=num_frames - 1)
    weight = (position - below)[:, None]
    return (1 - weight) * magnitude[below] + weight * magnitude[above]


def griffin_lim(magnitude: Tensor, window: Tensor, n_fft: int, hop: int, iterations: int,
                momentum: float = GRIFFIN_LIM_MOMENTUM, seed: int = 0) -> Tensor:  # fmt: skip
    """A waveform whose centred STFT magnitude approximates ``magnitude [J, n_fft // 2 + 1]``: ``[hop (J − 1)]``.

    Fast Griffin-Lim (Perraudin, Balazs & Søndergaard 2013): start from a random phase, then repeat
    "waveform from magnitude + phase, STFT of that waveform, keep its phase", extrapolating the phase
    by ``momentum`` times its last change (0 = the original Griffin-Lim).
    """
    target = magnitude.T  # [F, J], torch's layout
    angles = 2 * math.pi * torch.rand(target.shape, generator=torch.Generator().manual_seed(seed))
    phase = torch.polar(torch.ones_like(angles), angles).to(target.device)
    length = hop * (magnitude.shape[0] - 1)
    stft = dict(n_fft=n_fft, hop_length=hop, win_length=window.shape[0], window=window, center=True)
    previous = torch.zeros_like(phase)
    for _ in range(iterations):
        rebuilt = torch.stft(torch.istft(target * phase, length=length, **stft), return_complex=True, **stft)
        extrapolated = rebuilt + momentum * (rebuilt - previous)
        previous = rebuilt
        phase = extrapolated / extrapolated.abs().clamp_min(1e-16)
    return torch.istft(target * phase, length=length, **stft)


ENCODERS: dict[str, type[FeatureEncoder]] = {"wavlm": WavLMFeatures, "mfcc": MFCC, "fbank": LogMel}
"""The names :func:`feature_encoder` knows."""

# ---------------------------------------------------------------------------------------------
# Units -> audio
# ---------------------------------------------------------------------------------------------


def resynthesize_units(units: Tensor, durations: Tensor, codebook: Tensor, encoder: FeatureEncoder) -> Tensor:
    """Deduplicated ``units [N]`` with ``durations [N]`` (frames) -> waveform at ``encoder.sample_rate``.

    Every frame gets its unit's codebook entry, and the encoder inverts that feature sequence
    (``codebook [K, D]`` must hold the encoder's features, e.g. ``feature_codebook("fbank")``)::

        frame_units = units.repeat_interleave(durations)
        wav = encoder.invert(codebook[frame_units])
    """
    if units.dim() != 1 or units.shape != durations.shape:
        raise ValueError(f"units and durations must be 1-D and equally long, got shapes {list(units.shape)} and "
                         f"{list(durations.shape)}")
    frame_units = units.repeat_interleave(durations.to(units.device))
    return encoder.invert(codebook[frame_units.to(codebook.device)])
