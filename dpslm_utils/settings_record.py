"""What made an output folder or a cached file, so that nothing stale is ever reused.

Two mechanisms, one idea (a result is reused only while everything that determined it is unchanged):

- :func:`check_settings`: ``encode`` with λ = 600 into a folder that holds λ = 3000 units would
  otherwise keep the old files (they already exist) and mix both. Every command that fills a folder
  resumably calls it first: the first run writes ``dpslm_settings.json``, later runs must match it.
  A training run's ``config.json`` is checked the same way (:func:`recorded_settings`).
- :class:`FileCache`: files made one per input file (units, ABX features) are keyed by the input's
  size and modification time and by the settings (the model's identity included, see
  :func:`model_identity`); a changed input or other settings make the file again.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

from .checkpoints import write_atomically

RECORD_NAME = "dpslm_settings.json"
INFORMATIONAL = ("package_version",)
"""Recorded but not compared: a newer package may resume an older run."""


class SettingsMismatch(ValueError):
    """The folder was filled with other settings."""


def package_version() -> str:
    try:
        return metadata.version("dpslm-utils")
    except metadata.PackageNotFoundError:
        return "unknown"


def check_settings(out_dir: str | os.PathLike, command: str, settings: dict, write: bool = True,
                   partial: bool = False) -> None:
    """Refuse ``out_dir`` if it was filled by another command or other settings; else record them.

    ``settings`` holds JSON values (numbers, strings, None). ``write=False`` only checks (for every
    rank but the one that writes). ``partial=True`` compares only the settings given (a check before
    the model is loaded; the full check follows). Raises :class:`SettingsMismatch` naming each
    differing setting.
    """
    out_dir = Path(out_dir)
    record = {"command": command, **settings, "package_version": package_version()}
    path = out_dir / RECORD_NAME
    previous = recorded_settings(path, record, "the output of other settings",
                                 "choose another output folder, or delete that one to start over", INFORMATIONAL, partial)  # fmt: skip
    if previous is None and write:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))


def recorded_settings(path: Path, settings: dict, other: str, remedy: str, may_change=(), partial: bool = False) -> dict | None:
    """The settings recorded in the JSON file ``path`` (None if there is none), which must equal ``settings``.

    Raises :class:`SettingsMismatch` if the file is unreadable, or naming each differing setting
    (``"{folder} holds {other} (k: 100 there, 200 now): {remedy}"``). Settings in ``may_change`` may
    differ; ``partial=True`` compares only the settings given. The one check behind :func:`check_settings`
    and a training run's ``config.json`` (:class:`dpslm_utils.training.TrainingRun`).
    """
    if not path.exists():
        return None
    try:
        previous = json.loads(path.read_text())
        if not isinstance(previous, dict):
            raise ValueError(f"a JSON {type(previous).__name__}, not an object")
    except (OSError, ValueError) as e:
        raise SettingsMismatch(f"{path} is unreadable ({e}): {remedy}") from e
    differences = [f"{key}: {previous.get(key)!r} there, {settings.get(key)!r} now"
                   for key in sorted(set(settings) if partial else set(previous) | set(settings))
                   if key not in may_change and previous.get(key) != settings.get(key)]  # fmt: skip
    if differences:
        raise SettingsMismatch(f"{path.parent} holds {other} ({'; '.join(differences)}): {remedy}")
    return previous


# -- caches keyed by what determines their content --------------------------------------------------


def file_state(path: str | os.PathLike) -> dict:
    """What tells a changed file cheaply: its size and modification time (nanoseconds)."""
    stat = Path(path).stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def digest(value) -> str:
    """A short SHA-256 of a JSON value (keys sorted)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:24]


def model_identity(*parts) -> str:
    """A digest of the weights of modules and tensors: two checkpoints of one architecture differ in it.

    Each tensor contributes its name, shape, dtype and an evenly spaced sample of up to 4096 of its
    values: a few thousand values per tensor are read, not every weight of a WavLM Large.
    """
    import torch

    h = hashlib.sha256()
    for part in parts:
        h.update(type(part).__qualname__.encode())
        named = part.state_dict().items() if isinstance(part, torch.nn.Module) else [("", part)]
        for name, tensor in named:
            flat = tensor.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 4096)].to("cpu", torch.float64)
            h.update(f"{name} {tuple(tensor.shape)} {tensor.dtype} ".encode() + sample.numpy().tobytes())
    return h.hexdigest()[:24]


class FileCache:
    """Outputs made one per input file, reused only while the input and the settings are unchanged.

    An entry (``name``, e.g. the input's stem) is keyed by a digest of its input's :func:`file_state`
    and of ``settings`` (everything else that determines the output, the model's identity included).
    The keys are appended to ``folder/dpslm_cache.jsonl`` as entries are written, so an interrupted
    run resumes, while an entry whose input or settings changed, or whose key was never written, is
    made again::

        key = cache.key(path)               # before reading the input
        if not cache.holds(name, key, outputs):
            cache.forget(name)
            ...write outputs...
            cache.record(name, key)
    """

    INDEX = "dpslm_cache.jsonl"

    def __init__(self, folder: str | os.PathLike, settings: dict):
        self.folder, self._settings = Path(folder), digest(settings)
        self._keys: dict[str, str | None] = {}
        index = self.folder / self.INDEX
        for line in index.read_text(errors="replace").splitlines() if index.is_file() else []:
            try:
                entry = json.loads(line)
                self._keys[entry["name"]] = entry["key"]
            except (ValueError, KeyError, TypeError):  # a line torn by a crash: its entry is made again
                continue

    def key(self, source: str | os.PathLike) -> str:
        return digest([file_state(source), self._settings])

    def holds(self, name: str, key: str, outputs=()) -> bool:
        """Whether ``name`` was made with ``key`` and each of its ``outputs`` (paths) exists."""
        return self._keys.get(name) == key and all(Path(f).is_file() for f in outputs)

    def forget(self, name: str) -> None:
        """Mark ``name`` stale before its outputs are overwritten (a crash in between then cannot revive it)."""
        if self._keys.get(name) is not None:
            self._append(name, None)

    def record(self, name: str, key: str) -> None:
        """``name``'s outputs are written and were made with ``key``."""
        self._append(name, key)

    def _append(self, name: str, key: str | None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / self.INDEX, "a") as f:
            f.write(json.dumps({"name": name, "key": key}) + "\n")
        self._keys[name] = key
