"""Run time and peak memory of the notebooks with models at the released sizes (random weights).

The released checkpoints cannot be downloaded everywhere, but their sizes are known. This script
writes *random* checkpoints at the released sizes (WavLM Large, 1024-d 12-layer unit LM / ELLA-V,
WavTokenizer small) in the official formats, under the official file names, into a scratch
``DPSLM_CACHE``. Their SHA-256 cannot match the release, so it also writes the cache's
``.<name>.verified`` record for each of them: the cache accepts them for this scratch folder only
(the package itself is unchanged). Then it runs each chosen notebook with nbval in pretrained mode
under ``/usr/bin/time -v`` and prints wall time and peak memory.

The writers are seeded by their arguments, so the unit LMs (and the ELLA-Vs) of one k would hold
the same tensors for all six λ (only the archives' internal names would differ). By default the
first is written and the others are hard links to it: one file per k instead of six. The cache's
verified record is per name, and a hard link has its target's size and mtime, so each name is
accepted; each is still loaded from its own path, only the page cache is shared. ``--no-links``
writes every file (notebook 07: ~40 GB instead of ~8.5 GB).

Random weights make the generation cells' lengths differ from the real models' (the random ELLA-V's
end-of-unit bias is raised as in random-tiny, see ``random_tiny.ELLAV_EOP_BOOST``): treat their
share of the time as an estimate.

    python benchmarks/notebook_times.py 00 01 02 --threads 2 --timeout 480 --cache /tmp/dpslm-released
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dpslm_utils import checkpoints, random_tiny, registry  # noqa: E402
from dpslm_utils.transformer import RELEASED_DIMS  # noqa: E402
from dpslm_utils.wavlm import WAVLM_LARGE_CONFIG  # noqa: E402
from dpslm_utils.wavtokenizer import CONFIGS as WAVTOKENIZER_RELEASES  # noqa: E402

DEFAULT_PAIR = (registry.DEFAULT_K, registry.DEFAULT_LMBDA)
PAIRS_PER_NOTEBOOK: dict[str, list[tuple[int, int]]] = {
    "03": [DEFAULT_PAIR],
    "04": [DEFAULT_PAIR],
    "06": [DEFAULT_PAIR],
    "07": list(registry.VALID_COMBINATIONS),
    "08": [(500, lmbda) for lmbda in registry.VALID_LAMBDAS[500]],
}
"""The (k, λ) pairs whose unit LM and ELLA-V a notebook loads; every notebook gets WavLM Large,
all codebooks and both WavTokenizers (09 trains its own unit LMs and loads none)."""
PHONE_NOTEBOOKS = {"08"}
PRIORITY = ["00", "01", "02", "03", "05", "06", "04", "08", "09", "07"]


@contextlib.contextmanager
def released_sizes():
    """Make the random-tiny writers build the released architectures for the duration of the block."""
    saved = random_tiny.TRANSFORMER_DIMS, random_tiny.WAVLM_CONFIG, random_tiny.WAVTOKENIZER_CONFIGS
    random_tiny.TRANSFORMER_DIMS = RELEASED_DIMS
    random_tiny.WAVLM_CONFIG = dict(WAVLM_LARGE_CONFIG)
    random_tiny.WAVTOKENIZER_CONFIGS = WAVTOKENIZER_RELEASES
    try:
        yield
    finally:
        random_tiny.TRANSFORMER_DIMS, random_tiny.WAVLM_CONFIG, random_tiny.WAVTOKENIZER_CONFIGS = saved


def place(remote: registry.RemoteFile, family: str, written: dict[tuple, Path] | None, **arguments) -> None:
    """Write a released-size random ``family`` checkpoint as ``remote`` in the cache, marked verified.

    ``written`` maps (family, arguments) to the file already written with them, which holds the same
    tensors: ``remote`` becomes a hard link to it. ``None``: always write.
    """
    target = checkpoints.cache_dir() / remote.filename
    key = (family, tuple(sorted(arguments.items())))
    if not target.exists():
        if written is not None and key in written:
            os.link(written[key], target)
            print(f"  linked {remote.filename} to {written[key].name}")
        else:
            started = time.perf_counter()
            random_tiny.write(family, target, **arguments)
            size, seconds = target.stat().st_size / 1e9, time.perf_counter() - started
            print(f"  wrote {remote.filename} ({size:.2f} GB, {seconds:.0f} s)")
    if written is not None:
        written.setdefault(key, target)
    digest = (remote.sha256 or "").ljust(64, "0")  # any digest the registry's prefix accepts
    checkpoints._remember_verified(target, digest)


def build_cache(notebooks: list[str], links: bool = True) -> None:
    """Every file the chosen notebooks load, at the released sizes, in ``$DPSLM_CACHE``; with ``links``,
    the files of the same writer and arguments are hard links to one."""
    written: dict[tuple, Path] | None = {} if links else None
    with released_sizes():
        place(registry.WAVLM_LARGE, "wavlm", written)
        for k in registry.CODEBOOK_SIZES:
            place(registry.codebook_file(k), "codebook", written, k=k)
        for name, remote in registry.WAVTOKENIZER_FILES.items():
            place(remote, "wavtokenizer", written, name=name)
        pairs = sorted({pair for nb in notebooks for pair in PAIRS_PER_NOTEBOOK.get(nb, [])})
        for k, lmbda in pairs:
            place(registry.unit_lm_file(k, lmbda), "unit_lm", written, k=k)
            place(registry.ellav_file(k, lmbda), "ellav", written, k=k)
        if PHONE_NOTEBOOKS & set(notebooks):
            place(registry.PHONE_LM, "phone_lm", written)
            place(registry.PHONE_LM_TOKENIZER, "phone_lm_tokenizer", written)
            place(registry.ELLAV_PHONEMES, "phone_ellav", written)


def run_notebook(path: Path, threads: int, timeout: float) -> dict:
    """nbval over ``path`` under ``/usr/bin/time -v``: wall seconds, peak RSS (GB), outcome, and the
    slowest cells (pytest's ``--durations`` lines)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    env.pop(checkpoints.WEIGHTS_ENV, None)  # pretrained mode: the scratch cache's files
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env",
               "-p", "no:cacheprovider", "-q", "--durations=5", str(path)]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return {"wall": time.perf_counter() - started, "peak_gb": None, "outcome": "stopped", "slowest": []}
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", output)
    outcome = "passed" if process.returncode == 0 else f"failed (exit {process.returncode})"
    if process.returncode != 0:
        print(output[-3000:])
    return {"wall": time.perf_counter() - started, "peak_gb": int(peak.group(1)) / 1e6 if peak else None,
            "outcome": outcome, "slowest": re.findall(r"^[\d.]+s call .*$", output, re.MULTILINE)}


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {round(seconds % 60):02d} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", default=PRIORITY, help="notebook numbers (default: all, by priority)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/dpslm-released-sizes"), help="scratch DPSLM_CACHE")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=480, help="seconds before a notebook is stopped")
    parser.add_argument("--delete-cache", action="store_true", help="remove the scratch cache at the end")
    parser.add_argument("--no-links", action="store_true",
                        help="write every checkpoint (default: the six λ of one k share one file)")
    parser.add_argument("--cache-only", action="store_true", help="build the scratch cache, run no notebook")
    args = parser.parse_args()

    os.environ[checkpoints.CACHE_ENV] = str(args.cache)
    os.environ.pop(checkpoints.WEIGHTS_ENV, None)
    print(f"building the released-size cache in {args.cache}")
    build_cache(args.notebooks, links=not args.no_links)
    if args.cache_only:
        return

    rows = []
    for number in args.notebooks:
        (path,) = sorted((REPO / "notebooks").glob(f"{number}_*.ipynb"))
        load = os.getloadavg()[0]
        result = run_notebook(path, args.threads, args.timeout)
        wall = f"> {minutes(args.timeout)} (stopped)" if result["outcome"] == "stopped" else minutes(result["wall"])
        peak = f"{result['peak_gb']:.1f} GB" if result["peak_gb"] is not None else "-"
        rows.append((path.stem, wall, peak, result["outcome"], f"{load:.1f}"))
        print(f"{path.stem}: {wall}, peak {peak}, {result['outcome']}, load before {load:.1f}", flush=True)
        for line in result["slowest"]:
            print(f"  {line}")

    print("\n| notebook | wall time | peak memory | outcome | load (1 min) at start |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.delete_cache:
        shutil.rmtree(args.cache)


if __name__ == "__main__":
    main()
