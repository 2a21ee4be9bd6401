"""How long `download()` takes for a file already in the cache: hashed (first look) vs remembered.

    python benchmarks/cache.py --megabytes 1300 --repeats 3

A file of the given size (WavLM Large is 1.26 GB) is "published" as a file:// URL and downloaded
once. Then each repeat times a cache hit twice: after deleting the ``.verified`` record (the file
is hashed, as every load did before the record existed) and with the record (a stat and a small read).
"""

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path

from dpslm_utils import checkpoints
from dpslm_utils.registry import RemoteFile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=1300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ[checkpoints.CACHE_ENV] = str(Path(tmp) / "cache")
        source = Path(tmp) / "model-x.pt"
        digest = hashlib.sha256()
        with source.open("wb") as f:
            for _ in range(args.megabytes):
                block = os.urandom(1 << 20)
                f.write(block)
                digest.update(block)
        remote = RemoteFile(source.as_uri(), digest.hexdigest()[:8])
        cached = checkpoints.download(remote, progress=False)
        record = cached.with_name(f".{cached.name}.verified")
        hashed, remembered = [], []
        for _ in range(args.repeats):
            record.unlink()
            started = time.perf_counter()
            checkpoints.download(remote, progress=False)
            hashed.append(time.perf_counter() - started)
            started = time.perf_counter()
            checkpoints.download(remote, progress=False)
            remembered.append(time.perf_counter() - started)
    print(f"{args.megabytes} MB cached file, median of {args.repeats}: "
          f"hashed {statistics.median(hashed):.3f} s, remembered {1000 * statistics.median(remembered):.2f} ms")


if __name__ == "__main__":
    main()
