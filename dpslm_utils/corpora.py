"""The public evaluation corpora: where they are published, and a resumable, verified download.

``download_corpus(name)`` fetches an archive into :func:`data_dir` (``$DPSLM_DATA``), resuming an
interrupted download from its ``.part`` file, checks its MD5 where the publisher gives one, and
unpacks it. The archive appears under its final name only once it is complete and verified; the
unpacked tree appears only once extraction has finished.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .checkpoints import Unreachable, cache_dir, copy_response, open_url

DATA_ENV = "DPSLM_DATA"


@dataclass(frozen=True)
class Corpus:
    """One published archive."""

    url: str
    md5: str | None
    """The publisher's MD5 of the archive (None where none is published)."""
    description: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


CORPORA: dict[str, Corpus] = {
    "librispeech-dev-clean": Corpus("https://www.openslr.org/resources/12/dev-clean.tar.gz",
                                    "42e2234ba48799c1f50f24a7926300a1", "LibriSpeech dev-clean, 5.4 h (337 MB)"),
    "librispeech-test-clean": Corpus("https://www.openslr.org/resources/12/test-clean.tar.gz",
                                     "32fa31d27d2e1cad72775fee3f4849a9", "LibriSpeech test-clean, 5.4 h (346 MB)"),
    "zerospeech-slm21": Corpus("https://download.zerospeech.com/datasets/sLM21.dataset.zip", None,
                               "ZeroSpeech 2021 sLM21: sWUGGY (lexical), sBLIMP (syntactic), ... (tens of GB)"),
    "abx-items": Corpus("https://dl.fbaipublicfiles.com/librilight/data/ABX_data.tgz", None,
                        "Libri-light ABX item files for LibriSpeech dev/test clean/other (small)"),
}


class DownloadError(RuntimeError):
    """A corpus could not be downloaded, verified or unpacked."""


def slm21_stand_in_dir() -> Path:
    """The project's tiny synthetic sLM21 set, shipped in the package: the official layout (``lexical/dev``
    and ``syntactic/dev`` with ``gold.csv``, ``lexical/test``), 16 kHz FLAC made with espeak-ng, 5 + 1
    word / non-word pairs and 4 sentence pairs. Enough to run the evaluation offline, far too few to
    measure anything; the real set is ``download_corpus("zerospeech-slm21")``."""
    return Path(__file__).resolve().parent / "data" / "slm21"


def data_dir() -> Path:
    """``$DPSLM_DATA`` if set, else ``<cache_dir()>/data``."""
    return Path(os.environ[DATA_ENV]).expanduser() if os.environ.get(DATA_ENV) else cache_dir() / "data"


def md5_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def download_corpus(corpus: str | Corpus, folder: str | os.PathLike | None = None, *, extract: bool = True,
                    progress: bool = True, urlopen: Callable | None = None) -> Path:
    """Download (resuming), verify and unpack one of :data:`CORPORA` into ``folder`` (default :func:`data_dir`).

    Returns the archive's path. An archive already in place is verified instead of fetched, so a
    file copied there by hand (e.g. on a machine without network) is used as it is.
    """
    if isinstance(corpus, str):
        if corpus not in CORPORA:
            raise ValueError(f"unknown corpus {corpus!r}; choose one of {sorted(CORPORA)}")
        corpus = CORPORA[corpus]
    folder = Path(folder) if folder is not None else data_dir()
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / corpus.filename
    if not archive.is_file():
        _fetch(corpus, archive, progress, urlopen)
    if corpus.md5 is not None and md5_of(archive) != corpus.md5:
        archive.unlink()
        raise DownloadError(f"{archive} does not have the published MD5 {corpus.md5}; it was deleted, "
                            f"download it again")
    if extract:
        _extract(archive, folder)
    return archive


def _fetch(corpus: Corpus, archive: Path, progress: bool, urlopen: Callable | None) -> None:
    """Download to ``<archive>.part`` (continuing it with an HTTP Range request), then rename."""
    partial = archive.with_name(archive.name + ".part")
    have = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(corpus.url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with open_url(request, urlopen) as response:
            resumed = have > 0 and getattr(response, "status", None) == 206
            with open(partial, "ab" if resumed else "wb") as out:
                copy_response(response, out, corpus.filename, progress, done=have if resumed else 0)
    except Unreachable as e:
        raise DownloadError(
            f"could not download {corpus.url} ({getattr(e.__cause__, 'reason', e.__cause__)}).\n"
            f"Without network access, download it elsewhere and place it at:\n    {archive}\n"
            f"then run the same command again: it verifies and unpacks the file. "
            f"(A partial download is kept in {partial.name} and resumed next time.)"
        ) from e.__cause__
    except OSError as e:  # writing, not reading: disk full, no permission, read-only file system
        raise DownloadError(f"could not save {partial.name} in {archive.parent}: {e.strerror or e}") from e
    os.replace(partial, archive)


def _extract(archive: Path, folder: Path) -> None:
    """Unpack into a hidden folder beside the archive, then move the top-level entries into place."""
    marker = folder / f".{archive.name}.unpacked"
    if marker.is_file():
        return
    staging = folder / f".{archive.name}.unpacking"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                for name in z.namelist():
                    if Path(name).is_absolute() or ".." in Path(name).parts:
                        raise DownloadError(f"{archive} holds an unsafe path {name!r}; not unpacked")
                z.extractall(staging)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as t:
                t.extractall(staging, filter="data")  # refuses absolute paths, "..", device files
        else:
            raise DownloadError(f"{archive} is neither a zip nor a tar archive")
        for entry in staging.iterdir():
            destination = folder / entry.name
            if destination.exists():
                shutil.rmtree(destination) if destination.is_dir() else destination.unlink()
            os.replace(entry, destination)
        marker.write_text("")
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as e:
        raise DownloadError(f"could not unpack {archive}: {e}") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
