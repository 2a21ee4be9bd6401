"""Packaging: the wheel works outside the checkout; metadata, license, citation and version agree."""

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

import dpslm_utils
from dpslm_utils.audio import BUNDLED_EXAMPLES

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _run(command: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources (pip builds in place and would litter the checkout)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "dpslm_utils", source / "dpslm_utils", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: the build requirement (setuptools, in the dev extra) is installed, and no index is needed.
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", out, source])  # fmt: skip
    (path,) = out.glob("dpslm_utils-*.whl")
    return path


def test_the_wheel_ships_the_recordings_license_and_type_marker(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for recording in BUNDLED_EXAMPLES.values():
        assert f"dpslm_utils/examples/{recording}" in names
    assert "dpslm_utils/py.typed" in names and "dpslm_utils/random_tiny.py" in names
    assert "dpslm_utils/viterbi_numba.py" in names
    assert "dpslm_utils/feature_codebooks/fbank_k100.pt" in names
    assert any(re.fullmatch(r"dpslm_utils-[^/]+\.dist-info/licenses/LICENSE", n) for n in names), names
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert f"Version: {dpslm_utils.__version__}\n" in metadata
    assert "License-Expression: MIT\n" in metadata
    assert "Requires-Dist: torch<3,>=2.6" in metadata or "Requires-Dist: torch>=2.6,<3" in metadata


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, dict]:
    """(python, environment) of a fresh venv outside the checkout where dpslm_utils comes from the wheel."""
    folder = tmp_path_factory.mktemp("installed")
    venv = folder / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel])
    # Let the new venv see the installed dependencies (torch: no 2 GB reinstall). A directory named in a
    # .pth file is only appended to sys.path: its own .pth files (this checkout's editable install) are
    # not processed, so dpslm_utils can only come from the wheel.
    site_packages = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    Path(site_packages, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DPSLM_WEIGHTS")}
    env |= {"DPSLM_CACHE": str(folder / "cache"), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    env["DPSLM_NUMBA"] = "0"  # numba would compile DPDP afresh for this new path (~3 s); test_dpdp tests it
    where = _run([python, "-c", "import dpslm_utils; print(dpslm_utils.__file__)"], cwd=folder, env=env)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout
    return python, env


def test_wheel_installed_in_a_clean_venv_outside_the_checkout_runs_the_offline_demo(installed, tmp_path):
    python, env = installed
    out = tmp_path / "demo"
    demo = _run([python.parent / "dpslm", "demo", "--weights", "random-tiny", "--k", "100", "--lmbda", "600",
                 "--out", out], cwd=tmp_path, env=env)  # fmt: skip
    assert "bundled espeak-ng recording mister_quilter.flac" in demo.stderr  # a logged warning
    written = sorted(p.name for p in out.iterdir())
    weight_free = [name for name in written if re.fullmatch(r"weightfree_lambda_\d+\.wav", name)]
    assert len(weight_free) == 3 and written == sorted([
        "demo.png", "original.wav", "resynthesis_0.wav", "resynthesis_1.wav", "units.txt", "rate_distortion.png",
        "weightfree_logmel.wav", *weight_free,
    ])  # the shipped log-mel codebook came with the wheel


def test_the_wheel_ships_the_toy_language_and_the_slm21_stand_in(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.relative_to(REPO).as_posix() for p in (REPO / "dpslm_utils" / "data").rglob("*") if p.is_file()}
    assert len(shipped) == 840 and shipped <= names  # 794 Ogg Opus + 40 FLAC + corpus, phones and 4 gold csv


EXECUTE = """
import sys
from pathlib import Path

import nbformat
from jupyter_client import KernelManager
from nbclient import NotebookClient
from nbval.kernel import CURRENT_ENV_KERNEL_NAME, NbvalKernelspecManager  # a kernel on this very python

path = Path(sys.argv[1])
notebook = nbformat.read(path, as_version=4)
kernel = KernelManager(kernel_name=CURRENT_ENV_KERNEL_NAME, kernel_spec_manager=NbvalKernelspecManager())
NotebookClient(notebook, km=kernel, timeout=600, resources={"metadata": {"path": str(path.parent)}}).execute(
    cleanup_kc=True)  # shut the kernel down (the client does not own a kernel manager it was given)
nbformat.write(notebook, path)
"""
NOTEBOOKS_WITH_DATA = ("06_end_to_end", "08_evaluating_spoken_lms", "09_train_your_own")
SMOKE = {"09_train_your_own": {"DPSLM_TOY_BUDGET": "smoke"}}
"""09 trains seven LMs: here it checks that the installed package finds its data, not the science, so its experiment
runs at the smallest budget (nbval runs it in full from the checkout)."""


def test_the_notebooks_that_need_the_repository_run_from_the_wheel_outside_the_checkout(installed, tmp_path):
    """What Colab does: notebooks 06 (torch.hub), 08 (sLM21 stand-in, toy language) and 09 (toy
    language) with the package from a pip install, under random-tiny weights. A cell error fails."""
    python, env = installed
    runs = [subprocess.Popen([python, "-c", EXECUTE, shutil.copy(REPO / "notebooks" / f"{name}.ipynb", tmp_path)],
                             cwd=tmp_path, env=env | {"DPSLM_WEIGHTS": "random-tiny"} | SMOKE.get(name, {}),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for name in NOTEBOOKS_WITH_DATA]  # side by side
    for name, run in zip(NOTEBOOKS_WITH_DATA, runs):
        output = run.communicate()[0]
        assert run.returncode == 0, f"notebook {name} failed outside the checkout:\n{output[-5000:]}"

    def printed(name: str, cell_id: str) -> str:
        (cell,) = [c for c in json.loads((tmp_path / f"{name}.ipynb").read_text())["cells"] if c["id"] == cell_id]
        return "".join("".join(output.get("text", "")) for output in cell["outputs"])  # str or list of lines

    venv = python.parent.parent
    assert printed("06_end_to_end", "55b55c2d").startswith("torch.hub skipped: a pip install has no hubconf.py")
    assert "'word': 'manufacture'" in printed("08_evaluating_spoken_lms", "cell-07")  # the sLM21 stand-in's gold
    toy = re.match(r"ToyLanguage\((.+): 400 train, 40 validation", printed("09_train_your_own", "cell-06"))
    assert toy and Path(toy[1]).is_relative_to(venv)
    assert "mfcc k=32 5/s" in printed("09_train_your_own", "cell-13")  # the smoke budget's codebooks


def test_version_is_defined_once_and_agrees_everywhere():
    assert re.fullmatch(r"\d+\.\d+\.\d+", dpslm_utils.__version__)
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "dpslm_utils.__version__"}
    assert f"version: {dpslm_utils.__version__}\n" in (REPO / "CITATION.cff").read_text()
    assert importlib.metadata.version("dpslm-utils") == dpslm_utils.__version__


def test_license_metadata_is_an_spdx_string_with_its_file():
    project = PYPROJECT["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (REPO / "LICENSE").read_text().startswith("MIT License\n")
    assert not any(c.startswith("License ::") for c in project.get("classifiers", []))  # superseded by SPDX


def test_build_requirement_is_bounded_and_supports_the_spdx_license():
    (requirement,) = PYPROJECT["build-system"]["requires"]
    match = re.fullmatch(r"setuptools>=(\d+),<(\d+)", requirement)
    assert match and int(match[1]) >= 77, requirement  # 77: first setuptools to read `license = "MIT"`
    assert requirement in PYPROJECT["project"]["optional-dependencies"]["dev"]  # the wheel test builds with it


def test_dependencies_are_ranges_and_the_exact_pins_live_in_the_setup_files():
    assert 'PIP_CONSTRAINT="$PWD/scripts/constraints.txt"' in (REPO / "scripts" / "setup.sh").read_text()
    dependencies = PYPROJECT["project"]["dependencies"]
    assert not [d for d in dependencies if "==" in d], dependencies
    for name in ("torch", "torchaudio"):
        (spec,) = [d for d in dependencies if re.match(rf"{name}[<>=]", d)]
        assert ">=" in spec and "<" in spec.replace("<=", ""), spec
        pin = re.search(rf"^{name}==([\d.]+)$", (REPO / "scripts" / "constraints.txt").read_text(), re.MULTILINE)
        assert pin, f"scripts/constraints.txt pins no {name} version"
        assert f"{name}=={pin[1]}" in (REPO / "environment.yml").read_text()
        assert f"{name} {pin[1]}" in (REPO / "README.md").read_text()  # the tested version, stated


def test_numba_is_optional_installed_for_the_tests_and_pinned():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert not [d for d in PYPROJECT["project"]["dependencies"] if d.startswith("numba")]
    (spec,) = extras["numba"]
    assert spec.startswith("numba>=") and spec in extras["dev"]  # setup.sh installs dev: CI tests both recursions
    pin = re.search(r"^numba==([\d.]+)$", (REPO / "scripts" / "constraints.txt").read_text(), re.MULTILINE)
    assert pin, "scripts/constraints.txt pins no numba version"
    assert f"numba=={pin[1]}" in (REPO / "environment.yml").read_text()
    assert f"numba {pin[1]}" in (REPO / "README.md").read_text()


def test_project_urls_and_citation():
    urls = PYPROJECT["project"]["urls"]
    assert urls and all(u.startswith("https://") for u in urls.values())
    citation = (REPO / "CITATION.cff").read_text()
    assert citation.startswith("cff-version: 1.2.0\n") and "preferred-citation:" in citation
    assert "Visser" in citation and "Kamper" in citation
