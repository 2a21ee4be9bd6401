"""Download, verify and cache the official files; the one switch to random tiny weights.

Every loader in this package has the same two entry points:

* ``Class.from_checkpoint(path)`` reads an official file (always ``torch.load(weights_only=True)``);
* ``Class.from_pretrained(...)`` = registry lookup + :func:`load_pretrained` (which calls
  ``from_checkpoint`` on the right file and marks the model's ``random_weights``).

:func:`pretrained_path` is where the ``DPSLM_WEIGHTS`` switch lives. With ``DPSLM_WEIGHTS=random-tiny``
it does not download anything: the random-tiny writer of the checkpoint's family builds a small, seeded,
random model of the real architecture and saves it *in the official file format*, and that file goes to
the very same ``from_checkpoint`` code that reads the real release. This module knows no writer: they are
registered in :data:`RANDOM_WRITERS` by the module that defines them (:mod:`dpslm_utils.random_tiny`,
which sits above every stage), found through its entry point (:data:`RANDOM_WRITERS_GROUP`).

:func:`describe` is the one ``repr`` format of the loaded models; it says when their weights are random.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import pickle
import secrets
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import torch

from .checks import check_file
from .registry import RemoteFile

WEIGHTS_ENV = "DPSLM_WEIGHTS"
CACHE_ENV = "DPSLM_CACHE"
WEIGHT_MODES = ("pretrained", "random-tiny")
RANDOM_WEIGHTS_MESSAGE = "RANDOM WEIGHTS (DPSLM_WEIGHTS=random-tiny): outputs carry no meaning"

Model = TypeVar("Model")

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint could not be downloaded, verified or read."""


def weights_mode() -> str:
    """``"pretrained"`` (default) or ``"random-tiny"``, from the ``DPSLM_WEIGHTS`` environment variable."""
    mode = os.environ.get(WEIGHTS_ENV, "").strip() or "pretrained"
    if mode not in WEIGHT_MODES:
        raise ValueError(f"{WEIGHTS_ENV}={mode!r} is not understood; use one of {list(WEIGHT_MODES)}")
    return mode


def using_random_weights() -> bool:
    """True when loaders build small random models instead of downloading the released ones."""
    return weights_mode() == "random-tiny"


