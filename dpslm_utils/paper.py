"""Numbers the DP-SLM authors published for the released models, each with where it was read.

Visser & Kamper, *Spoken Language Modeling with Duration-Penalized Self-Supervised Units*,
Interspeech 2025 (arXiv:2505.23494). Notebooks 07 and 08 put these next to their own measurements.

* :data:`FIGURE4_RESYNTHESIS`: the paper's Figure 4, resynthesis WER against bitrate for all 24
  released (k, λ) pairs, as published in the original repository (``wer_vs_bitrate.svg`` in
  nicolvisser/dp-slm). The figure is vector graphics, so the values are the coordinates of its
  plotted points mapped through its axis ticks (the ticks fit a straight line to within 0.002 bit/s
  and 0.0001 WER points): bitrate to ±0.1 bit/s, WER to ±0.01 points. One point, k = 1000 at
  λ = 3800, lies on a straight stretch of its curve where the drawing keeps no vertex; its bitrate
  was read from its arrow marker instead (±1 bit/s). The curves run from λ = 0 (highest bitrate)
  towards larger λ, which the λ = 0 bitrates confirm: they equal :data:`CODEBOOK_BITRATES`, an
  independent source. The WERs are medians over the test utterances of per-utterance WERs (hence
  values like 1/9 = 11.1 %), with greedy ELLA-V decoding (``temperature=1.0, top_p=0.0``, per the
  original README); the test set and ASR are described in the paper.
* :data:`CODEBOOK_BITRATES`: the bitrate of plain k-means units (λ = 0) for each released codebook,
  from the table in the nicolvisser/WavLM-codebooks README. Neither source gives the entropies, so the
  units per second behind these bitrates are known only as a lower bound (:func:`min_units_per_second`).

The paper's sWUGGY / sBLIMP / ABX results are in its tables and figures, which this project could not
read offline; they are not here.
"""

from __future__ import annotations

import math

FIGURE4_RESYNTHESIS: dict[tuple[int, int], tuple[float, float]] = {
    # (k, λ): (bits per second, median WER in %)
    (100, 0): (192.0, 11.11),
    (100, 600): (176.6, 11.11),
    (100, 1500): (159.4, 11.54),
    (100, 3000): (137.7, 11.54),
    (100, 5000): (118.3, 12.50),
    (100, 9000): (98.6, 15.63),
    (200, 0): (243.3, 8.33),
    (200, 700): (222.8, 9.09),
    (200, 1500): (204.2, 9.68),
    (200, 3000): (175.3, 10.00),
    (200, 5000): (146.8, 9.09),
    (200, 7500): (124.5, 8.82),
    (500, 0): (319.8, 7.55),
    (500, 600): (294.8, 7.14),
    (500, 1500): (264.8, 7.69),
    (500, 2800): (229.1, 7.41),
    (500, 4500): (193.8, 6.67),
    (500, 7000): (160.0, 7.41),
    (1000, 0): (386.3, 5.26),
    (1000, 600): (355.6, 5.88),
    (1000, 1400): (319.7, 6.25),
    (1000, 2500): (279.0, 6.67),
    (1000, 3800): (241.5, 6.67),
    (1000, 6000): (199.8, 6.67),
}
"""The paper's Figure 4: ``(k, λ) -> (bits per second, median resynthesis WER in %)``."""

CODEBOOK_BITRATES: dict[int, int] = {100: 192, 200: 243, 500: 320, 1000: 386, 2000: 414}
"""Bits per second of k-means units (λ = 0) per codebook size k, as the WavLM-codebooks README reports."""


def figure4_rows() -> list[dict]:
    """:data:`FIGURE4_RESYNTHESIS` as rows ``{"k", "lmbda", "bits_per_second", "wer"}`` (WER in %),
    ready for :func:`dpslm_utils.plots.plot_k_lambda_curves`."""
    return [
        {"k": k, "lmbda": lmbda, "bits_per_second": bits_per_second, "wer": wer}
        for (k, lmbda), (bits_per_second, wer) in FIGURE4_RESYNTHESIS.items()
    ]


def min_units_per_second(k: int) -> float:
    """The fewest deduplicated units per second that :data:`CODEBOOK_BITRATES` allows for k-means units
    (λ = 0) of codebook size k: bits/s ÷ log2 k, since the entropy of k units is at most log2 k bits."""
    return CODEBOOK_BITRATES[k] / math.log2(k)


def closest_bitrate_pair() -> tuple[tuple[int, int], tuple[int, int]]:
    """The two released pairs of *different* k, both with λ > 0, whose Figure 4 bitrates are closest:
    ``((k_small, λ), (k_large, λ))``. Notebook 07 listens to them side by side (equal bitrate, different
    units), so the class set of models (:func:`dpslm_utils.registry.class_files`) includes both."""
    coarse = [pair for pair in FIGURE4_RESYNTHESIS if pair[1] > 0]
    pairs = [(a, b) for a in coarse for b in coarse if a[0] < b[0]]
    return min(pairs, key=lambda ab: abs(FIGURE4_RESYNTHESIS[ab[0]][0] - FIGURE4_RESYNTHESIS[ab[1]][0]))
