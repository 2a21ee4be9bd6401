"""Time the weight-free path on the toy language: features, lambda_for_rate, and log-mel inversion.

    flock /tmp/bench.lock .venv/bin/python benchmarks/weight_free.py [--repeats 3] [--threads 1]

Prints, as medians over ``--repeats`` runs: MFCC and log-mel features of the toy language's training
split (400 utterances, about 8.6 minutes of audio); ``lambda_for_rate`` on those log-mel features
with the shipped k=100 codebook at 5, 10 and 20 units/s (with the number of DPDP passes each took
and the rate it reached); and ``invert`` (64 Griffin-Lim iterations) of the validation split's
log-mel features (40 utterances), as seconds per second of audio. Audio is read once, before timing.
"""

from __future__ import annotations

import argparse
import statistics

import torch

import dpslm_utils as dpslm
from dpslm_utils import quantize, rates

from timing import timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    toy = dpslm.load_toy_language()
    train = [dpslm.load_audio(u.path) for u in toy.train]
    validation = [dpslm.load_audio(u.path) for u in toy.validation]
    seconds = sum(w.shape[-1] / sr for w, sr in train)
    validation_seconds = sum(w.shape[-1] / sr for w, sr in validation)
    print(f"torch {torch.__version__}, {args.threads} thread(s), medians of {args.repeats}; "
          f"toy train: {len(train)} utterances, {seconds:.0f} s; validation: {len(validation)}, {validation_seconds:.0f} s")

    for name in ("mfcc", "fbank"):
        encoder = dpslm.feature_encoder(name)
        time = statistics.median(timed(lambda: [encoder(w, sr) for w, sr in train]) for _ in range(args.repeats))
        print(f"{name:>5} features of the train split: {time:.2f} s ({1000 * time / seconds:.2f} ms per second of audio)")

    fbank, codebook = dpslm.feature_encoder("fbank"), dpslm.feature_codebook("fbank")
    features = [fbank(w, sr) for w, sr in train]
    dpslm.dpdp(features[0], codebook, 0.0)  # compile numba once, outside the timings
    passes = 0
    real_dpdp_batch = quantize.dpdp_batch

    def counted(*a, **kw):
        nonlocal passes
        passes += 1
        return real_dpdp_batch(*a, **kw)

    rates.dpdp_batch = counted
    for target in (5.0, 10.0, 20.0):
        passes = 0
        lmbda = dpslm.lambda_for_rate(features, codebook, target)
        per_call = passes
        time = statistics.median(timed(lambda: dpslm.lambda_for_rate(features, codebook, target)) for _ in range(args.repeats))
        rate = dpslm.bitrate(real_dpdp_batch(features, codebook, lmbda)).units_per_second
        print(f"lambda_for_rate({target:g} units/s) on the train split: {time:.2f} s, {per_call} DPDP passes, "
              f"λ = {lmbda:.1f} -> {rate:.2f} units/s")
    rates.dpdp_batch = real_dpdp_batch

    log_mels = [fbank(w, sr) for w, sr in validation]
    time = statistics.median(timed(lambda: [fbank.invert(x) for x in log_mels]) for _ in range(args.repeats))
    print(f"invert (64 Griffin-Lim iterations) of the validation split: {time:.2f} s "
          f"({time / validation_seconds:.3f} s per second of audio)")


if __name__ == "__main__":
    main()