def cache_dir() -> Path:
    """``$DPSLM_CACHE`` if set, else the platform's user cache directory + ``/dpslm``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "dpslm" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "dpslm"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dpslm"


def sha256_of(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _matches(remote: RemoteFile, digest: str) -> bool:
    return remote.sha256 is None or digest.startswith(remote.sha256)


def download(remote: RemoteFile, progress: bool = True) -> Path:
    """Return the verified local copy of ``remote``, downloading it into :func:`cache_dir` if needed.

    A file's SHA-256 is checked once, when it arrives (or is first found in the cache); its size and
    modification time are then remembered in a small ``.<name>.verified`` file beside it, and it is
    hashed again only when they change. A cached file whose SHA-256 does not match is deleted and
    fetched again. Downloads go to a temporary file in the cache directory that is renamed only once
    it is complete and verified, so a failed download never leaves a half-written file under the
    final name. Errors (no network, disk full, no permission) are CheckpointErrors that say which.
    """
    target = cache_dir() / remote.filename
    if _cached_and_verified(remote, target):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_temporary(target)
    except OSError as e:
        raise CheckpointError(_unwritable_cache_message(target.parent, e)) from e
    try:
        digest = _fetch(remote.url, tmp, remote.filename, progress)
        if not _matches(remote, digest):
            raise CheckpointError(
                f"downloaded {remote.url} but its SHA-256 {digest} does not start with "
                f"{remote.sha256}; the file was discarded"
            )
        os.replace(tmp, target)
        _remember_verified(target, digest)
    except Unreachable as e:
        raise CheckpointError(
            f"could not download {remote.url} ({e.__cause__}).\n"
            f"Without network access, download it elsewhere and place it at:\n    {target}\n"
            f"(or set {CACHE_ENV} to the folder that holds it), or run offline with random weights: "
            f"{WEIGHTS_ENV}=random-tiny"
        ) from e.__cause__
    except OSError as e:  # writing, not reading: disk full, no permission, read-only file system
        raise CheckpointError(f"could not save {remote.filename} in {target.parent}: {e.strerror or e}") from e
    finally:
        tmp.unlink(missing_ok=True)
    return target


class Unreachable(Exception):
    """Reading a URL failed (network, server or URL); the cause is attached. Writing failures stay OSError."""


def open_url(request: str | urllib.request.Request, urlopen: Callable | None = None) -> Any:
    """``urlopen(request)`` (default ``urllib.request.urlopen``), every failure to reach it raised as :class:`Unreachable`."""
    try:
        return (urlopen or urllib.request.urlopen)(request, timeout=60)
    except (OSError, http.client.HTTPException) as e:  # URLError and timeouts are OSErrors
        raise Unreachable() from e


def copy_response(response: Any, out: BinaryIO, name: str, progress: bool, done: int = 0,
                  digest: Any = None) -> None:
    """Stream ``response`` into ``out`` (and ``digest``), with a progress bar that starts at ``done`` bytes.

    Failures to read become :class:`Unreachable`; failures to write (disk full, permission) stay OSError.
    """
    total = done + int(response.headers.get("Content-Length") or 0)
    with _progress_bar(total or None, name, progress) as bar:
        bar.update(done)
        while chunk := _read(response):
            out.write(chunk)
            if digest is not None:
                digest.update(chunk)
            bar.update(len(chunk))


def _fetch(url: str, tmp: Path, name: str, progress: bool) -> str:
    """Stream ``url`` into ``tmp`` and return its SHA-256 hex digest."""
    digest = hashlib.sha256()
    with open(tmp, "wb") as out, open_url(url) as response:
        copy_response(response, out, name, progress, digest=digest)
    return digest.hexdigest()


def _read(response: Any, size: int = 1 << 20) -> bytes:
    try:
        return response.read(size)
    except (OSError, http.client.HTTPException) as e:
        raise Unreachable() from e


def _unwritable_cache_message(folder: Path, error: OSError) -> str:
    return (f"cannot write to the cache directory {folder} ({error.strerror or error}); "
            f"set {CACHE_ENV} to a writable folder")


def _verified_record(target: Path) -> Path:
    return target.with_name(f".{target.name}.verified")


def _cached_and_verified(remote: RemoteFile, target: Path) -> bool:
    """True if ``target`` holds ``remote``'s bytes: from the remembered record while the file's size and
    mtime are unchanged, else by hashing it (and remembering). A corrupt file is deleted."""
    try:
        stat = target.stat()
    except FileNotFoundError:
        return False
    if target.is_dir():
        raise CheckpointError(f"{target} is a directory; the cache expects the file {remote.filename} there")
    remembered = _remembered_digest(target, stat)
    if remote.sha256 is None or (remembered is not None and _matches(remote, remembered)):
        return True
    try:
        digest = sha256_of(target)
    except FileNotFoundError:  # removed meanwhile, e.g. by another process cleaning it
        return False
    if _matches(remote, digest):
        _remember_verified(target, digest)
        return True
    log.warning("cached %s is corrupt (SHA-256 mismatch); downloading it again", target)
    try:
        target.unlink(missing_ok=True)  # another process may be removing it at the same time
    except OSError as e:
        raise CheckpointError(f"cannot remove the corrupt cached file {target}: {e.strerror or e}") from e
    return False


def _remembered_digest(target: Path, stat: os.stat_result) -> str | None:
    """The SHA-256 recorded for ``target`` if its size and mtime still match the record, else None."""
    try:
        record = json.loads(_verified_record(target).read_text())
        if (record["size"], record["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns):
            return str(record["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no usable record
    return None


def _remember_verified(target: Path, digest: str) -> None:
    """Record ``digest`` with the file's size and mtime; best effort (a read-only cache just re-hashes)."""
    try:
        stat = target.stat()
        record = json.dumps({"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
        write_atomically(_verified_record(target), lambda tmp: tmp.write_text(record))
    except OSError as e:
        log.debug("could not record the verification of %s: %s", target, e)


@contextlib.contextmanager
def _progress_bar(total: int | None, name: str, enabled: bool) -> Iterator[Any]:
    from tqdm.auto import tqdm

    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, disable=not enabled) as bar:
        yield bar


def load_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors that name the file."""
    path = check_file(path, "checkpoint")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty, not a PyTorch checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # torch's message suggests weights_only=False: never do that here
        if zipfile.is_zipfile(path):  # torch's format, with something in it that is not a tensor or plain value
            raise CheckpointError(f"{path} holds Python objects besides tensors and plain values: refused, "
                                  "as loading them could run code") from e  # fmt: skip
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (not in torch's file format)") from e
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {e}") from e


def require_keys(checkpoint: Any, keys: tuple[str, ...], path: str | os.PathLike, family: str) -> None:
    """Raise a CheckpointError unless ``checkpoint`` is a dict holding ``keys`` (the family's layout)."""
    found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in keys):
        raise CheckpointError(
            f"{path} is not a {family} checkpoint: expected a dict with keys {list(keys)}, found {found}"
        )


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place.

    Readers never see a half-written ``path``; if ``write`` fails, nothing is left behind, and an
    OSError (a full disk, a lost mount) names ``path``. The file gets the permissions of any new file
    (``0o666`` less the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temporary(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        message = f"could not write {path}: {e.strerror or e}"
        raise (OSError(e.errno, message) if e.errno else OSError(message)) from e  # same subclass: PermissionError, ...
    finally:
        tmp.unlink(missing_ok=True)


def _new_temporary(path: Path) -> Path:
    """Create an empty, uniquely named file ``.<name>.<random>.part`` beside ``path``.

    Not ``tempfile.mkstemp``: its files are private (0600), and the rename would keep that.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return tmp


def leftover_temporaries(path: Path) -> list[Path]:
    """The temporary files of :func:`write_atomically` for ``path`` that a killed process left behind.

    Only the writer of ``path`` may remove them, and only while no other process writes it (e.g. under a lock).
    """
    return sorted(Path(path).parent.glob(f".{Path(path).name}.*.part"))


def save_atomically(obj: Any, path: Path) -> None:
    """``torch.save(obj)`` to ``path`` via :func:`write_atomically`."""

    def save(tmp: Path) -> None:
        with tmp.open("wb") as f:  # through a Python file: a full disk is an OSError, not a C++ RuntimeError
            torch.save(obj, f)

    write_atomically(path, save)


RandomWriter = Callable[..., None]
"""``writer(path, **arguments)``: writes a small random checkpoint of one family, in that family's official format."""

RANDOM_WRITERS: dict[str, RandomWriter] = {}
"""Checkpoint family -> its random-tiny writer, filled by :func:`register_random_writers`."""

RANDOM_WRITERS_GROUP = "dpslm_utils.random_writers"
"""The entry point group of the modules that register random-tiny writers when imported. This package
declares :mod:`dpslm_utils.random_tiny` there (``pyproject.toml``), so the loader finds the writers
without importing the test models itself, whichever module a program starts from."""


def register_random_writers(writers: Mapping[str, RandomWriter]) -> None:
    """Add ``{family: writer}`` to :data:`RANDOM_WRITERS` (a writer module calls this when imported)."""
    RANDOM_WRITERS.update(writers)


def random_writer(family: str) -> RandomWriter:
    """The random-tiny writer of checkpoint ``family``; on a first miss, the modules of :data:`RANDOM_WRITERS_GROUP`
    are imported (they register theirs). ValueError names the known families if none writes ``family``."""
    if family not in RANDOM_WRITERS:
        for entry_point in metadata.entry_points(group=RANDOM_WRITERS_GROUP):
            entry_point.load()
    if family not in RANDOM_WRITERS:
        missing = "" if RANDOM_WRITERS else (
            f" (no installed package declares the entry point group {RANDOM_WRITERS_GROUP!r}: reinstall "
            "dpslm-utils, e.g. `pip install -e .` in a checkout, or import dpslm_utils.random_tiny first)")
        raise ValueError(f"no random-tiny writer for checkpoint family {family!r}; known: {sorted(RANDOM_WRITERS)}{missing}")
    return RANDOM_WRITERS[family]


@contextlib.contextmanager
def pretrained_path(remote: RemoteFile, family: str, **arguments: Any) -> Iterator[Path]:
    """Yield the path of the checkpoint a ``from_pretrained`` call should read.

    Pretrained mode: the verified, cached download of ``remote``. Random-tiny mode: a seeded random
    checkpoint of the same ``family`` in the same official format (its :func:`random_writer` with
    ``arguments``), in a temporary file that is removed again after the caller has loaded it.
    """
    if not using_random_weights():
        yield download(remote)
        return
    write = random_writer(family)
    with tempfile.TemporaryDirectory(prefix="dpslm-random-tiny-") as tmp:
        path = Path(tmp) / remote.filename
        write(path, **arguments)
        _announce_random_weights()
        yield path


_random_weights_announced = False


def _announce_random_weights() -> None:
    """Warn once per process, in one line, that the models are random (a notebook cell loading 24
    models would otherwise show 24 warnings)."""
    global _random_weights_announced
    if not _random_weights_announced:
        _random_weights_announced = True
        log.warning("%s; every model this process loads is a small random stand-in (said once)", RANDOM_WEIGHTS_MESSAGE)


def load_pretrained(load: Callable[[Path], Model], remote: RemoteFile, family: str, **arguments: Any) -> Model:
    """``load(path)`` on the file :func:`pretrained_path` gives, with ``random_weights`` set on the result.

    The one ``from_pretrained`` sequence of every model class: ``remote`` comes from the registry,
    ``load`` is the class's ``from_checkpoint`` (with the caller's options bound), ``family`` and
    ``arguments`` say which random-tiny checkpoint stands in for ``remote`` offline.
    """
    with pretrained_path(remote, family, **arguments) as path:
        model = load(path)
    model.random_weights = using_random_weights()
    return model


def describe(model: Any, **fields: Any) -> str:
    """The one ``repr`` format of the loaded models: ``Name(field=value, ..., parameters=1.2M)``.

    Appends the parameter count (for modules that have parameters) and, for random-tiny models,
    :data:`RANDOM_WEIGHTS_MESSAGE`.
    """
    if isinstance(model, torch.nn.Module) and (parameters := sum(p.numel() for p in model.parameters())):
        fields["parameters"] = f"{parameters / 1e6:.2f}M"
    text = ", ".join(f"{name}={value}" for name, value in fields.items())
    note = f", {RANDOM_WEIGHTS_MESSAGE}" if getattr(model, "random_weights", False) else ""
    return f"{type(model).__name__}({text}{note})"
