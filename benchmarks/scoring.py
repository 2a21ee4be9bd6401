"""Unit-LM scoring speed at the released size: N utterances batched vs one at a time.

ZeroSpeech scoring runs the unit LM once over each of tens of thousands of short unit sequences.
The model is built in memory at the released size (dim 1024, 12 layers, 16 heads, hidden 4096,
vocab k + 1 with k = 500) with random weights; the N sequences have random units and lengths drawn
uniformly from ``--min-units``..``--max-units`` (by default 8-60: from short words to short
sentences). Both ways must give the same log-likelihoods, and the script checks that. The two
ways alternate ``--repeats`` times and the best time of each counts.

    python benchmarks/scoring.py                    # N = 64, batch 32, best of 3
    python benchmarks/scoring.py --min-units 5 --max-units 15   # sWUGGY-like: words
    python benchmarks/scoring.py --n 32 --quick     # a smoke test
"""

from __future__ import annotations

import argparse
import time

import torch

from dpslm_utils.transformer import RELEASED_DIMS, ModelArgs, Transformer
from dpslm_utils.ulm import UnitLM

K = 500


def interleaved_best_of(repeats: int, runs: dict) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Time each run ``repeats`` times, alternating between them (a busy machine slows both alike); keep the best."""
    best, results = {name: float("inf") for name in runs}, {}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            results[name] = run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="number of utterances")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--min-units", type=int, default=8)
    parser.add_argument("--max-units", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="one repeat")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats

    torch.manual_seed(0)
    ulm = UnitLM(Transformer(ModelArgs(**RELEASED_DIMS, vocab_size=K + 1), output_bias=False)).eval()
    lengths = torch.randint(args.min_units, args.max_units + 1, (args.n,)).tolist()
    sequences = [torch.randint(0, K, (n,)) for n in lengths]

    times, results = interleaved_best_of(repeats, {
        "one": lambda: [ulm.loglikelihood(s) for s in sequences],
        "batched": lambda: ulm.loglikelihood_batch(sequences, batch_size=args.batch_size),
    })
    (one_time, one), (batch_time, batched) = ((times[n], results[n]) for n in ("one", "batched"))
    largest = max(abs(a - b) / max(1.0, abs(a)) for a, b in zip(one, batched))
    assert largest < 1e-4, f"batched and one-by-one log-likelihoods differ (relative {largest:.2e})"

    units = sum(lengths)
    print(f"CPU, {torch.get_num_threads()} threads, float32, released size, k={K}: {args.n} utterances, "
          f"{units} units ({args.min_units}-{args.max_units} each), best of {repeats}")
    print(f"| way | time | utterances/s | units/s |\n| --- | ---: | ---: | ---: |")
    for name, seconds in (("one at a time", one_time), (f"batched ({args.batch_size})", batch_time)):
        print(f"| {name} | {seconds:.2f} s | {args.n / seconds:.1f} | {units / seconds:.0f} |")
    print(f"speed-up: {one_time / batch_time:.1f}x; largest relative difference {largest:.1e}")


if __name__ == "__main__":
    main()
