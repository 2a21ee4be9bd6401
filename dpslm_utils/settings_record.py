"""A record of the settings that made an output folder, so a re-run with other settings is refused.

``encode`` with λ = 600 into a folder that holds λ = 3000 units would otherwise keep the old files
(they already exist) and mix both. Every command that fills a folder resumably calls
:func:`check_settings` first: the first run writes ``dpslm_settings.json``, later runs must match it.
"""

from __future__ import annotations

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


def check_settings(out_dir: str | os.PathLike, command: str, settings: dict, write: bool = True) -> None:
    """Refuse ``out_dir`` if it was filled by another command or other settings; else record them.

    ``settings`` holds JSON values (numbers, strings, None). ``write=False`` only checks (for every
    rank but the one that writes). Raises :class:`SettingsMismatch` naming each differing setting.
    """
    out_dir = Path(out_dir)
    record = {"command": command, **settings, "package_version": package_version()}
    path = out_dir / RECORD_NAME
    if path.exists():
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise SettingsMismatch(f"{path} is unreadable ({e}); delete it or choose another output folder") from e
        differences = [f"{key}: {previous.get(key)!r} there, {record.get(key)!r} now"
                       for key in sorted(set(previous) | set(record))
                       if key not in INFORMATIONAL and previous.get(key) != record.get(key)]  # fmt: skip
        if differences:
            raise SettingsMismatch(f"{out_dir} holds the output of other settings ({'; '.join(differences)}). "
                                   "Choose another output folder, or delete that one to start over")
        return
    if write:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
