"""Notebook 09's experiment, headless: features -> codebooks -> λ per rate -> tiny unit LMs -> pair accuracy.

The same library calls as the notebook (``dpslm_utils.toy_experiment.run_toy_experiment``), at any budget.
Writes ``results.json`` (the configuration, every condition's λ, bitrate, purity, PNMI and per-stage
accuracies with their item scores, the paired differences, the timings) and ``toy_experiment.png``
(accuracy against bitrate and against the seconds of speech seen) into ``--out``; the unit files and
training runs go to a temporary folder that is removed at the end.

    flock /tmp/bench.lock .venv/bin/python benchmarks/toy_experiment.py --out /tmp/toy-ci           # the notebook's budget
    flock /tmp/bench.lock .venv/bin/python benchmarks/toy_experiment.py --stages 100 200 300 --out /tmp/toy-long
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import torch  # noqa: E402

from dpslm_utils import plots, toy_experiment  # noqa: E402


def main() -> None:
    default = toy_experiment.NOTEBOOK_CONFIG
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json and toy_experiment.png")
    parser.add_argument("--features", nargs="+", default=list(default.features), help="feature_encoder names")
    parser.add_argument("--k", nargs="+", type=int, default=list(default.codebook_sizes), help="codebook sizes")
    parser.add_argument("--rates", nargs="+", type=float, default=list(default.units_per_second), help="units per second")
    parser.add_argument("--stages", nargs="+", type=int, default=list(default.stages), help="steps after each stage")
    parser.add_argument("--batch-size", type=int, default=default.batch_size)
    parser.add_argument("--seed", type=int, default=default.seed)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CI runs the notebooks on one)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    config = dataclasses.replace(default, features=tuple(args.features), codebook_sizes=tuple(args.k),
                                 units_per_second=tuple(args.rates), stages=tuple(args.stages),
                                 batch_size=args.batch_size, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dpslm-toy-experiment-") as work:
        conditions, timings = toy_experiment.run_toy_experiment(config, work)
    timings["total"] = time.perf_counter() - started
    path = toy_experiment.write_results(args.out / "results.json", conditions, config,
                                        timings={k: round(v, 1) for k, v in timings.items()},
                                        threads=args.threads, load_at_start=round(load, 1), torch=torch.__version__)
    axes = plots.plot_toy_experiment(conditions)
    axes[0][0].figure.savefig(args.out / "toy_experiment.png", dpi=100)
    print(f"\n{toy_experiment.describe_findings(conditions)}\n")
    print(", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items()) + f" (load {load:.1f} at start)")
    print(f"wrote {path} and {args.out / 'toy_experiment.png'}")


if __name__ == "__main__":
    main()
