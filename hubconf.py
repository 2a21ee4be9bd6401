"""torch.hub entry points: ``torch.hub.load("<owner>/<this repo>", "dpslm", k=500, lmbda=4500)``.

Each entry point returns the same object as the matching ``from_pretrained`` in ``dpslm_utils``
(official checkpoints, downloaded and hash-checked into the dpslm cache; ``DPSLM_WEIGHTS=random-tiny``
gives small random models instead).
"""

dependencies = ["torch", "torchaudio", "soundfile", "numpy", "tqdm"]

from dpslm_utils import (  # noqa: E402  (torch.hub reads `dependencies` before importing)
    DPSLM,
    ELLAV,
    UnitEncoder,
    UnitLM,
    WavLMEncoder,
    WavTokenizer,
    load_codebook,
)


def dpslm(k: int = 500, lmbda: float = 4500, device=None, num_neighbors=None, hours: str = "1k") -> DPSLM:
    """The whole pipeline for one of the 24 released (k, λ) pairs."""
    return DPSLM.from_pretrained(k, lmbda, device=device, num_neighbors=num_neighbors, hours=hours)


def unit_encoder(k: int = 500, lmbda: float = 4500, device=None, num_neighbors=None) -> UnitEncoder:
    """Speech -> DPDP units (WavLM Large layer 11 + a released codebook, any λ >= 0)."""
    return UnitEncoder.from_pretrained(k, lmbda, device=device, num_neighbors=num_neighbors)


def wavlm_large(device=None) -> WavLMEncoder:
    return WavLMEncoder.from_pretrained(device=device)


def codebook(k: int = 500, layer: int = 11, device=None):
    return load_codebook(k, layer, device=device)


def unit_lm(k: int = 500, lmbda: float = 4500, hours: str = "1k", device=None) -> UnitLM:
    return UnitLM.from_pretrained(k, lmbda, hours=hours, device=device)


def ellav(k: int = 500, lmbda: float = 4500, device=None) -> ELLAV:
    return ELLAV.from_pretrained(k, lmbda, device=device)


def wavtokenizer(name: str = "small_600_24k_4096", device=None) -> WavTokenizer:
    return WavTokenizer.from_pretrained(name, device=device)
