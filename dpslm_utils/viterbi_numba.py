"""The DPDP recursion and backtrace of :mod:`dpslm_utils.quantize`, compiled with numba (optional).

:func:`viterbi` gives the same units as quantize's numpy reference (``_viterbi_numpy``): the same
float64 sums and comparisons in the same order, and the same tie-breaking. It only removes numpy's
per-frame call overhead. quantize imports this module only when numba can be imported and
``DPSLM_NUMBA`` is not ``0``. The compiled code is cached on disk (``cache=True``): the first call
ever compiles for a few seconds per dtype, and later processes load it in a fraction of a second.

Instead of the whole float64 cost matrix, the recursion keeps two cost rows and one byte of flags per
(frame, unit), which is everything the backtrace reads:

    STAY: cost[t, u] <= best[t] + λ   (a run of u that covers frame t + 1 may reach back into frame t)
    BEST: cost[t, u] == best[t]       (u is a cheapest unit at frame t, a candidate segment end)

with ``best[t] = min_u cost[t, u]``.
"""

from __future__ import annotations

import numba
import numpy as np

STAY = 1
BEST = 2


@numba.njit(cache=True, nogil=True)
def viterbi(distances: np.ndarray, lmbda: float) -> np.ndarray:
    """Optimal units ``[T]`` (int64) for ``distances [T, K]`` (float32 or float64), λ = ``lmbda``."""
    num_frames, k = distances.shape
    units = np.empty(num_frames, dtype=np.int64)
    if num_frames == 0:
        return units
    flags = np.empty((num_frames, k), dtype=np.uint8)
    previous, current = np.empty(k), np.empty(k)  # cost[t - 1], cost[t] in float64
    previous[:] = distances[0]
    best = _row_min(previous)
    for t in range(1, num_frames):
        switch = best + lmbda  # cost of arriving at frame t from the previous frame's best unit
        frame_distances, previous_flags = distances[t], flags[t - 1]
        for u in range(k):
            stay = previous[u] <= switch
            current[u] = frame_distances[u] + (previous[u] if stay else switch)
            previous_flags[u] = STAY * stay + BEST * (previous[u] == best)
        best = _row_min(current)
        previous, current = current, previous
    last_flags = flags[num_frames - 1]
    for u in range(k):
        last_flags[u] = BEST * (previous[u] == best)
    _backtrace(flags, units)
    return units


@numba.njit(cache=True, nogil=True)
def _backtrace(flags: np.ndarray, units: np.ndarray) -> None:
    """Write ``units [T]`` from the recursion's ``flags [T, K]``, one segment at a time from the end.

    As in quantize's ``_backtrace``: among the units that are cheapest at a segment's end, the one
    whose run reaches back furthest, then the lowest index.
    """
    num_frames, k = flags.shape
    end = num_frames - 1
    while end >= 0:
        segment_start, unit = end + 1, -1
        for u in range(k):
            if flags[end, u] & BEST:
                start = end
                while start > 0 and flags[start - 1, u] & STAY:
                    start -= 1
                if start < segment_start:  # u rises, so among equal starts the lowest unit stays
                    segment_start, unit = start, u
        units[segment_start : end + 1] = unit
        end = segment_start - 1


@numba.njit(cache=True, nogil=True)
def _row_min(row: np.ndarray) -> float:
    """``min(row)`` of a float64 row, exact. Eight independent minima: one running minimum would make
    every comparison wait for the previous one (this costs about 5× less at K = 500)."""
    k = row.shape[0]
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = np.inf
    u = 0
    while u + 8 <= k:
        m0 = min(m0, row[u])
        m1 = min(m1, row[u + 1])
        m2 = min(m2, row[u + 2])
        m3 = min(m3, row[u + 3])
        m4 = min(m4, row[u + 4])
        m5 = min(m5, row[u + 5])
        m6 = min(m6, row[u + 6])
        m7 = min(m7, row[u + 7])
        u += 8
    for v in range(u, k):
        m0 = min(m0, row[v])
    return min(min(min(m0, m1), min(m2, m3)), min(min(m4, m5), min(m6, m7)))
