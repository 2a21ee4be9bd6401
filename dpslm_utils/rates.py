"""Rate against distortion of DPDP units, and the λ that gives a chosen rate.

λ is a squared distance in feature space: its scale changes with the features (WavLM, MFCC, log-mel)
and the codebook, so the same λ means very different coarseness for each. The paper's own axis is the
rate. :func:`lambda_for_rate` turns a rate (deduplicated units per second) into the λ that gives it
on given features, so that features and codebooks can be compared at equal coarseness;
:func:`rate_distortion` measures what each λ costs in reconstruction error.

Both use the exact DPDP optimum (:func:`~dpslm_utils.quantize.dpdp_batch`), for which a larger λ never
gives more segments: the rate falls and the distortion rises as λ grows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from .checks import check_real
from .codebooks import squared_distances
from .quantize import bitrate, dpdp_batch, dpdp_cost

MAX_BISECTIONS = 200
"""Bisection steps :func:`lambda_for_rate` takes at most (each halves the λ interval on a log scale)."""


@dataclass(frozen=True)
class RatePoint:
    """What DPDP units with one λ cost and lose, over a set of utterances."""

    lmbda: float
    units_per_second: float
    """Deduplicated units per second of audio."""
    entropy_bits: float
    """Entropy of the unit distribution, bits per unit."""
    bits_per_second: float
    """``units_per_second × entropy_bits``."""
    distortion: float
    """Mean squared error of the centroid reconstruction per frame and dimension: mean over t, d of
    ``(x_td − c_{u_t}d)²`` (for log-mel features: the mean squared log-mel error). The DPDP objective's
    distortion term is this times the number of frames and D."""


def rate_distortion(
    features: Tensor | Sequence[Tensor],
    codebook: Tensor,
    lambdas: Sequence[float],
    num_neighbors: int | None = None,
    frame_rate: float = 50.0,
) -> list[RatePoint]:
    """One :class:`RatePoint` per λ: DPDP of ``features`` (one ``[T, D]`` or a list) on ``codebook [K, D]``."""
    utterances = _utterances(features)
    frames = sum(x.shape[0] for x in utterances)
    points = []
    for lmbda in lambdas:
        units = dpdp_batch(utterances, codebook, lmbda, num_neighbors)
        squared_error = sum(dpdp_cost(x, codebook, u, lmbda)[0] for x, u in zip(utterances, units))
        rate = bitrate(units, frame_rate)
        points.append(RatePoint(float(lmbda), rate.units_per_second, rate.entropy_bits, rate.bits_per_second,
                                squared_error / (frames * codebook.shape[1])))  # fmt: skip
    return points


def lambda_for_rate(
    features: Tensor | Sequence[Tensor],
    codebook: Tensor,
    units_per_second: float,
    num_neighbors: int | None = None,
    rtol: float = 0.01,
    frame_rate: float = 50.0,
) -> float:
    """The λ whose DPDP units of ``features`` (one ``[T, D]`` or a list) have ``units_per_second`` on average.

    The rate is the one :func:`~dpslm_utils.bitrate` reports: deduplicated units of all utterances
    over their total duration (frames / ``frame_rate``). It falls step by step as λ grows, so λ is
    found by bisection (on a log scale, from λ = 0 and a λ large enough for the fewest segments), and
    the λ returned gives a rate within ``rtol × units_per_second`` of the target (1 % by default).

    Raises ValueError for a rate above the λ = 0 rate (every frame its nearest entry), below the
    lowest rate (one unit per utterance; more where ``num_neighbors`` keeps frames from sharing a
    unit), or one no λ reaches within the tolerance because a single step of the rate jumps over it
    (few frames: use more audio or a larger ``rtol``).
    """
    utterances = _utterances(features)
    target = check_real("units_per_second", units_per_second, minimum=0.0)
    rtol = check_real("rtol", rtol, minimum=0.0)
    if target == 0:
        raise ValueError("units_per_second must be > 0: every utterance has at least one unit")

    def rate(lmbda: float) -> float:
        return bitrate(dpdp_batch(utterances, codebook, lmbda, num_neighbors), frame_rate).units_per_second

    def close(r: float) -> bool:
        return abs(r - target) <= rtol * target

    highest = rate(0.0)  # also checks the codebook, the features and num_neighbors
    lo, hi = 0.0, _fewest_segments_lambda(utterances, codebook, num_neighbors)
    lowest = rate(hi)
    if close(highest):
        return lo
    if close(lowest):
        return hi
    seconds = sum(x.shape[0] for x in utterances) / frame_rate
    if target > highest:
        raise ValueError(f"{target:g} units/s is above the highest rate of these features: {highest:.2f} units/s "
                         "at λ = 0 (every frame its nearest codebook entry)")
    if target < lowest:
        why = f"at least one unit per utterance ({len(utterances)} in {seconds:.1f} s)"
        if num_neighbors is not None:
            why += f"; with num_neighbors={num_neighbors} some frames cannot share one unit"
        raise ValueError(f"{target:g} units/s is below the lowest rate of these features: {lowest:.2f} units/s, {why}")
    for _ in range(MAX_BISECTIONS):  # invariant: rate(lo) > target + tolerance, rate(hi) < target − tolerance
        mid = math.sqrt(lo * hi) if lo > 0 else hi / 2
        r = rate(mid)
        if close(r):
            return mid
        lo, hi = (mid, hi) if r > target else (lo, mid)
        if hi - lo <= 1e-12 * hi:
            break
    raise ValueError(
        f"no λ gives {target:g} ± {rtol * target:.3g} units/s: the rate jumps from {rate(lo):.3f} to {rate(hi):.3f} "
        f"units/s at λ ≈ {hi:.6g}. {seconds:.1f} s of features are too few to resolve it; use more audio or a larger rtol"
    )


def _utterances(features: Tensor | Sequence[Tensor]) -> list[Tensor]:
    utterances = [features] if isinstance(features, Tensor) else list(features)
    if not utterances or sum(x.shape[0] for x in utterances) == 0:
        raise ValueError("no frames: give one [T, D] feature tensor or a non-empty list of them")
    return utterances


def _fewest_segments_lambda(utterances: list[Tensor], codebook: Tensor, num_neighbors: int | None) -> float:
    """A λ at which DPDP gives every utterance its fewest possible segments.

    Two unit sequences of one utterance differ in distortion by at most Σ_t (farthest − nearest allowed
    entry of frame t); a λ above that makes one segment fewer always the cheaper choice.
    """
    spread = 0.0
    for x in utterances:
        if x.shape[0] == 0:
            continue
        distances = squared_distances(x.to(codebook.dtype), codebook)
        if num_neighbors is not None:
            distances = distances.topk(min(num_neighbors, codebook.shape[0]), dim=1, largest=False).values
        spread = max(spread, float((distances.max(dim=1).values - distances.min(dim=1).values).double().sum()))
    return 2.0 * spread + 1.0
