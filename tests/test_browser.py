"""The explorers of notebooks 02 and 07 the way a learner meets them: JupyterLab in a real browser.

JupyterLab runs on 127.0.0.1 (a free port, a token, ``DPSLM_WEIGHTS=random-tiny``, a scratch cache and
scratch Jupyter folders) on copies of the two notebooks; Debian's Chromium, driven by Playwright for
Python through ``executable_path`` (Playwright's own browser download cannot work here), runs them
in a 1024 x 768 window with the file browser open, moves the controls and checks what appears: the
figure and the text change, every player has a source and a duration (02's weight-free resynthesis
too), nothing says "Error displaying widget" or shows a traceback, and nothing is cut off at that width.
On a failure a screenshot is saved (the message says where). ``DPSLM_CHROMIUM`` names another
Chromium. Without Chromium or Playwright the module is skipped, saying so; under CI (``CI=true``, where
``.ci/run`` installs Chromium) it fails instead.
"""

import contextlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
CHROMIUM = os.environ.get("DPSLM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1024, "height": 768}
RUN_ALL_SECONDS = 600  # one notebook, Run All (about 45 s each on an idle 2-core machine)
UPDATE_SECONDS = 120  # one control's effect (the explorers take 0.1-5 s; the machine may be busy)
TICK_PX = 10 * 100 / 72  # matplotlib's default tick labels (10 pt) in the explorers' 100-dpi PNGs

try:
    from playwright.sync_api import sync_playwright
except ImportError:
    sync_playwright = None
_missing = ("the playwright package is not installed (the dev extra has it)" if sync_playwright is None else
            "jupyterlab is not installed (the notebooks extra)" if not importlib.util.find_spec("jupyterlab") else
            f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)" if not Path(CHROMIUM).exists() else "")
if _missing and not os.environ.get("CI"):
    pytestmark = pytest.mark.skip(reason=f"browser test skipped: {_missing}")

# Every output of a cell: its text, MIME type, pictures and players (duration null until loaded).
OUTPUTS_JS = """cell => [...cell.querySelectorAll('.jp-OutputArea-child')].map(child => {
    const out = child.querySelector('.jp-OutputArea-output');
    return {text: out ? out.innerText : '', mime: out ? out.getAttribute('data-mime-type') : null,
            images: [...child.querySelectorAll('img')].map(img => img.src),
            audios: [...child.querySelectorAll('audio')].map(a => ({
                src: a.currentSrc || (a.querySelector('source') || a).src || '',
                duration: Number.isFinite(a.duration) ? a.duration : null}))};
})"""
# Widget texts that do not fit their box (the browser cuts them with "…"), and slider track widths.
CUT_TEXTS_JS = """cell => [...cell.querySelectorAll('.widget-label, .widget-button, .widget-toggle-button')]
    .filter(e => e.offsetParent !== null && e.scrollWidth > e.clientWidth + 1).map(e => e.innerText)"""
TRACKS_JS = "cell => [...cell.querySelectorAll('.slider-container')].map(e => e.getBoundingClientRect().width)"
# The players of a cell's first output with players: how many, how far the output scrolls, how many lie past its edge.
PLAYERS_FIT_JS = """cell => {
    const out = cell.querySelector('.jp-OutputArea-output audio').closest('.jp-OutputArea-output');
    const players = [...out.querySelectorAll('audio')], edge = out.getBoundingClientRect().right;
    return {count: players.length, overflow: out.scrollWidth - out.clientWidth,
            hidden: players.filter(a => a.getBoundingClientRect().right > edge + 1).length};
}"""

# How many rows the players of a cell take (the tops of their labelled boxes).
PLAYER_ROWS_JS = """cell => new Set([...cell.querySelectorAll('.jp-OutputArea-output audio')]
    .map(a => Math.round(a.parentElement.getBoundingClientRect().top))).size"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on 127.0.0.1 serving a scratch folder with copies of notebooks 02 and 07: (url, token, folder)."""
    if _missing:
        pytest.fail(f"the browser test must run in CI: {_missing}")
    import jupyterlab

    scratch = tmp_path_factory.mktemp("jupyterlab")
    root = scratch / "notebooks"
    root.mkdir()
    for name in ("02_dpdp_quantization.ipynb", "07_exploring_k_and_lambda.ipynb"):
        shutil.copy(NOTEBOOKS / name, root / name)
    settings = {  # every cell in the page, nothing written back to the copies, no news pop-up
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
        "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    }
    for plugin, values in settings.items():
        path = scratch / "settings" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = {**os.environ, "DPSLM_WEIGHTS": "random-tiny", "DPSLM_CACHE": str(scratch / "cache"), "OMP_NUM_THREADS": "1",
           "JUPYTER_CONFIG_DIR": str(scratch / "config"), "JUPYTER_DATA_DIR": str(scratch / "data"),
           "JUPYTER_RUNTIME_DIR": str(scratch / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(scratch / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(scratch / "workspaces"), "IPYTHONDIR": str(scratch / "ipython")}
    env.pop("MPLBACKEND", None)  # the kernel's inline backend, as for a learner
    # JupyterLab's pages and the widgets' extension, where pip put them (the venv may link to another prefix)
    shared = Path(jupyterlab.__file__).resolve().parents[4] / "share" / "jupyter"
    if (shared / "lab" / "static").is_dir():
        env |= {"JUPYTERLAB_DIR": str(shared / "lab"), "JUPYTER_PATH": str(shared)}
    port, token = free_port(), secrets.token_hex(16)
    url = f"http://127.0.0.1:{port}"
    with open(scratch / "jupyterlab.log", "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
             "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
             "--LabApp.expose_app_in_browser=True"],
            env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5).close()
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        log.flush()
                        tail = (scratch / "jupyterlab.log").read_text()[-3000:]
                        pytest.fail(f"JupyterLab did not start; the end of its log:\n{tail}")
                    time.sleep(0.5)
            yield url, token, scratch
        finally:
            server.terminate()  # shuts its kernels down
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()


@pytest.fixture(scope="module")
def browser(lab):
    """Chromium (a fresh profile) at a 1024 x 768 viewport."""
    _, _, scratch = lab
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(scratch / "chromium-profile", executable_path=CHROMIUM,
                                                                headless=True, args=CHROMIUM_FLAGS, viewport=VIEWPORT)
        context.set_default_timeout(60_000)
        yield context
        context.close()


@contextlib.contextmanager
def notebook_page(browser, name: str, folder: Path):
    """A new page for notebook ``name``. A failure inside gets a screenshot of the page, and its path
    in the message; at the end the notebook's kernel is shut down and the page closed."""
    page = browser.new_page()
    try:
        yield page
    except BaseException as error:
        path = folder / f"{Path(name).stem}.png"
        with contextlib.suppress(Exception):
            page.screenshot(path=path)
            error.add_note(f"screenshot of the browser: {path}")
        raise
    finally:
        with contextlib.suppress(Exception):
            page.evaluate("async () => await window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")
        page.close()


def open_and_run(page, lab, name: str):
    """Open notebook ``name`` in JupyterLab (a workspace of its own), Run All, and check that every cell
    ran without an error."""
    url, token, _ = lab
    page.goto(f"{url}/lab/workspaces/{Path(name).stem}/tree/{name}?reset&token={token}", timeout=120_000)
    page.wait_for_function("() => window.jupyterapp?.shell.currentWidget?.sessionContext", timeout=120_000)
    page.evaluate("async () => { const panel = window.jupyterapp.shell.currentWidget;"
                  " await panel.context.ready; await panel.sessionContext.ready; }")
    started = time.monotonic()
    finished = page.evaluate(f"""() => Promise.race([
        window.jupyterapp.commands.execute('notebook:run-all-cells'),
        new Promise(resolve => setTimeout(() => resolve('timeout'), {RUN_ALL_SECONDS * 1000}))])""")
    assert finished is True, (f"{name}: Run All ended with {finished!r} after {time.monotonic() - started:.0f} s"
                              f" (false: a cell raised); {page_errors(page)}")
    prompts = page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
    assert all(re.fullmatch(r"\[\d+\]:", p.strip()) for p in prompts), f"{name}: cells not run: {prompts}"
    assert not page_errors(page)


def page_errors(page) -> list[str]:
    """Outputs that say a widget could not be shown or show a traceback."""
    texts = page.locator(".jp-OutputArea-output").all_inner_texts()
    return [text[:500] for text in texts if "Error displaying widget" in text or "Traceback" in text]


def player_seconds(page) -> list[float]:
    """The length of every audio player on the page, once the browser has read them all."""
    lengths = "() => [...document.querySelectorAll('.jp-OutputArea-output audio')].map(a => a.duration)"
    page.wait_for_function(f"() => ({lengths})().every(Number.isFinite)", timeout=UPDATE_SECONDS * 1000)
    return page.evaluate(lengths)


def code_cell(page, source: str):
    return page.locator(".jp-CodeCell").filter(has_text=source).first


def outputs(cell) -> list[dict]:
    return cell.evaluate(OUTPUTS_JS)


def wait_for(cell, condition, what: str, seconds: float = UPDATE_SECONDS) -> list[dict]:
    """Poll the cell's outputs until ``condition(outputs)`` holds; fail naming ``what`` and showing them."""
    deadline = time.monotonic() + seconds
    while True:
        current = outputs(cell)
        if condition(current):
            return current
        if time.monotonic() > deadline:
            shown = [{**o, "images": [src[:40] for src in o["images"]],
                      "audios": [{**a, "src": a["src"][:40]} for a in o["audios"]]} for o in current]
            raise AssertionError(f"waited {seconds} s for {what}; the cell's outputs: {json.dumps(shown, indent=1)}")
        time.sleep(0.25)


def output_with(current: list[dict], text: str) -> int:
    """Index of the first output whose text contains ``text``."""
    return next((i for i, o in enumerate(current) if text in o["text"]), -1)


def text_with(current: list[dict], text: str) -> str | None:
    """The text of the first output that contains ``text``."""
    i = output_with(current, text)
    return current[i]["text"] if i >= 0 else None


def images(current: list[dict]) -> list[str]:
    return [src for o in current for src in o["images"]]


def audio_after(current: list[dict], label: str) -> list[dict]:
    """The players in the output right after the one that contains ``label`` (a display handle's pair)."""
    i = output_with(current, label)
    return current[i + 1]["audios"] if 0 <= i < len(current) - 1 else []


def playable(audios: list[dict], min_seconds: float = 0.0) -> bool:
    return bool(audios) and all(a["src"].startswith("data:audio/wav") and a["duration"] is not None
                                and a["duration"] > min_seconds for a in audios)


def assert_layout_fits(cell, what: str):
    cut = cell.evaluate(CUT_TEXTS_JS)
    assert not cut, f"{what}: widget texts cut off at 1024 px: {cut}"
    tracks = cell.evaluate(TRACKS_JS)
    assert tracks and min(tracks) >= 150, f"{what}: slider tracks of {tracks} px at 1024 px (want >= 150)"


def drag_slider(page, slider, pixels: float):
    """Drag a slider's handle with the mouse by ``pixels`` and let go (scrolled into view first: the mouse
    reaches only what the window shows)."""
    handle = slider.locator(".noUi-handle")
    handle.scroll_into_view_if_needed()
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + pixels, y, steps=8)
    page.mouse.up()


def control(cell, kind: str, label: str):
    """The widget of ``kind`` (CSS class) whose description is exactly ``label``."""
    return cell.locator(f".{kind}").filter(has=cell.page.locator(".widget-label", has_text=re.compile(f"^{label}$")))


def test_notebook_02_dpdp_explorer(lab, browser, tmp_path):
    with notebook_page(browser, "02_dpdp_quantization.ipynb", tmp_path) as page:
        open_and_run(page, lab, "02_dpdp_quantization.ipynb")
        seconds = player_seconds(page)  # a sub-second clip shows "0:00 / 0:00" and is hard to hear
        assert len(seconds) >= 5 and min(seconds) >= 1, f"players of {seconds} s in notebook 02"
        sweep = code_cell(page, "voice = WeightFreeVoice(")  # the original and the six λ of k = 500, weight-free
        sweep.scroll_into_view_if_needed()
        fit = sweep.evaluate(PLAYERS_FIT_JS)
        assert fit == {"count": 7, "overflow": 0, "hidden": 0}, f"02's weight-free λ sweep at 1024 px: {fit}"
        rows = sweep.evaluate(PLAYER_ROWS_JS)
        assert rows == 4, f"02's seven sweep players in {rows} rows at 1024 px (two a row: 4)"
        cell = code_cell(page, "explorer = dpdp_explorer(")
        cell.scroll_into_view_if_needed()
        first = wait_for(cell, lambda o: text_with(o, "units/s") and playable(audio_after(o, "hear segment"), 1)
                         and playable(audio_after(o, "weight-free resynthesis"), 1),
                         "the summary, a segment player of at least 1 s and the weight-free player")
        (figure,), summary = images(first), text_with(first, "units/s")
        assert "λ = 4500 keep" in text_with(first, "weight-free resynthesis")
        (whole,) = audio_after(first, "weight-free resynthesis")  # the whole sentence

        # at 1024 px: readable ticks, whole labels, usable tracks, the search buttons side by side
        scale = cell.locator(".jp-OutputArea-output img").first.evaluate("img => img.clientWidth / img.naturalWidth")
        assert TICK_PX * scale >= 9, f"the figure is shown at {scale:.2f}x: {TICK_PX * scale:.1f} px tick labels"
        assert_layout_fits(cell, "02 explorer")
        tops = [round(b.bounding_box()["y"]) for b in cell.locator(".widget-toggle-button").all()]
        assert len(tops) == 2 and abs(tops[0] - tops[1]) <= 2, f"search buttons stacked (tops {tops})"

        drag_slider(page, control(cell, "widget-slider", "λ"), 60)
        moved = wait_for(cell, lambda o: text_with(o, "units/s") not in (None, summary)
                         and images(o) not in ([], [figure]), "a new figure and summary after moving the λ slider")
        lmbda = control(cell, "widget-slider", "λ").locator(".widget-readout").inner_text().strip()
        assert lmbda != "4500" and f"λ = {lmbda}" in text_with(moved, "units/s")
        heard = wait_for(cell, lambda o: f"λ = {lmbda} keep" in (text_with(o, "weight-free resynthesis") or "")
                         and playable(audio_after(o, "weight-free resynthesis"), 1),
                         f"the weight-free player of λ = {lmbda}")
        (again,) = audio_after(heard, "weight-free resynthesis")
        assert abs(again["duration"] - whole["duration"]) < 0.05, "the weight-free player is the whole sentence"

        control(cell, "widget-dropdown", "k").locator("select").select_option("1000")
        wait_for(cell, lambda o: text_with(o, f"k = 1000, λ = {lmbda}"), "the summary of k = 1000")
        cell.locator(".widget-toggle-button", has_text="paper").click()
        wait_for(cell, lambda o: text_with(o, "paper search (50 nearest of 1000)"), "the paper's search")
        segment = control(cell, "widget-slider", "segment").locator(".noUi-handle")
        segment.focus()
        segment.press("ArrowRight")
        wait_for(cell, lambda o: text_with(o, "hear segment 1 ") and playable(audio_after(o, "hear segment"), 1),
                 "segment 1's player")
        assert not page_errors(page)


def test_notebook_07_grid_and_k_lambda_explorer(lab, browser, tmp_path):
    with notebook_page(browser, "07_exploring_k_and_lambda.ipynb", tmp_path) as page:
        open_and_run(page, lab, "07_exploring_k_and_lambda.ipynb")
        stderr = page.locator('[data-mime-type="application/vnd.jupyter.stderr"]').all_inner_texts()
        assert sum("RANDOM WEIGHTS" in text for text in stderr) <= 1, f"RANDOM WEIGHTS said more than once: {stderr}"

        grid = code_cell(page, "LISTEN = True")  # the original, 6 λ and 2 equal-bitrate pairs: none hidden
        grid.scroll_into_view_if_needed()
        fit = grid.evaluate(PLAYERS_FIT_JS)
        assert fit == {"count": 9, "overflow": 0, "hidden": 0}, f"listening grid at 1024 px: {fit}"

        cell = code_cell(page, "explorer = widgets.k_lambda_explorer(")
        cell.scroll_into_view_if_needed()
        first = wait_for(cell, lambda o: text_with(o, "Press resynthesize"), "the hint to press resynthesize")
        assert not audio_after(first, "Press resynthesize"), "a B player before anything was resynthesized"
        assert_layout_fits(cell, "07 explorer")
        (figure,), summary = images(first), text_with(first, "units/s")

        cell.locator(".widget-button", has_text="resynthesize").click()
        spoken = wait_for(cell, lambda o: playable(audio_after(o, "B: resynthesis with k = 500, λ = 4500"))
                          and len(images(o)) == 2, "B's player and the resynthesis figure after resynthesize")
        b_source = audio_after(spoken, "B: resynthesis")[0]["src"]
        cell.locator(".widget-button", has_text="keep as A").click()
        wait_for(cell, lambda o: playable(audio_after(o, "A: k = 500, λ = 4500")), "A's player after keep as A")

        control(cell, "widget-dropdown", "λ").locator("select").select_option("7000")
        moved = wait_for(cell, lambda o: text_with(o, "k = 500, λ = 7000") and text_with(o, "Press resynthesize"),
                         "the summary and the hint of λ = 7000")
        assert not audio_after(moved, "Press resynthesize"), "the previous pair's B player stayed under the hint"
        assert figure not in images(moved) and text_with(moved, "units/s") != summary
        assert audio_after(moved, "A: k = 500, λ = 4500")[0]["src"] == b_source, "A is the pinned rendition"

        control(cell, "widget-dropdown", "k").locator("select").select_option("100")
        wait_for(cell, lambda o: text_with(o, "k = 100, λ = 9000"), "k = 100 at the same λ position (λ = 9000)")
        cell.locator(".widget-button", has_text="resynthesize").click()
        spoken = wait_for(cell, lambda o: playable(audio_after(o, "B: resynthesis with k = 100, λ = 9000")),
                          "B's player of k = 100, λ = 9000")
        assert audio_after(spoken, "B: resynthesis")[0]["src"] != b_source
        assert not page_errors(page)
