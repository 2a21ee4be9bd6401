"""Every official DP-SLM file: where it is published and how to recognise it.

The release files follow the torch.hub naming convention: the hex string after the last ``-``
(or ``_``) of the file name is a prefix of the file's SHA-256. Downstream models (unit LM and
ELLA-V) exist for exactly the 24 (k, λ) pairs in :data:`VALID_COMBINATIONS`.
"""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass

_WAVLM_BASE = "https://github.com/nicolvisser/WavLM-codebooks/releases/download/v0.1.0/"
_ULM_BASE = "https://github.com/nicolvisser/Mistral-ULM/releases/download/v0.1.0/"
_ELLAV_BASE = "https://github.com/nicolvisser/ELLA-V/releases/download/v0.1.0/"
_WAVTOKENIZER_BASE = "https://github.com/nicolvisser/WavTokenizer/releases/download/v0.1/"
_EXAMPLES_BASE = "https://github.com/nicolvisser/dp-slm/raw/main/data/"


@dataclass(frozen=True)
class RemoteFile:
    """One published file: its URL and the (prefix of its) SHA-256 hex digest."""

    url: str
    sha256: str | None

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def _hub_file(base: str, filename: str) -> RemoteFile:
    """A torch.hub-style file whose name ends in ``-<sha256 prefix>.<ext>``."""
    match = re.search(r"[-_]([0-9a-f]{8,})\.[A-Za-z]+$", filename)
    if match is None:
        raise ValueError(f"{filename!r} carries no hash suffix")
    return RemoteFile(base + filename, match.group(1))


# ---------------------------------------------------------------------------------------------
# (k, λ) combinations
# ---------------------------------------------------------------------------------------------

VALID_LAMBDAS: dict[int, tuple[int, ...]] = {
    100: (0, 600, 1500, 3000, 5000, 9000),
    200: (0, 700, 1500, 3000, 5000, 7500),
    500: (0, 600, 1500, 2800, 4500, 7000),
    1000: (0, 600, 1400, 2500, 3800, 6000),
}
"""The λ values with released downstream models, per codebook size k."""

VALID_COMBINATIONS: tuple[tuple[int, int], ...] = tuple(
    (k, lmbda) for k, lmbdas in VALID_LAMBDAS.items() for lmbda in lmbdas
)
"""The 24 (k, λ) pairs for which a unit LM and an ELLA-V model were released."""

CODEBOOK_SIZES: tuple[int, ...] = (100, 200, 500, 1000, 2000)
"""Released k-means codebook sizes (layer 11). k=2000 has no downstream models."""

DEFAULT_K, DEFAULT_LMBDA = 500, 4500

PAPER_NUM_NEIGHBORS: dict[int, int] = {100: 5, 200: 10, 500: 25, 1000: 50, 2000: 100}
"""``num_neighbors`` (5 % of k) with which the paper's units, and so the released models' training
data, were made. ``None`` (the package default) searches all k entries: the exact DPDP optimum."""


def check_combination(k: int, lmbda: float) -> tuple[int, int]:
    """Return ``(k, lmbda)`` as ints if pretrained models exist for them, else raise ValueError."""
    if k not in VALID_LAMBDAS:
        raise ValueError(
            f"no pretrained models for k={k!r}; valid k are {sorted(VALID_LAMBDAS)}"
        )
    valid = VALID_LAMBDAS[k]
    if isinstance(lmbda, bool) or not isinstance(lmbda, numbers.Real) or lmbda not in valid:
        raise ValueError(
            f"no pretrained models for k={k}, lmbda={lmbda!r}; valid lmbda for k={k} are "
            f"{list(valid)} (all pairs: dpslm_utils.VALID_COMBINATIONS)"
        )
    return int(k), int(lmbda)


# ---------------------------------------------------------------------------------------------
# WavLM Large and the k-means codebooks
# ---------------------------------------------------------------------------------------------

WAVLM_LARGE = _hub_file(_WAVLM_BASE, "wavlm-large-6fb4b3c3.pt")

_CODEBOOK_HASHES = {100: "8b2b254e", 200: "55b06314", 500: "2c2dee95", 1000: "db31d361", 2000: "af7a6260"}


