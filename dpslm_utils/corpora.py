"""The public evaluation corpora: where they are published, and a resumable, verified download.

``download_corpus(name)`` fetches an archive into :func:`data_dir` (``$DPSLM_DATA``), resuming an
interrupted download from its ``.part`` file, checks its MD5 where the publisher gives one, and
unpacks it. The archive appears under its final name only once it is complete and verified.

Unpacking merges into the folder and never deletes or replaces what is there: the archive is unpacked
into a hidden folder beside it, then each entry missing from the folder is moved in with one rename
(so a subset such as ``LibriSpeech/dev-clean`` appears whole or not at all), folders present on both
sides are merged, and files present on both sides are kept if identical. A file that exists with other
content refuses the whole extraction before anything moves. Two LibriSpeech subsets unpacked into one
folder thus share ``LibriSpeech/`` and keep every other subset that was already there.
"""

from __future__ import annotations

import filecmp
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
from .checks import first_few

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
    """Unpack into a hidden folder beside the archive, then merge it into ``folder`` (see :func:`_merge_tree`)."""
    marker = folder / f".{archive.name}.unpacked"
    if marker.is_file():
        return
    staging = folder / f".{archive.name}.unpacking"
    shutil.rmtree(staging, ignore_errors=True)  # our own, left by an interrupted run
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
        conflicts = _merge_conflicts(staging, folder)
        if conflicts:
            raise DownloadError(f"not unpacking {archive.name}: {first_few(conflicts, 5)}. Nothing in {folder} was changed: move those "
                                f"entries away, or unpack into another folder (--dir)")
        _merge_tree(staging, folder)
        marker.write_text("")
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as e:
        raise DownloadError(f"could not unpack {archive}: {e}") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _merge_conflicts(source: Path, destination: Path) -> list[str]:
    """What :func:`_merge_tree` would have to replace: each entry of ``source`` whose path exists in
    ``destination`` with other content (a file whose bytes differ, or a file where a folder is)."""
    conflicts = []
    for entry in sorted(source.iterdir()):
        there = destination / entry.name
        if not there.exists() and not there.is_symlink():
            continue
        if entry.is_dir() and there.is_dir():
            conflicts += _merge_conflicts(entry, there)
        elif entry.is_dir() or there.is_dir():
            conflicts.append(f"{there} exists and is {'a folder' if there.is_dir() else 'not a folder'}")
        elif not filecmp.cmp(entry, there, shallow=False):
            conflicts.append(f"{there} exists with other content")
    return conflicts


def _merge_tree(source: Path, destination: Path) -> None:
    """Move every entry of ``source`` into ``destination``; delete and replace nothing.

    An entry missing there moves with one rename (a whole subset folder at once); a folder present on
    both sides is merged entry by entry; a file present on both sides stays as it is (call
    :func:`_merge_conflicts` first: it must be identical). Entries only in ``destination`` stay.
    """
    for entry in sorted(source.iterdir()):
        there = destination / entry.name
        if not there.exists() and not there.is_symlink():
            os.replace(entry, there)
        elif entry.is_dir() and there.is_dir():
            _merge_tree(entry, there)
