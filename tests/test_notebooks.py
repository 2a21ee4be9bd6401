"""The course conventions every notebook 00-09 keeps (the cells themselves run under nbval in CI)."""

import json
import os
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("0[0-9]_*.ipynb"))


def cells(path):
    return [(cell["cell_type"], "".join(cell["source"]), cell) for cell in json.loads(path.read_text())["cells"]]


def test_the_course_has_notebooks_00_to_09():
    assert [path.name[:2] for path in NOTEBOOKS] == [f"0{i}" for i in range(10)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_conventions(path):
    notebook = cells(path)
    code = [text for kind, text, _ in notebook if kind == "code"]
    markdown = [text for kind, text, _ in notebook if kind == "markdown"]
    assert not any(cell.get("outputs") for kind, _, cell in notebook if kind == "code"), "commit without outputs"
    ids = [cell.get("id") for _, _, cell in notebook]
    assert None not in ids and len(set(ids)) == len(ids), "every cell has its own id (nbformat 4.5)"
    assert 'find_spec("dpslm_utils") is None' in code[0], "the first code cell is the Colab install cell"
    assert markdown[-1].startswith("## References") and "arXiv:2505.23494" in markdown[-1]
    assert any(text.startswith("## Summary") or "\n## Summary" in text for text in markdown)
    assert sum(text.count("Predict, then") for text in markdown) >= 2
    assert any("<details>" in text for text in markdown), "exercises with folded solutions"
    assert not any(re.search(r"^import dpslm_utils$", text, flags=re.M) for text in code), "alias: import dpslm_utils as dpslm"
    assert not any("plot_kl_grid" in text for _, text, _ in notebook)


def test_notebook_09_removes_its_work_folder_when_the_kernel_shuts_down(tmp_path):
    """Its setup cell (imports + the folder every file of the notebook goes to) in a real kernel; a
    JupyterLab shutdown or restart is a shutdown request, after which nothing may stay in TMPDIR."""
    jupyter_client = pytest.importorskip("jupyter_client")
    path = next(path for path in NOTEBOOKS if path.name.startswith("09_"))
    (setup,) = [text for kind, text, _ in cells(path) if kind == "code" and "\nwork = " in "\n" + text]
    manager = jupyter_client.KernelManager(kernel_name="python3")
    manager.start_kernel(env={**os.environ, "TMPDIR": str(tmp_path), "DPSLM_WEIGHTS": "random-tiny"})
    client = manager.client()
    try:
        client.start_channels()
        client.wait_for_ready(timeout=60)
        reply = client.execute_interactive(setup + "\n(work / 'units').mkdir()", timeout=120)
        assert reply["content"]["status"] == "ok", reply["content"]
        assert len(list(tmp_path.glob("dpslm_09_*"))) == 1
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=False)
    assert not list(tmp_path.glob("dpslm_09_*"))


def _markdown_text(nodes):
    """Every plain-text piece of a parsed Markdown tree (mistune's AST, as nbconvert parses cells)."""
    for node in nodes:
        if node.get("type") == "text":
            yield node["raw"]
        yield from _markdown_text(node.get("children", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_markdown_code_spans_render_whole(path):
    """A backtick left in the rendered text is a broken code span, e.g. one wrapped onto a line that
    starts with `+ 1`` and so renders as a bullet."""
    mistune = pytest.importorskip("mistune")
    parse = mistune.create_markdown(renderer=None)
    broken = [(cell["id"], text) for kind, source, cell in cells(path) if kind == "markdown"
              for text in _markdown_text(parse(source)) if "`" in text]
    assert not broken, f"code spans that do not render (cell id, rendered text): {broken}"