def codebook_file(k: int, layer: int = 11) -> RemoteFile:
    """The released k-means codebook ``{"codebook": [k, 1024]}`` for WavLM Large ``layer``."""
    if layer != 11:
        raise ValueError(f"codebooks were released for layer 11 only, not layer {layer!r}")
    if k not in _CODEBOOK_HASHES:
        raise ValueError(f"no released codebook for k={k!r}; valid k are {list(CODEBOOK_SIZES)}")
    return _hub_file(_WAVLM_BASE, f"codebook-layer-11-k-{k}-{_CODEBOOK_HASHES[k]}.pt")


# ---------------------------------------------------------------------------------------------
# Unit language models (Mistral-ULM)
# ---------------------------------------------------------------------------------------------

_ULM_HASHES = {
    (100, 0): "b7a35cc5", (100, 600): "17e91718", (100, 1500): "6ba3cc55",
    (100, 3000): "5d0669b5", (100, 5000): "0c1af6fe", (100, 9000): "92bc9c97",
    (200, 0): "5574c355", (200, 700): "487bae0c", (200, 1500): "8524865e",
    (200, 3000): "ac40635d", (200, 5000): "09a1f87c", (200, 7500): "b685aac0",
    (500, 0): "532387cd", (500, 600): "b96bee1d", (500, 1500): "853fbee4",
    (500, 2800): "ef015b7f", (500, 4500): "9b75c46e", (500, 7000): "886ec1dd",
    (1000, 0): "56124eaa", (1000, 600): "810cb2f0", (1000, 1400): "7f014b7e",
    (1000, 2500): "c5cd03ce", (1000, 3800): "2c798110", (1000, 6000): "df9e72a7",
}  # fmt: skip

UNIT_LM_60K = _hub_file(_ULM_BASE, "mistral-ulm-k-500-lmbda-4500-hours-60k-steps-200k-09759305.pt")
PHONE_LM = _hub_file(_ULM_BASE, "mistral-plm-hours-1k-steps-10k-6d3a38a9.pt")
PHONE_LM_TOKENIZER = RemoteFile(_ULM_BASE + "us_arpa_tokenizer.json", None)


_VOWELS = ("AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW")
_CONSONANTS = ("B", "CH", "D", "DH", "F", "G", "HH", "JH", "K", "L", "M", "N", "NG", "P", "R", "S", "SH", "T",
               "TH", "V", "W", "Y", "Z", "ZH")  # fmt: skip
US_ARPA_PHONES: tuple[str, ...] = (
    *sorted([f"{vowel}{stress}" for vowel in _VOWELS for stress in "012"] + list(_CONSONANTS)), "SIL", "SPN"
)
"""The phones of the released phone LM and phone ELLA-V (Montreal Forced Aligner "us-arpa" alignments of
LibriSpeech): 69 ARPAbet phones (vowels carry stress 0/1/2, as in the CMU Pronouncing Dictionary), silence
``SIL`` and spoken noise ``SPN``."""


def unit_lm_file(k: int, lmbda: float, hours: str = "1k") -> RemoteFile:
    """The released unit LM for (k, λ): trained on 1k hours (all 24 pairs) or 60k hours (k=500, λ=4500)."""
    k, lmbda = check_combination(k, lmbda)
    if hours == "1k":
        name = f"mistral-ulm-k-{k}-lmbda-{lmbda}-hours-1k-steps-10k-{_ULM_HASHES[k, lmbda]}.pt"
        return _hub_file(_ULM_BASE, name)
    if hours == "60k":
        if (k, lmbda) != (500, 4500):
            raise ValueError(f"the 60k-hours unit LM exists only for k=500, lmbda=4500, not k={k}, lmbda={lmbda}")
        return UNIT_LM_60K
    raise ValueError(f"hours must be '1k' or '60k', not {hours!r}")


# ---------------------------------------------------------------------------------------------
# ELLA-V acoustic models (units -> WavTokenizer 40 Hz codes)
# ---------------------------------------------------------------------------------------------

_ELLAV_HASHES = {
    (100, 0): "c4686bf9", (100, 600): "1448a9ec", (100, 1500): "6bdae6f8",
    (100, 3000): "6e277bbd", (100, 5000): "90149573", (100, 9000): "58352115",
    (200, 0): "bc26448e", (200, 700): "32e22dc4", (200, 1500): "7b009e62",
    (200, 3000): "8c19612d", (200, 5000): "a7d6e988", (200, 7500): "c6673f9e",
    (500, 0): "e6f3c91d", (500, 600): "9e639ac6", (500, 1500): "89352a68",
    (500, 2800): "f76d2db5", (500, 4500): "3815b3ab", (500, 7000): "f0b78c0f",
    (1000, 0): "96650d8d", (1000, 600): "1505a398", (1000, 1400): "98bd66a9",
    (1000, 2500): "fedea4c6", (1000, 3800): "d286d597", (1000, 6000): "5fb405fc",
}  # fmt: skip

