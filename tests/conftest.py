"""Shared test helpers: fixture paths and an isolated cache per test session."""

import json
import socket
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"


def load_fixture(name: str):
    """Load ``tests/fixtures/<name>`` the way the fixture README prescribes."""
    return torch.load(FIXTURES / name, map_location="cpu", weights_only=True)


def notebook_cells(path: Path) -> list[tuple[str, str, dict]]:
    """``(cell_type, source text, cell)`` of every cell of the notebook at ``path``."""
    return [(cell["cell_type"], "".join(cell["source"]), cell) for cell in json.loads(path.read_text())["cells"]]


def cli_subcommands() -> dict:
    """``dpslm``'s subcommands: name -> the argparse parser of each."""
    from dpslm_utils import cli

    return cli.build_parser()._subparsers._group_actions[0].choices


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for torch.distributed rendezvous in tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunsCode:
    """Unpickling this runs code (it creates ``marker``): what a crafted file does to ``torch.load(weights_only=False)``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The test models are tiny: one thread is as fast, and on a busy CPU spinning threads cost 3-10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's real cache: every test sees an empty DPSLM_CACHE of its own."""
    monkeypatch.setenv("DPSLM_CACHE", str(tmp_path_factory.mktemp("dpslm-cache")))


@pytest.fixture
def random_tiny(monkeypatch):
    """Run the test with DPSLM_WEIGHTS=random-tiny."""
    monkeypatch.setenv("DPSLM_WEIGHTS", "random-tiny")
