"""Unit-LM scoring speed at the released size: N utterances batched vs one at a time.

ZeroSpeech scoring runs the unit LM once over each of tens of thousands of short unit sequences.
The model is built in memory at the released size (dim 1024, 12 layers, 16 heads, hidden 4096,
vocab k + 1 with k = 500) with random weights; the N sequences have random units and lengths drawn
uniformly from ``--min-units``..``--max-units`` (sWUGGY words to sBLIMP sentences at about 15-25
units per second). Both ways must give the same log-likelihoods, and the script checks that.

    python benchmarks/scoring.py                    # N = 64, batch 32, best of 3
    python benchmarks/scoring.py --n 32 --quick     # a smoke test
"""

from __future__ import annotations

import argparse
import time

import torch

from dpslm_utils.transformer import RELEASED_DIMS, ModelArgs, Transformer
from dpslm_utils.ulm import UnitLM

K = 500


def best_of(repeats: int, run) -> tuple[float, list[float]]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return min(times), result


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

    one_time, one = best_of(repeats, lambda: [ulm.loglikelihood(s) for s in sequences])
    batch_time, batched = best_of(repeats, lambda: ulm.loglikelihood_batch(sequences, batch_size=args.batch_size))
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