ELLAV_PHONEMES = _hub_file(_ELLAV_BASE, "ella-v-phonemes-us-arpa-clean-10k-40hz-e06af002.pt")


def ellav_file(k: int, lmbda: float) -> RemoteFile:
    """The released ELLA-V model that turns (k, λ) units into 40 Hz WavTokenizer codes."""
    k, lmbda = check_combination(k, lmbda)
    name = f"ella-v-wavlm-layer-11-k-{k}-lmbda-{lmbda}-clean-10k-40hz-{_ELLAV_HASHES[k, lmbda]}.pt"
    return _hub_file(_ELLAV_BASE, name)


# ---------------------------------------------------------------------------------------------
# WavTokenizer codecs
# ---------------------------------------------------------------------------------------------

WAVTOKENIZER_FILES: dict[str, RemoteFile] = {
    "small_600_24k_4096": _hub_file(_WAVTOKENIZER_BASE, "WavTokenizer_small_600_24k_4096_d44c40fb.ckpt"),
    "small_320_24k_4096": _hub_file(_WAVTOKENIZER_BASE, "WavTokenizer_small_320_24k_4096_721a204f.ckpt"),
}
"""small_600 is the 40 Hz codec ELLA-V predicts; small_320 runs at 75 Hz."""


def wavtokenizer_file(name: str = "small_600_24k_4096") -> RemoteFile:
    if name not in WAVTOKENIZER_FILES:
        raise ValueError(f"unknown WavTokenizer {name!r}; choose from {sorted(WAVTOKENIZER_FILES)}")
    return WAVTOKENIZER_FILES[name]


# ---------------------------------------------------------------------------------------------
# Example audio used by the original project (fetched at run time, never committed here)
# ---------------------------------------------------------------------------------------------

OFFICIAL_EXAMPLES: dict[str, RemoteFile] = {
    "librispeech": RemoteFile(
        _EXAMPLES_BASE + "1272-128104-0000.flac",
        "4e25e22555cd16e90edb0a3b49fdcf1fe652b2a1250ab643634db33895c75b41",
    ),
    "manufacture": RemoteFile(
        _EXAMPLES_BASE + "manufacture.wav",
        "7a321e4703688dc650ef314a141a0b089cbca90be77a53ecd23e8f1cf5d95826",
    ),
    "manufelture": RemoteFile(
        _EXAMPLES_BASE + "manufelture.wav",
        "4a83382158d5d691fd5f96854ce79628d6b6d6e148d0898504790d72336983c5",
    ),
}


def class_files() -> list[RemoteFile]:
    """Every file the course's two 90-minute class sessions (notebooks 00-07) load, for a shared cache
    (notebook 00 §7): WavLM Large, every codebook, both WavTokenizers, the example recordings, and the
    unit LM and ELLA-V of every λ of k = 500 and of notebook 07's equal-bitrate pair
    (:func:`dpslm_utils.paper.closest_bitrate_pair`)."""
    from .paper import closest_bitrate_pair

    pairs = dict.fromkeys([*((DEFAULT_K, lmbda) for lmbda in VALID_LAMBDAS[DEFAULT_K]), *closest_bitrate_pair()])
    files = [WAVLM_LARGE, *(codebook_file(k) for k in CODEBOOK_SIZES), *WAVTOKENIZER_FILES.values()]
    files += [unit_lm_file(k, lmbda) for k, lmbda in pairs] + [ellav_file(k, lmbda) for k, lmbda in pairs]
    return files + list(OFFICIAL_EXAMPLES.values())


def all_files() -> list[RemoteFile]:
    """Every file in the registry (for listing, mirroring or pre-fetching)."""
    files = [WAVLM_LARGE, *(codebook_file(k) for k in CODEBOOK_SIZES)]
    files += [unit_lm_file(k, lmbda) for k, lmbda in VALID_COMBINATIONS]
    files += [UNIT_LM_60K, PHONE_LM, PHONE_LM_TOKENIZER]
    files += [ellav_file(k, lmbda) for k, lmbda in VALID_COMBINATIONS]
    files += [ELLAV_PHONEMES, *WAVTOKENIZER_FILES.values(), *OFFICIAL_EXAMPLES.values()]
    return files
