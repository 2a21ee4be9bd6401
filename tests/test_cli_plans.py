"""The command line's shape: check -> frozen plan -> one library call; encode_tree as library API; no argv sniffing."""

import ast
import dataclasses
import inspect
import json
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import soundfile

import dpslm_utils
from dpslm_utils import cli, tree_encoding

from conftest import cli_subcommands

pytestmark = pytest.mark.usefixtures("random_tiny")

CLI_SOURCE = Path(cli.__file__).read_text()


@pytest.fixture
def small_corpus(tmp_path):
    """Two short recordings, one in a sub-folder."""
    wav, sr = dpslm_utils.example_audio("librispeech", official=False)
    for name, part in (("a.flac", slice(0, 24000)), ("sub/b.wav", slice(24000, 40000))):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(tmp_path / "in" / name, wav[0, part].numpy(), sr)
    return tmp_path / "in"


def test_every_command_checks_its_arguments_into_a_frozen_plan():
    commands = cli_subcommands()
    assert len(commands) == 13
    for name, parser in commands.items():
        check, run = parser._defaults["check"], parser._defaults["run"]
        plan_type = typing.get_type_hints(check, vars(cli))["return"]
        assert dataclasses.is_dataclass(plan_type) and plan_type.__dataclass_params__.frozen, name
        assert list(inspect.signature(run).parameters) == ["plan"], name
        assert typing.get_type_hints(run, vars(cli))["plan"] is plan_type, name


