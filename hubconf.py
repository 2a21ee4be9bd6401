"""torch.hub entry points: ``torch.hub.load("<owner>/<this repo>", "dpslm", k=500, lmbda=4500)``.

Each entry point returns the same object as the matching ``from_pretrained`` in ``dpslm_utils``
(official checkpoints, downloaded and hash-checked into the dpslm cache; ``DPSLM_WEIGHTS=random-tiny``
gives small random models instead). ``torch.hub.list`` shows every public callable of this file, so
only the entry points are public here.
"""

from __future__ import annotations

import dpslm_utils as _dpslm
from dpslm_utils import random_tiny as _random_tiny  # noqa: F401  importing it registers the writers of
# DPSLM_WEIGHTS=random-tiny: a torch.hub copy of this repository is not installed, so no entry point declares them

dependencies = ["torch", "torchaudio", "soundfile", "numpy", "tqdm"]


def dpslm(k: int = 500, lmbda: float = 4500, device=None, num_neighbors=None, hours: str = "1k",
          fast: bool | str = False) -> _dpslm.DPSLM:
    """The whole DP-SLM pipeline for one of the 24 released (k, λ) pairs.

    Speech -> WavLM Large layer-11 features -> DPDP units -> unit LM (scores, continuations) and
    ELLA-V + WavTokenizer (24 kHz speech). ``hours="60k"`` picks the large unit LM (k=500, λ=4500);
    ``num_neighbors=None`` quantizes with the exact DPDP optimum; ``fast=True`` is the reduced-precision
    CPU path (int8 language models, bfloat16 WavLM; see the README).
    """
    return _dpslm.DPSLM.from_pretrained(k, lmbda, device=device, num_neighbors=num_neighbors, hours=hours, fast=fast)


def unit_encoder(k: int = 500, lmbda: float = 4500, device=None, num_neighbors=None,
                 fast: bool | str = False) -> _dpslm.UnitEncoder:
    """Speech -> DPDP units: WavLM Large layer 11 and a released k-means codebook, with any λ >= 0."""
    return _dpslm.UnitEncoder.from_pretrained(k, lmbda, device=device, num_neighbors=num_neighbors, fast=fast)


def wavlm_large(device=None, fast: bool | str = False) -> _dpslm.WavLMEncoder:
    """WavLM Large as a feature extractor: ``encoder(wav, sample_rate, layer=11) -> [frames, 1024]`` at 50 Hz."""
    return _dpslm.WavLMEncoder.from_pretrained(device=device, fast=fast)


def codebook(k: int = 500, layer: int = 11, device=None):
    """A released k-means codebook of WavLM Large layer-11 features: FloatTensor ``[k, 1024]``."""
    return _dpslm.load_codebook(k, layer, device=device)


def unit_lm(k: int = 500, lmbda: float = 4500, hours: str = "1k", device=None, fast: bool | str = False) -> _dpslm.UnitLM:
    """The released unit language model for (k, λ): log-likelihoods, surprisal and continuations of units."""
    return _dpslm.UnitLM.from_pretrained(k, lmbda, hours=hours, device=device, fast=fast)


def ellav(k: int = 500, lmbda: float = 4500, device=None, fast: bool | str = False) -> _dpslm.ELLAV:
    """The released ELLA-V acoustic model for (k, λ): deduplicated units -> 40 Hz WavTokenizer codes."""
    return _dpslm.ELLAV.from_pretrained(k, lmbda, device=device, fast=fast)


def wavtokenizer(name: str = "small_600_24k_4096", device=None) -> _dpslm.WavTokenizer:
    """A released WavTokenizer codec: ``decode(codes) -> 24 kHz speech``, ``encode(wav, sr) -> codes``.

    ``small_600_24k_4096`` (40 Hz, ELLA-V's codec) or ``small_320_24k_4096`` (75 Hz).
    """
    return _dpslm.WavTokenizer.from_pretrained(name, device=device)


def phone_lm(device=None) -> _dpslm.PhoneLM:
    """The released phone LM (the paper's topline) with its ARPAbet tokenizer: ``.loglikelihood(phones)`` in nats."""
    return _dpslm.PhoneLM.from_pretrained(device=device)


def phone_tts(device=None) -> _dpslm.PhoneTTS:
    """Text to speech through phones: CMUdict ARPAbet -> the released phone ELLA-V -> WavTokenizer; ``.say(text)``."""
    return _dpslm.PhoneTTS.from_pretrained(device=device)
