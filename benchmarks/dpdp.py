"""Time dpslm_utils.dpdp (Viterbi, O(T·K)) against the original segmental DPDP (O(T²·K)), side by side.

    flock /tmp/bench.lock .venv/bin/python benchmarks/dpdp.py [--repeats 15] [--threads 2] [--device cpu]

For each size (T frames, K codebook entries, D dimensions) the table shows, as medians over
``--repeats`` rounds: the time of our distance matrix alone; our dynamic programme (recursion +
backtrace) with numpy and compiled with numba; the public ``dpdp`` call end to end with each, and
that call's time over the distance matrix's (``DPSLM_NUMBA=0`` selects numpy); the original
algorithm's time end to end and without its distance matrix (``cdist``); the speed-up of the default
call (numba when installed) end to end and of its dynamic programme alone; and whether all three
found the same optimum (cost in float64 within relative 1e-9; units identical or not). Every round
runs each of our measurements once, in turn, so that a change in the machine's load hits them alike.
Both implementations pay for one T×K×D matrix product, which bounds the end-to-end speed-up; the
dynamic programmes are what differ (O(T·K) against O(T²·K)).

The features imitate speech units: runs of 2-14 frames around random codebook entries plus noise,
with λ chosen so that segments average a few frames, as at the paper's settings.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
from collections.abc import Callable
from typing import Optional

import torch

from dpslm_utils import dpdp, dpdp_cost
from dpslm_utils.quantize import NUMBA_ENV, _compiled_viterbi, _frame_distances, _viterbi_numpy
from timing import interleaved_medians

SIZES = [(1000, 500, 1024), (500, 100, 1024), (1000, 1000, 1024), (2000, 500, 1024)]
NOISE = 0.7  # per-dimension noise around the true centre (codebook entries are N(0, 1))


@torch.jit.script
def original_dpdp(features: torch.Tensor, codebook: torch.Tensor, lmbda: float, num_neighbors: Optional[int] = None):
    """The original algorithm (nicolvisser/dpdp, dpdp.py), rewritten: TorchScript, float32, O(T²·K).

    alpha[t] = min over segment starts s < t of alpha[s] + min_u Σ_{s<=i<t} d[i, u] + λ·(1 − (t − s)):
    for every end t it sums the distances of every possible last segment (a reversed cumulative sum
    over all earlier frames), keeps the best unit of each, then the best start. Backpointers hold
    the start and unit of the last segment; ties go to the earliest start and the lowest unit.
    """
    num_frames, k = features.shape[0], codebook.shape[0]
    distances = torch.cdist(features, codebook, p=2.0) ** 2
    if num_neighbors is not None:
        farthest = distances.topk(k - num_neighbors, dim=1, largest=True, sorted=True).indices
        distances[torch.arange(num_frames)[:, None], farthest] = float("inf")
    device = features.device
    penalty_by_duration = lmbda * (1.0 - torch.arange(1, num_frames + 1, dtype=torch.float32, device=device))
    alpha = torch.zeros(num_frames + 1, device=device)
    segment_start = torch.zeros(num_frames + 1, dtype=torch.long, device=device)
    segment_unit = torch.zeros(num_frames + 1, dtype=torch.long, device=device)
    for t in range(1, num_frames + 1):
        last_segment_sums = distances[:t].flip(0).cumsum(0).flip(0)  # [s, u] = Σ_{s<=i<t} d[i, u]
        best_sums, best_units = last_segment_sums.min(dim=1)
        totals = alpha[:t] + best_sums + penalty_by_duration[:t].flip(0)
        alpha[t], segment_start[t] = totals.min(dim=0)
        segment_unit[t] = best_units[segment_start[t]]
    units = torch.zeros(num_frames, dtype=torch.long, device=device)
    t = num_frames
    while t > 0:
        start = int(segment_start[t])
        units[start:t] = segment_unit[t]
        t = start
    return units


def speech_like(num_frames: int, k: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(features [T, D], codebook [K, D], λ)``: runs of 2-14 frames around random entries, plus noise."""
    generator = torch.Generator().manual_seed(seed)
    codebook = torch.randn(k, dim, generator=generator)
    run_lengths = torch.randint(2, 15, (num_frames,), generator=generator)
    run_units = torch.randint(k, (num_frames,), generator=generator)
    centres = run_units.repeat_interleave(run_lengths)[:num_frames]
    features = codebook[centres] + NOISE * torch.randn(num_frames, dim, generator=generator)
    lmbda = 0.5 * dim * NOISE**2  # half the expected squared noise of one frame
    return features, codebook, lmbda


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    return interleaved_medians({"": fn}, repeats)[""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15, help="rounds per measurement; the median is shown")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="device of features and codebook (the DP runs on the CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    compiled = _compiled_viterbi()
    numba_version = importlib.metadata.version("numba") if compiled else "not installed: its columns are empty"
    print(
        f"device {device}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}, numba {numba_version}; "
        f"medians of {args.repeats} rounds ({max(1, args.repeats // 5)} for the original)"
    )

    header = (
        f"{'T':>5} {'K':>5} {'D':>5} {'segs':>4} | {'dist ms':>7} | {'DP ms: numpy':>12} {'numba':>6} | "
        f"{'call ms: numpy':>14} {'/dist':>5} {'numba':>6} {'/dist':>5} | "
        f"{'original ms':>11} {'its DP ms':>9} | {'speed-up':>8} {'DP only':>7} | same cost, units"
    )
    print(header)
    print("-" * len(header))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for num_frames, k, dim in SIZES:
        features, codebook, lmbda = speech_like(num_frames, k, dim)
        features, codebook = features.to(device), codebook.to(device)

        def distances_only():
            distances = _frame_distances(features, codebook, None)
            sync()
            return distances

        def call_with(numba: bool) -> Callable[[], torch.Tensor]:
            def call():
                os.environ[NUMBA_ENV] = "1" if numba else "0"
                return dpdp(features, codebook, lmbda)

            return call

        def original():
            units = original_dpdp(features, codebook, lmbda)
            sync()
            return units

        def original_distances_only():
            distances = torch.cdist(features, codebook, p=2.0) ** 2
            sync()
            return distances

        distances = distances_only()
        ours = {"numpy": call_with(numba=False)()}  # also warm-up runs
        measured = {
            "distances": distances_only,
            "numpy DP": lambda: _viterbi_numpy(distances, lmbda),
            "numpy call": call_with(numba=False),
        }
        if compiled:
            ours["numba"] = call_with(numba=True)()  # compiles on the first call ever, then loads the cache
            measured |= {"numba DP": lambda: compiled(distances, lmbda), "numba call": call_with(numba=True)}
        reference, _ = original(), original()  # TorchScript optimises during its first runs
        t = interleaved_medians(measured, args.repeats)
        t_original = median_seconds(original, max(1, args.repeats // 5))
        t_original_dp = t_original - median_seconds(original_distances_only, args.repeats)
        os.environ.pop(NUMBA_ENV)

        default = "numba" if compiled else "numpy"
        theirs = sum(dpdp_cost(features, codebook, reference, lmbda))
        costs = [sum(dpdp_cost(features, codebook, units, lmbda)) for units in ours.values()]
        same_cost = all(abs(cost - theirs) <= 1e-9 * abs(theirs) for cost in costs)
        identical = all(torch.equal(units, reference) for units in ours.values())
        segments = torch.unique_consecutive(ours["numpy"]).numel()

        def ms(name: str, width: int) -> str:
            return f"{1e3 * t[name]:>{width}.2f}" if name in t else " " * width

        def ratio(name: str) -> str:
            return f"{t[name] / t['distances']:>5.2f}" if name in t else " " * 5

        print(
            f"{num_frames:>5} {k:>5} {dim:>5} {segments:>4} | {ms('distances', 7)} | "
            f"{ms('numpy DP', 12)} {ms('numba DP', 6)} | "
            f"{ms('numpy call', 14)} {ratio('numpy call')} {ms('numba call', 6)} {ratio('numba call')} | "
            f"{1e3 * t_original:>11.1f} {1e3 * t_original_dp:>9.1f} | "
            f"{t_original / t[f'{default} call']:>7.0f}x {t_original_dp / t[f'{default} DP']:>6.0f}x | "
            f"{'yes' if same_cost else f'NO ({costs} vs {theirs})'}, {'identical' if identical else 'differ'}"
        )


if __name__ == "__main__":
    main()