def test_a_plan_cannot_be_changed_after_its_checks(tmp_path):
    args = cli.build_parser().parse_args(["say", "SIL HH AH0 L OW1 SIL", str(tmp_path / "x.flac"), "--phones", "--seed", "3"])
    plan = cli.check_say(args)
    assert plan.chunks == [["SIL", "HH", "AH0", "L", "OW1", "SIL"]] and plan.seed == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.seed = 4
    download = cli.check_download(cli.build_parser().parse_args(["download", "abx-items", "--no-extract"]))
    assert download == cli.DownloadPlan("abx-items", None, False, True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        download.extract = True


@pytest.mark.parametrize("argv, message", [
    (["encode", "{in}", "{out}", "--k", "7"], "--k 7: no released codebook"),
    (["encode", "{in}", "{out}", "--lmbda", "-1"], "--lmbda"),
    (["encode", "{missing}", "{out}"], "does not exist"),
    (["encode-codec", "{missing}", "{out}"], "does not exist"),
    (["train-codebook", "{in}", "{out}/c.pt", "--k", "0"], "--k"),
    (["resynthesize", "{missing}/x.wav", "{out}/r"], "does not exist"),
    (["score", "{missing}/x.wav"], "does not exist"),
    (["say", "hello", "{out}/x.txt"], "suffix"),
    (["demo", "--out", "{out}", "--k", "7"], "k=7"),
    (["train-ulm", "{missing}", "{out}", "--k", "100"], "does not exist"),
    (["zerospeech", "{missing}", "{out}"], "does not exist"),
    (["abx", "{missing}/x.item", "{in}", "{out}"], "does not exist"),
])
def test_a_refused_command_runs_nothing_and_creates_nothing(argv, message, small_corpus, tmp_path, monkeypatch, capsys):
    ran = []
    for name in [n for n in vars(cli) if n.startswith("cmd_")]:
        monkeypatch.setattr(cli, name, lambda plan, name=name: ran.append(name) or 0)
    monkeypatch.setattr(tree_encoding, "_encode", lambda plan: ran.append("_encode"))
    paths = {"in": small_corpus, "out": tmp_path / "out", "missing": tmp_path / "missing"}
    assert cli.main([arg.format(**{k: str(v) for k, v in paths.items()}) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dpslm: error: ") and message in err and len(err.splitlines()) == 1, err
    assert ran == [] and not (tmp_path / "out").exists()


def test_plan_units_refuses_bad_arguments_before_any_model_loads(small_corpus, tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(dpslm_utils.UnitEncoder, "from_pretrained", no_model)
    out = tmp_path / "out"
    for kwargs, message in [({"k": 7}, "k=7: no released codebook"), ({"lmbda": float("nan")}, "lmbda"),
                            ({"lmbda": 1.0, "units_per_second": 5.0}, "not both"), ({"formats": "txt"}, "formats"),
                            ({"features": "mfcc"}, "needs a codebook"), ({"num_neighbors": 0}, "num_neighbors")]:
        with pytest.raises(ValueError, match=message):
            tree_encoding.plan_units(small_corpus, out, **kwargs)
        with pytest.raises(ValueError, match=message):
            dpslm_utils.encode_tree(small_corpus, out, **kwargs)
    assert not out.exists()
    plan = tree_encoding.plan_units(small_corpus, out, k=100, lmbda=600)  # checks pass: no model yet either
    assert (plan.k, plan.lmbda, plan.formats) == (100, 600.0, ("txt", "npy"))
    assert [f.relative_to(small_corpus).as_posix() for f in plan.tree.files] == ["a.flac", "sub/b.wav"]


def test_encode_tree_from_python_writes_what_the_command_writes(small_corpus, tmp_path, capsys):
    assert dpslm_utils.encode_tree is tree_encoding.encode_tree and "encode_tree" in dpslm_utils.__all__
    by_cli, by_python = tmp_path / "cli", tmp_path / "python"
    assert cli.main(["encode", str(small_corpus), str(by_cli), "--k", "100", "--lmbda", "600", "--quiet"]) == 0
    printed = capsys.readouterr().out
    result = dpslm_utils.encode_tree(small_corpus, by_python, k=100, lmbda=600, progress=False)
    assert isinstance(result, dpslm_utils.TreeResult) and result.failed == () and result.encoded == 2

    def files(root):
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    assert files(by_cli) == files(by_python) == ["a.npy", "a.txt", "dpslm_settings.json", "sub/b.npy", "sub/b.txt"]
    for name in ("a.txt", "sub/b.txt"):
        assert (by_cli / name).read_text() == (by_python / name).read_text()
    for name in ("a.npy", "sub/b.npy"):
        np.testing.assert_array_equal(np.load(by_cli / name), np.load(by_python / name))
    record = json.loads((by_python / "dpslm_settings.json").read_text())
    assert record == json.loads((by_cli / "dpslm_settings.json").read_text())
    assert (record["command"], record["k"], record["lmbda"]) == ("encode", 100, 600.0)
    rate = result.bitrate
    assert f"{rate.units_per_second:.1f} units/s, {rate.entropy_bits:.2f} bits/unit, {rate.bits_per_second:.1f} bits/s" in printed
    # the folder is the CLI's: a rerun from Python resumes it (nothing to do), other settings are refused
    assert dpslm_utils.encode_tree(small_corpus, by_cli, k=100, lmbda=600, progress=False).encoded == 2
    with pytest.raises(ValueError, match="settings"):
        dpslm_utils.encode_tree(small_corpus, by_cli, k=100, lmbda=700, progress=False)


def test_cli_reads_sys_argv_only_in_main(monkeypatch):
    tree = ast.parse(CLI_SOURCE)
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    reads = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr == "argv"
             and getattr(node.value, "id", None) == "sys"]  # fmt: skip
    assert reads and all(main.lineno <= line <= main.end_lineno for line in reads), reads
    assert "all_options" not in CLI_SOURCE and "PARSED_COMMANDS" not in CLI_SOURCE
    # the parser is the same whatever sys.argv holds: a command's late options exist when it is parsed
    monkeypatch.setattr(sys, "argv", ["dpslm", "demo"])
    args = cli.build_parser().parse_args(["train-ulm", "units", "out", "--k", "100", "--lr", "0.001"])
    assert (args.lr, args.k) == (0.001, 100)
    monkeypatch.setattr(sys, "argv", ["dpslm", "train-ulm", "--lr", "1"])
    assert cli.build_parser().parse_args(["demo"]).command == "demo"


def test_every_cmd_is_short():
    """A command hands its plan to the library: its body reads at a glance."""
    long = {}
    for node in ast.parse(CLI_SOURCE).body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("cmd_"):
            body = node.body[1:] if ast.get_docstring(node) else node.body
            if node.end_lineno - body[0].lineno + 1 > 15:
                long[node.name] = node.end_lineno - body[0].lineno + 1
    assert not long, long


def test_encode_codec_tree_from_python_writes_what_the_command_writes(small_corpus, tmp_path, capsys):
    by_cli, by_python = tmp_path / "cli", tmp_path / "python"
    assert cli.main(["encode-codec", str(small_corpus), str(by_cli), "--codec", "small_320_24k_4096", "--quiet"]) == 0
    assert f"2 of 2 files have small_320_24k_4096 codes under {by_cli}" in capsys.readouterr().out
    result = dpslm_utils.encode_codec_tree(small_corpus, by_python, codec="small_320_24k_4096", progress=False)
    assert (result.encoded, result.failed, result.bitrate) == (2, (), None)
    for name in ("a.npy", "sub/b.npy"):
        codes = np.load(by_python / name)
        assert codes.dtype == np.int16 and len(codes) > 10
        np.testing.assert_array_equal(np.load(by_cli / name), codes)
    assert (by_cli / "dpslm_settings.json").read_text() == (by_python / "dpslm_settings.json").read_text()
