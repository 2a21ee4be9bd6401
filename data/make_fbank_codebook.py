"""Train the log-mel codebook shipped with the package: ``dpslm_utils/feature_codebooks/fbank_k100.pt``.

k-means with k = 100 (k-means++ seeded with 0, then Lloyd's iterations: ``dpslm.train_codebook``) of the
``feature_encoder("fbank")`` frames (80-band log-mel, 50 Hz) of the project's own audio: the three
bundled example recordings and the training split of the toy language. No test item is used, so
the toy language's evaluation stays unseen. Deterministic: the same audio and library versions
give the same codebook.

    python data/make_fbank_codebook.py          # writes the file (about 35 kB)
"""

from __future__ import annotations

from pathlib import Path

import torch

import dpslm_utils as dpslm
from dpslm_utils.audio import BUNDLED_EXAMPLES, bundled_example, load_mono
from dpslm_utils.codebooks import SHIPPED_CODEBOOKS, save_codebook

FEATURES, K, SEED, ITERATIONS = "fbank", 100, 0, 100
OUT = Path(dpslm.__file__).parent / "feature_codebooks" / SHIPPED_CODEBOOKS[FEATURES, K]


def training_audio() -> list[tuple[torch.Tensor, int]]:
    """``(wav [1, samples], sample_rate)`` of the bundled examples, then of the toy language's training split."""
    examples = [(dpslm.to_mono(wav), sr) for wav, sr in map(bundled_example, sorted(BUNDLED_EXAMPLES))]
    return examples + [load_mono(utterance.path) for utterance in dpslm.load_toy_language().train]


def make_codebook() -> tuple[torch.Tensor, dict]:
    """The codebook ``[K, 80]`` and the details stored beside it."""
    encoder = dpslm.feature_encoder(FEATURES)
    features = torch.cat([encoder(wav, sr) for wav, sr in training_audio()])
    codebook = dpslm.train_codebook(features, K, iterations=ITERATIONS, seed=SEED)
    details = {"k": K, "seed": SEED, "iterations": ITERATIONS, "frames": features.shape[0],
               "trained_on": "dpslm_utils/examples/*.flac + toy language train split"}  # fmt: skip
    return codebook, {"features": encoder.settings, **details}


def main() -> None:
    codebook, details = make_codebook()
    save_codebook(OUT, codebook, **details)
    print(f"wrote {OUT}: {details['frames']} frames -> {K} centres of {FEATURES} features")


if __name__ == "__main__":
    main()
