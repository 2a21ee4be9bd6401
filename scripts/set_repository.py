"""Point the Colab badges and install cells at the GitHub repository that hosts this project.

Until the project is published, README.md and every notebook's install cell name the placeholder
``OWNER/dp-slm``. Run this once in the published clone and commit the result:

    python scripts/set_repository.py your-account/dp-slm

Every occurrence is replaced in README.md and notebooks/*.ipynb (text only: the notebooks stay valid
JSON, nothing else changes); the script says how many it replaced per file and refuses a name that is
not ``account/repository``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PLACEHOLDER = "OWNER/dp-slm"
ROOT = Path(__file__).resolve().parent.parent


def files_to_update(root: Path = ROOT) -> list[Path]:
    """README.md and the notebooks: every file that names the repository."""
    return [root / "README.md", *sorted((root / "notebooks").glob("*.ipynb"))]


def set_repository(name: str, root: Path = ROOT) -> dict[str, int]:
    """Replace :data:`PLACEHOLDER` by ``name`` (``account/repository``) -> replacements per file name."""
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}", name):
        raise ValueError(f"expected a GitHub repository as account/repository, got {name!r}")
    counts = {}
    for path in files_to_update(root):
        text = path.read_text(encoding="utf-8")
        counts[path.name] = text.count(PLACEHOLDER)
        if counts[path.name]:
            path.write_text(text.replace(PLACEHOLDER, name), encoding="utf-8")
    return counts


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[0], "\nusage: python scripts/set_repository.py ACCOUNT/REPOSITORY", file=sys.stderr)
        return 2
    try:
        counts = set_repository(argv[0])
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name, count in counts.items():
        print(f"{count:3d}  {name}")
    if not sum(counts.values()):
        print(f"nothing to replace: no {PLACEHOLDER!r} left (already set?)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
