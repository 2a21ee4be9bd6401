"""DPDP: duration-penalised quantisation of features into codebook units, and what the units cost in bits.

DPDP (duration-penalised dynamic programming) gives every frame t a codebook entry u_t so as to minimise

    Σ_t ‖x_t − c_{u_t}‖²  +  λ · (number of segments),

a segment being a maximal run of frames with the same unit. λ = 0 gives plain nearest-centroid
(k-means) units; a larger λ gives fewer, longer segments, i.e. a lower bitrate.

The exact optimum comes from a Viterbi recursion over (frame, unit) in which changing unit costs λ:

    cost[t, u] = d[t, u] + min(cost[t−1, u], min_v cost[t−1, v] + λ),      d[t, u] = ‖x_t − c_u‖²

O(T·K) work, then a backtrace from the cheapest final unit. (The original dpdp.py solves the same
problem with a segmental recursion over every segment start, O(T²·K); ``benchmarks/dpdp.py`` times
the two side by side.) Among equally cheap answers the original's is chosen: read from the end, the
longest last segment, then the lowest unit index, and so on for what precedes it.

The distances are computed on the features' device and the units come back there; the recursion runs
on the CPU in float64, in one of two ways that give identical units:

- compiled with numba (:mod:`dpslm_utils.viterbi_numba`) whenever ``import numba`` works (the ``numba``
  extra; Colab ships it). It keeps two float64 cost rows and one byte of backtrace flags per
  (frame, unit): 0.5 MB and 0.3–0.5 ms for T = 1000, K = 500, under a tenth of the distance matrix.
- numpy, the readable reference below (:func:`_viterbi_numpy`), one vectorised step per frame over a
  float64 copy of the distances (8·T·K bytes, 4 MB for T = 1000, K = 500). About 2 µs of numpy call
  overhead per frame make it several times slower. ``DPSLM_NUMBA=0`` in the environment selects it
  even when numba is installed.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from . import checkpoints, registry
from .checks import check_int, check_real
from .codebooks import check_codebook, check_vectors, codebook_from_checkpoint, squared_distances
from .registry import DEFAULT_K, DEFAULT_LMBDA

NUMBA_ENV = "DPSLM_NUMBA"
"""Environment variable: ``0`` runs the recursion with numpy even when numba is installed."""

_MAX_DISTANCE_CELLS = 1 << 24
"""Most frame-to-entry distances :func:`dpdp_batch` computes in one matrix product (64 MiB in float32)."""


def dpdp(features: Tensor, codebook: Tensor, lmbda: float, num_neighbors: int | None = None) -> Tensor:
    """Per-frame DPDP units of one utterance: ``features [T, D]``, ``codebook [K, D]`` -> ``LongTensor[T]``.

    The exact minimiser of Σ_t ‖x_t − c_{u_t}‖² + λ · (number of segments). With ``num_neighbors=N``
    frame t may only take one of its N nearest codebook entries (1 <= N <= K; ``None`` = all K), as in
    the original. ``T = 0`` gives an empty result. The units are on the features' device.
    """
    codebook, lmbda, num_neighbors = _check_settings(codebook, lmbda, num_neighbors)
    _check_features(features, codebook, "features")
    return _dpdp([features], codebook, lmbda, num_neighbors)[0]


def dpdp_batch(
    features: Sequence[Tensor], codebook: Tensor, lmbda: float, num_neighbors: int | None = None
) -> list[Tensor]:
    """:func:`dpdp` of several utterances ``[T_i, D]`` at once -> ``[LongTensor[T_i]]``, equal to one by one.

    The distances of consecutive utterances come from one matrix product (in groups of at most
    :data:`_MAX_DISTANCE_CELLS` distances, so memory stays bounded for any number of utterances),
    which pays off most on a GPU; the recursion then runs per utterance.
    """
    codebook, lmbda, num_neighbors = _check_settings(codebook, lmbda, num_neighbors)
    if isinstance(features, Tensor) or not isinstance(features, Sequence):
        raise TypeError(
            f"dpdp_batch takes a list of [T, D] feature tensors, got {type(features).__name__}; "
            "for a single utterance use dpdp"
        )
    for i, utterance in enumerate(features):
        _check_features(utterance, codebook, f"features[{i}]")
    return _dpdp(list(features), codebook, lmbda, num_neighbors)


class DPDPQuantizer(nn.Module):
    """DPDP with a fixed codebook and λ: ``forward(features [T, D]) -> (quantized [T, D], units [T])``.

    ``quantized`` has the values of ``codebook[units]`` and, like the original module, passes gradients
    straight through to ``features`` (``features − (features − codebook[units]).detach()``).
    """

    codebook: Tensor

    def __init__(self, codebook: Tensor, lmbda: float, num_neighbors: int | None = None):
        super().__init__()
        codebook, self.lmbda, self.num_neighbors = _check_settings(codebook, lmbda, num_neighbors)
        self.register_buffer("codebook", codebook.detach().clone())
        self.random_weights = False

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        lmbda: float,
        num_neighbors: int | None = None,
        device: torch.device | str | None = None,
    ) -> DPDPQuantizer:
        """A quantizer on a codebook file in the release layout ``{"codebook": [K, D]}``."""
        return cls(codebook_from_checkpoint(path, device), lmbda, num_neighbors)

    @classmethod
    def from_pretrained(
        cls,
        k: int = DEFAULT_K,
        lmbda: float = DEFAULT_LMBDA,
        num_neighbors: int | None = None,
        layer: int = 11,
        device: torch.device | str | None = None,
    ) -> DPDPQuantizer:
        """A quantizer on the released WavLM Large ``layer`` codebook of size ``k`` (see :func:`load_codebook`)."""
        load = functools.partial(cls.from_checkpoint, lmbda=lmbda, num_neighbors=num_neighbors, device=device)
        return checkpoints.load_pretrained(load, registry.codebook_file(k, layer), "codebook", k=k)

    @property
    def k(self) -> int:
        """Codebook size K."""
        return self.codebook.shape[0]

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        units = dpdp(features, self.codebook, self.lmbda, self.num_neighbors)
        quantized = self.codebook[units]
        return features - (features - quantized).detach(), units

    def __repr__(self) -> str:
        return checkpoints.describe(self, k=self.k, dim=self.codebook.shape[1], lmbda=f"{self.lmbda:g}",
                                    num_neighbors=self.num_neighbors)  # fmt: skip


def dpdp_cost(features: Tensor, codebook: Tensor, units: Tensor, lmbda: float) -> tuple[float, float]:
    """The two terms of the DPDP objective for any per-frame ``units [T]``, in float64:
    ``(Σ_t ‖x_t − c_{u_t}‖², λ · number of segments)``. :func:`dpdp` minimises their sum."""
    codebook, lmbda, _ = _check_settings(codebook, lmbda, None)
    _check_features(features, codebook, "features")
    _check_units(units, "units")
    if units.shape[0] != features.shape[0]:
        raise ValueError(f"units has {units.shape[0]} frames but features has {features.shape[0]}")
    distortion = (features.double() - codebook.double()[units.to(codebook.device)]).square().sum()
    return float(distortion), lmbda * torch.unique_consecutive(units).numel()


# ---------------------------------------------------------------------------------------------
# The recursion
# ---------------------------------------------------------------------------------------------


def _dpdp(utterances: list[Tensor], codebook: Tensor, lmbda: float, num_neighbors: int | None) -> list[Tensor]:
    """Checked inputs -> per-frame units of every utterance."""
    units = []
    for group in _groups(utterances, codebook.shape[0]):
        frames = torch.cat(group) if len(group) > 1 else group[0]
        with torch.no_grad():
            distances = _frame_distances(frames, codebook, num_neighbors)
        boundaries = np.cumsum([utterance.shape[0] for utterance in group])[:-1]
        for utterance, utterance_distances in zip(group, np.split(distances, boundaries)):
            units.append(torch.from_numpy(_viterbi(utterance_distances, lmbda)).to(utterance.device))
    return units


def _groups(utterances: list[Tensor], k: int) -> list[list[Tensor]]:
    """Consecutive utterances in groups whose distance matrices fit :data:`_MAX_DISTANCE_CELLS` together."""
    groups: list[list[Tensor]] = []
    cells = 0
    for utterance in utterances:
        size = utterance.shape[0] * k
        if not groups or cells + size > _MAX_DISTANCE_CELLS:
            groups.append([])
            cells = 0
        groups[-1].append(utterance)
        cells += size
    return groups


def _frame_distances(features: Tensor, codebook: Tensor, num_neighbors: int | None) -> np.ndarray:
    """``‖x_t − c_u‖²`` as a CPU array ``[T, K]`` (float32, or float64 for float64 inputs), with the
    K − N farthest entries of every frame set to +inf when ``num_neighbors = N``. Raises ValueError
    when they overflow into NaN (finite inputs whose squares exceed the dtype's range)."""
    dtype = torch.promote_types(torch.promote_types(features.dtype, codebook.dtype), torch.float32)
    distances = squared_distances(features.to(dtype), codebook.to(dtype))
    if distances.sum().isnan():  # distances are >= 0, so only a NaN makes their sum NaN
        raise ValueError(
            "features and codebook have values too large to use: their squared distances overflow "
            f"{str(dtype).removeprefix('torch.')}"
        )
    k = codebook.shape[0]
    if num_neighbors is not None and num_neighbors < k:
        farthest = distances.topk(k - num_neighbors, dim=1).indices
        distances.scatter_(1, farthest, float("inf"))
    return distances.cpu().numpy()


def _viterbi(distances: np.ndarray, lmbda: float) -> np.ndarray:
    """Optimal units ``[T]`` (int64) for ``distances [T, K]``: compiled with numba when it can be imported
    and :data:`NUMBA_ENV` is not ``0``, else :func:`_viterbi_numpy`. Both give identical units."""
    compiled = _compiled_viterbi() if os.environ.get(NUMBA_ENV, "").strip() != "0" else None
    return (compiled or _viterbi_numpy)(distances, lmbda)


@functools.cache
def _compiled_viterbi() -> Callable[[np.ndarray, float], np.ndarray] | None:
    """:func:`dpslm_utils.viterbi_numba.viterbi`, or None when numba cannot be imported (looked up once)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return None
    from .viterbi_numba import viterbi

    return viterbi


def _viterbi_numpy(distances: np.ndarray, lmbda: float) -> np.ndarray:
    """The reference recursion in numpy: float64, one vectorised step per frame, then the backtrace."""
    cost = distances.astype(np.float64)  # becomes cost[t, u] in place, one frame at a time
    arrive = np.empty(cost.shape[1])  # cheapest way into (t, u): stay on u, or switch from the best unit
    row_min, minimum = np.minimum.reduce, np.minimum  # bound once: this loop runs per frame
    for prev, current in zip(cost[:-1], cost[1:]):
        minimum(prev, row_min(prev) + lmbda, out=arrive)
        current += arrive
    return _backtrace(cost, lmbda)


def _backtrace(cost: np.ndarray, lmbda: float) -> np.ndarray:
    """Units ``[T]`` from the recursion's ``cost [T, K]``, one segment at a time from the end.

    A segment ending at frame e belongs to a unit u with ``cost[e, u]`` minimal, and reaches back
    while staying on u was no dearer than switching from the previous frame's best unit. When several
    units tie at e, the original's choice is made: the longest segment, then the lowest unit index.
    """
    num_frames = cost.shape[0]
    units = np.empty(num_frames, dtype=np.int64)
    if num_frames == 0:
        return units
    lowest_best = cost.argmin(axis=1)
    best = cost[np.arange(num_frames), lowest_best]
    switch_cost = (best + lmbda).tolist()  # the same float64 sums as in the recursion
    end = num_frames - 1
    while end >= 0:  # ties are looked for at segment ends only (a few per second, not every frame)
        candidates = np.flatnonzero(cost[end] == best[end]).tolist()
        if len(candidates) > 1:
            start, unit = min((_segment_start(cost, switch_cost, end, u), u) for u in candidates)
        else:
            unit = candidates[0]
            start = _segment_start(cost, switch_cost, end, unit)
        units[start : end + 1] = unit
        end = start - 1
    return units


def _segment_start(cost: np.ndarray, switch_cost: list[float], end: int, unit: int) -> int:
    """First frame of the longest optimal run of ``unit`` that ends at frame ``end``."""
    start = end
    while start > 0 and cost[start - 1, unit] <= switch_cost[start - 1]:
        start -= 1
    return start


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def _check_settings(codebook: Tensor, lmbda: float, num_neighbors: int | None) -> tuple[Tensor, float, int | None]:
    """Validate the codebook ``[K, D]``, λ (finite, >= 0) and ``num_neighbors`` (None or 1..K)."""
    codebook = check_codebook(codebook)
    lmbda = check_real("lmbda (the duration penalty λ)", lmbda, minimum=0.0)
    if num_neighbors is not None:  # at most K = codebook.shape[0]
        num_neighbors = check_int("num_neighbors", num_neighbors, 1, codebook.shape[0])
    return codebook, lmbda, num_neighbors


def _check_features(features: Tensor, codebook: Tensor, name: str) -> None:
    check_vectors(features, name)
    if features.shape[1] != codebook.shape[1]:
        raise ValueError(
            f"{name} have dimension D = {features.shape[1]} but the codebook entries have D = {codebook.shape[1]}"
        )
    if features.device != codebook.device:
        raise ValueError(f"{name} are on {features.device} but the codebook is on {codebook.device}")


# ---------------------------------------------------------------------------------------------
# Units -> segments and bits
# ---------------------------------------------------------------------------------------------


def deduplicate(units: Tensor) -> tuple[Tensor, Tensor]:
    """Run-length encode per-frame units ``[T]`` -> ``(units [N], durations [N])``; durations in frames sum to T.

    ``deduplicate(tensor([3, 3, 7, 3]))`` -> ``(tensor([3, 7, 3]), tensor([2, 1, 1]))``.
    """
    _check_units(units, "units")
    return torch.unique_consecutive(units, return_counts=True)


@dataclass(frozen=True)
class Bitrate:
    """How many bits per second a unit transcription needs: ``bits_per_second = units_per_second × entropy_bits``."""

    units_per_second: float
    """Deduplicated units per second of audio."""
    entropy_bits: float
    """Entropy (bits per unit) of the empirical distribution of the deduplicated units."""
    bits_per_second: float
    """``units_per_second × entropy_bits``."""


def bitrate(utterances: Tensor | Sequence[Tensor], frame_rate: float = 50.0) -> Bitrate:
    """Bitrate of per-frame units: one utterance ``[T]`` or a list of them, at ``frame_rate`` frames per second.

    Each utterance is deduplicated on its own (a run never continues into the next utterance). Over
    all utterances together: ``units_per_second`` = deduplicated units / (total frames / frame_rate),
    ``entropy_bits`` = −Σ_u p(u) log₂ p(u) with p the relative frequency of unit u among the
    deduplicated units, and ``bits_per_second`` = their product. E.g. 50 Hz frames in runs of two over
    four equally frequent units: 25 units/s × 2 bits = 50 bits/s.
    """
    if isinstance(utterances, Tensor):
        utterances = [utterances]
    if isinstance(frame_rate, bool) or not isinstance(frame_rate, numbers.Real):
        raise TypeError(f"frame_rate must be a number (frames per second), got {type(frame_rate).__name__}")
    if not (math.isfinite(frame_rate) and frame_rate > 0):
        raise ValueError(f"frame_rate must be a positive number of frames per second, got {frame_rate!r}")
    for i, units in enumerate(utterances):
        _check_units(units, f"utterances[{i}]")
    num_frames = sum(units.shape[0] for units in utterances)
    if num_frames == 0:
        raise ValueError("no frames: the bitrate of zero seconds of audio is undefined")
    segments = torch.cat([torch.unique_consecutive(units.cpu()) for units in utterances])
    return segments_bitrate(segments, num_frames / frame_rate)


def segments_bitrate(segments: Tensor, seconds: float) -> Bitrate:
    """Bitrate of units ``[N]`` that are already segments (deduplicated, or phones of any duration) spoken over
    ``seconds`` of audio: :func:`bitrate`'s definition, for units that are not 50 Hz frames."""
    probabilities = torch.unique(segments, return_counts=True)[1].double() / segments.numel()
    entropy = float((probabilities * probabilities.reciprocal().log2()).sum())  # Σ p log₂(1/p)
    units_per_second = segments.numel() / seconds
    return Bitrate(units_per_second, entropy, units_per_second * entropy)


def _check_units(units: Tensor, name: str) -> None:
    if not isinstance(units, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of unit indices [T], got {type(units).__name__}")
    if units.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor of per-frame units [T], got shape {list(units.shape)}")
    if units.is_floating_point() or units.is_complex() or units.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer unit indices, got dtype {units.dtype}")
