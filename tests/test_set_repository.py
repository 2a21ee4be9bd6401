"""scripts/set_repository.py: one command points every badge and install cell at the published repository."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
spec = importlib.util.spec_from_file_location("set_repository", ROOT / "scripts" / "set_repository.py")
set_repository = importlib.util.module_from_spec(spec)
spec.loader.exec_module(set_repository)


@pytest.fixture
def copy_of_repo(tmp_path):
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    return tmp_path


def test_every_notebook_has_a_badge_and_an_install_cell_with_the_placeholder():
    readme = (ROOT / "README.md").read_text()
    for notebook in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        badge = f"colab.research.google.com/github/{set_repository.PLACEHOLDER}/blob/main/notebooks/{notebook.name}"
        assert badge in readme, f"README has no Colab badge for {notebook.name}"
        assert f"git+https://github.com/{set_repository.PLACEHOLDER}" in notebook.read_text()


def test_set_repository_replaces_every_placeholder_and_keeps_notebooks_valid(copy_of_repo):
    counts = set_repository.set_repository("someone/dp-slm", copy_of_repo)
    assert counts["README.md"] > 10 and all(counts[p.name] >= 1 for p in (ROOT / "notebooks").glob("0*.ipynb"))
    for path in set_repository.files_to_update(copy_of_repo):
        text = path.read_text()
        assert set_repository.PLACEHOLDER not in text
        if path.suffix == ".ipynb":
            json.loads(text)
    assert "colab.research.google.com/github/someone/dp-slm/blob/main/notebooks/00_start_here.ipynb" in (
        copy_of_repo / "README.md").read_text()


@pytest.mark.parametrize("name", ["dp-slm", "a/b/c", "-bad/dp-slm", "someone/", "some one/dp-slm"])
def test_set_repository_refuses_names_that_are_not_account_slash_repository(copy_of_repo, name):
    before = (copy_of_repo / "README.md").read_text()
    with pytest.raises(ValueError, match="account/repository"):
        set_repository.set_repository(name, copy_of_repo)
    assert (copy_of_repo / "README.md").read_text() == before
