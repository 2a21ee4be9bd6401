"""``python -m dpslm_utils``: encode (resumable, sharded, robust to bad files), resynthesize, score, demo."""

import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import dpslm_utils
from dpslm_utils import checks, cli, demo, tree_encoding

from conftest import RunsCode, cli_subcommands, free_port

pytestmark = pytest.mark.usefixtures("random_tiny")


@pytest.fixture
def corpus(tmp_path):
    """Three readable recordings (one in a sub-folder, one stereo 22.05 kHz) and one broken file."""
    wav, sr = dpslm_utils.example_audio("librispeech", official=False)
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    soundfile.write(root / "a.flac", wav[0, :32000].numpy(), sr)
    soundfile.write(root / "sub" / "b.wav", wav[0, 32000:64000].numpy(), sr)
    stereo = dpslm_utils.resample(wav[:, :48000].repeat(2, 1), sr, 22050)
    soundfile.write(root / "c.wav", stereo.T.numpy(), 22050)
    (root / "broken.wav").write_bytes(b"RIFF this is no audio")
    (root / "notes.txt").write_text("not audio, ignored")
    return root


def _expected_units(path: Path, k=100, lmbda=600.0):
    enc = dpslm_utils.UnitEncoder.from_pretrained(k, lmbda, device="cpu")
    wav, sr = dpslm_utils.load_audio(path)
    return enc.encode(dpslm_utils.to_mono(wav), sr)


def test_shard_covers_every_item_once():
    items = list(range(11))
    parts = [tree_encoding.shard(items, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == items and parts[1] == [1, 4, 7, 10]
    with pytest.raises(ValueError):
        tree_encoding.shard(items, 3, 3)


def test_encode_writes_units_skips_broken_files_and_resumes(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["encode", str(corpus), str(out), "--k", "100", "--lmbda", "600", "--quiet"])
    captured = capsys.readouterr()
    assert code == 1  # one file could not be read; the others were encoded
    assert "broken.wav" in captured.err and "units/s" in captured.out
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["a.npy", "a.txt", "c.npy", "c.txt", "dpslm_settings.json", "sub/b.npy", "sub/b.txt"]

    for name in ("a.flac", "sub/b.wav", "c.wav"):
        expected = _expected_units(corpus / name)
        stem = out / Path(name).with_suffix("")
        table = np.load(stem.with_name(stem.name + ".npy"))
        assert table.dtype == np.int64 and table.shape == (len(expected.units), 2)
        assert table[:, 0].tolist() == expected.units.tolist()
        assert table[:, 1].tolist() == expected.durations.tolist()
        text = stem.with_name(stem.name + ".txt").read_text().split()
        assert text == [f"u{u}" for u in expected.units.tolist()]

    # An interrupted run: one output lost, a stale temporary file left. The rerun completes it only.
    (out / "a.txt").unlink()
    (out / ".a.tmp123.txt").write_text("partial")
    before = (out / "c.npy").stat().st_mtime_ns
    cli.main(["encode", str(corpus), str(out), "--k", "100", "--lmbda", "600", "--quiet"])
    assert "2 to do" in capsys.readouterr().out  # a.flac, and broken.wav is tried again
    assert (out / "a.txt").read_text().split() == [f"u{u}" for u in _expected_units(corpus / "a.flac").units.tolist()]
    assert (out / "c.npy").stat().st_mtime_ns == before


def test_encode_refuses_a_rerun_with_other_settings(corpus, tmp_path, capsys):
    (corpus / "broken.wav").unlink()
    out = tmp_path / "out"
    assert cli.main(["encode", str(corpus), str(out), "--k", "100", "--lmbda", "600", "--quiet"]) == 0
    capsys.readouterr()
    assert cli.main(["encode", str(corpus), str(out), "--k", "100", "--lmbda", "1500", "--quiet"]) == 2
    assert re.search(r"^dpslm: error: .*lmbda: 600.0 there, 1500.0 now", capsys.readouterr().err)
    assert cli.main(["encode-codec", str(corpus), str(out), "--quiet"]) == 2
    assert "command: 'encode' there, 'encode-codec' now" in capsys.readouterr().err


def test_encode_codec_writes_the_codes_of_every_file(corpus, tmp_path, capsys):
    out = tmp_path / "codes"
    assert cli.main(["encode-codec", str(corpus), str(out), "--quiet"]) == 1  # broken.wav is reported
    assert "broken.wav" in capsys.readouterr().err
    codec = dpslm_utils.WavTokenizer.from_pretrained("small_600_24k_4096", device="cpu")
    for name in ("a.flac", "sub/b.wav", "c.wav"):
        wav, sr = dpslm_utils.load_audio(corpus / name)
        stem = out / Path(name).with_suffix("")
        codes = np.load(stem.with_name(stem.name + ".npy"))
        assert codes.dtype == np.int16 and codes.tolist() == codec.encode(dpslm_utils.to_mono(wav), sr).tolist()


def test_encode_summary_bitrate_matches_the_library(corpus, tmp_path, capsys):
    (corpus / "broken.wav").unlink()
    cli.main(["encode", str(corpus), str(tmp_path / "o"), "--k", "100", "--lmbda", "600", "--quiet"])
    frames = [_expected_units(corpus / n).frame_units for n in ("a.flac", "c.wav", "sub/b.wav")]
    rate = dpslm_utils.bitrate(frames)
    assert f"{rate.units_per_second:.1f} units/s" in capsys.readouterr().out


@pytest.fixture
def no_models(monkeypatch):
    """Loading any model fails the test: refusals must come before it."""
    def load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    for name in ("DPSLM", "UnitEncoder"):
        monkeypatch.setattr(getattr(dpslm_utils, name), "from_pretrained", load)


def _refusals(corpus: Path, tmp: Path) -> list[tuple[list[str], str]]:
    blocker = tmp / "file"
    blocker.write_text("a file, not a folder")
    silent, twins = tmp / "silent.wav", tmp / "twins"
    soundfile.write(silent, np.zeros(16000, dtype=np.float32), 16000)
    twins.mkdir()
    for name in ("x.flac", "x.wav", "y.wav"):
        soundfile.write(twins / name, 0.1 * np.ones(8000, dtype=np.float32), 16000)
    out, audio = str(tmp / "out"), str(corpus / "a.flac")
    model = ["--k", "100", "--lmbda", "600"]
    return [
        (["encode", str(corpus), out, "--k", "300"], "no released codebook; valid k are"),
        (["encode", str(corpus), out, "--lmbda", "-1"], "--lmbda must be >= 0, got -1"),
        (["encode", str(corpus), out, "--lmbda", "nan"], "--lmbda must be finite"),
        (["encode", str(corpus), out, "--k", "100", "--num-neighbors", "0"], "--num-neighbors must be an integer from 1 to 100"),
        (["encode", str(tmp / "missing"), out], "missing does not exist"),
        (["encode", audio, out], "a.flac is not a folder"),
        (["encode", str(twins), out], "x.flac and x.wav"),
        (["encode", str(corpus), str(blocker / "out")], "file is not a folder"),
        (["encode", str(corpus), out, "--k", "x"], "argument --k: invalid int value"),
        (["encode-codec", str(twins), out], "x.flac and x.wav"),
        (["encode-codec", str(tmp / "missing"), out], "missing does not exist"),
        (["train-ulm", str(tmp / "missing"), out, "--k", "100"], "missing does not exist"),
        (["train-ellav", str(corpus), audio, out, "--k", "100"], "a.flac is not a folder"),
        (["train-ulm", str(corpus), out, "--k", "100", "--max-steps", "0"], "--max-steps must be an integer >= 1"),
        (["train-ulm", str(corpus), out, "--k", "100", "--warmup-steps", "-5"], "warmup_steps must be an integer >= 0, got -5"),
        (["train-ulm", str(corpus), out, "--k", "100", "--lr-final", "nan"], "lr_final must be finite, got nan"),
        (["train-ellav", str(corpus), str(corpus), out, "--k", "100", "--beta2", "1"], r"beta2 must be in \[0, 1\), got 1.0"),
        (["train-ellav", str(corpus), str(corpus), out, "--k", "100", "--lr", "inf"], "lr must be finite"),
        (["train-ulm", str(corpus), out, "--k", "100", "--device", "mps"], "--device mps: mps is not supported; use cpu or cuda"),
        (["resynthesize", audio, out + "/r", *model, "-n", "0"], "-n must be an integer >= 1, got 0"),
        (["resynthesize", audio, out + "/r", *model, "--temperature", "inf"], "temperature must be finite"),
        (["resynthesize", audio, out + "/r", *model, "--seed", str(2**70)], "seed must be an integer from 0 to"),
        (["resynthesize", audio, out + "/r", *model, "--top-p", "1.5"], "top_p must be from 0 to 1"),
        (["resynthesize", str(tmp / "missing.wav"), out + "/r", *model], "audio file .*missing.wav does not exist"),
        (["resynthesize", str(corpus), out + "/r", *model], "is a directory, not a file"),
        (["resynthesize", str(corpus / "broken.wav"), out + "/r", *model], "cannot read audio file"),
        (["resynthesize", str(silent), out + "/r", *model], "silent.wav is silent"),
        (["resynthesize", audio, out + "/r", "--k", "500", "--lmbda", "1"], "valid lmbda for k=500"),
        (["score", audio, str(tmp / "gone.wav"), *model], "gone.wav does not exist"),
        (["demo", "--out", str(blocker), *model], "file is not a folder"),
        (["score", audio, *model, "--device", "cud"], "--device cud: .*device type"),
    ]


def test_every_refusal_is_one_line_with_status_2_before_any_model_or_output(corpus, tmp_path, capsys, no_models):
    for argv, message in _refusals(corpus, tmp_path):
        assert cli.main(argv) == 2, argv
        captured = capsys.readouterr()
        lines = captured.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("dpslm: error: "), (argv, captured.err)
        assert re.search(message, lines[0]), (message, lines[0])
        assert "Traceback" not in captured.err and captured.out == ""
        assert not (tmp_path / "out").exists(), argv  # OUT is created only after every check passed


def test_an_unsupported_device_is_refused_by_every_command_first(tmp_path, capsys, no_models, monkeypatch):
    """The device is checked before any other argument, input or output, so these placeholders never matter."""
    inp, out, model = str(tmp_path / "in"), str(tmp_path / "out"), ["--k", "100", "--lmbda", "600"]
    commands = {
        "demo": ["demo", "--out", out, *model], "encode": ["encode", inp, out, *model], "encode-codec": ["encode-codec", inp, out],
        "train-ulm": ["train-ulm", inp, out, "--k", "100"], "train-ellav": ["train-ellav", inp, inp, out, "--k", "100"],
        "resynthesize": ["resynthesize", inp, out + "/r", *model], "score": ["score", inp, *model],
        "say": ["say", "SIL HH AH0 L OW1 SIL", out + "/x.wav", "--phones"], "wer": ["wer", inp, out],
        "zerospeech": ["zerospeech", inp, out, *model], "abx": ["abx", inp, inp, out, *model],
        "train-codebook": ["train-codebook", inp, out + "/c.pt", "--k", "10", "--features", "mfcc"],
    }  # fmt: skip
    with_device = {name for name, p in cli_subcommands().items() if any("--device" in a.option_strings for a in p._actions)}
    assert set(commands) == with_device  # a new command with --device must be added here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, message in (("mps", "mps is not supported; use cpu or cuda"), ("xpu:0", "xpu is not supported"),
                            ("cuda", "CUDA is not available here"), ("cud", "not a device type torch knows")):  # fmt: skip
        for name, argv in commands.items():
            assert cli.main([*argv, "--device", device]) == 2, (name, device)
            captured = capsys.readouterr()
            assert re.fullmatch(f"dpslm: error: --device {device}: {message}.*\n", captured.err), (name, captured.err)
            assert not (tmp_path / "out").exists(), name
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert cli.main([*commands["score"], "--device", "cuda:2"]) == 2
    assert "--device cuda:2: there are only 2 CUDA device(s) here" in capsys.readouterr().err


def test_train_ellav_refuses_a_codec_file_that_would_run_code(tmp_path, capsys):
    from dpslm_utils import datasets

    for name in ("a", "b"):
        datasets.save_units(tmp_path / "units" / f"{name}.npy", [1, 2], [5, 5])
        (tmp_path / "codes").mkdir(exist_ok=True)
        torch.save(torch.arange(8) if name == "a" else {"codes": RunsCode(tmp_path / "ran")}, tmp_path / "codes" / f"{name}.pt")
    argv = ["train-ellav", str(tmp_path / "units"), str(tmp_path / "codes"), str(tmp_path / "run"), "--k", "6"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"dpslm: error: .*b\.pt holds Python objects besides tensors .* refused, .*\n", err), err
    assert not (tmp_path / "ran").exists() and not (tmp_path / "run").exists()


def test_a_missing_input_is_refused_without_importing_torch(tmp_path):
    script = ("import sys; from dpslm_utils.cli import main; "
              f"code = main(['resynthesize', {str(tmp_path / 'missing.wav')!r}, 'out/x']); "
              "print(code, 'torch' in sys.modules)")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - started
    assert result.stdout.split() == ["2", "False"], result.stderr
    assert result.stderr.startswith("dpslm: error: audio file") and result.stderr.count("\n") == 1
    assert elapsed < 3.0  # about 0.2 s here; importing torch alone takes 2-4 s on this machine


def test_failures_after_the_checks_are_one_line_with_status_1(corpus, tmp_path, capsys, monkeypatch):
    def offline(*args, **kwargs):
        raise dpslm_utils.CheckpointError("could not download https://x/m.pt (no network).\nplace it at:\n    /c/m.pt")

    monkeypatch.setattr(dpslm_utils.DPSLM, "from_pretrained", offline)
    assert cli.main(["score", str(corpus / "a.flac"), "--k", "100", "--lmbda", "600"]) == 1
    assert capsys.readouterr().err == "dpslm: error: could not download https://x/m.pt (no network). place it at: /c/m.pt\n"


def test_encode_reports_a_file_that_fails_at_run_time_and_goes_on(corpus, tmp_path, capsys, monkeypatch):
    (corpus / "broken.wav").unlink()
    soundfile.write(corpus / "long.wav", np.tile(soundfile.read(corpus / "a.flac")[0], 4), 16000)  # 8 s
    monkeypatch.setattr(dpslm_utils.WavLMEncoder, "max_seconds", 7.0)  # long.wav is too long for WavLM now
    real_encode = dpslm_utils.UnitEncoder.encode

    def encode(self, wav, sr):
        if sr == 22050:  # c.wav: as if it ran out of memory
            raise RuntimeError("DefaultCPUAllocator: not enough memory")
        return real_encode(self, wav, sr)

    monkeypatch.setattr(dpslm_utils.UnitEncoder, "encode", encode)
    assert cli.main(["encode", str(corpus), str(tmp_path / "o"), "--k", "100", "--lmbda", "600", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "c.wav: DefaultCPUAllocator" in err and "long.wav: the audio is 8.0 s long; WavLM accepts at most 7 s" in err
    assert "2 file(s) could not be encoded" in err
    assert sorted(p.name for p in (tmp_path / "o").rglob("*.npy")) == ["a.npy", "b.npy"]


def test_resynthesize_never_writes_an_empty_wav(corpus, tmp_path, capsys, monkeypatch):
    class Model:  # ELLA-V closes every unit at once in the first rendition
        vocoder = type("Vocoder", (), {"sample_rate": 24000})

        def resynthesize(self, wav, sr, **kwargs):
            return [torch.zeros(0), torch.full((600,), 0.1)]

    monkeypatch.setattr(dpslm_utils.DPSLM, "from_pretrained", lambda *args, **kwargs: Model())
    prefix = tmp_path / "r" / "x"
    assert cli.main(["resynthesize", str(corpus / "a.flac"), str(prefix), "--k", "100", "--lmbda", "600", "-n", "2"]) == 1
    assert "rendition 0 is empty" in capsys.readouterr().err
    assert sorted(p.name for p in prefix.parent.iterdir()) == ["x_1.wav"]


@pytest.mark.parametrize("module", sorted(checks.OPTIONAL_DEPENDENCIES))
def test_every_optional_import_fails_in_one_line_naming_its_extra(module, monkeypatch):
    package, extra = checks.OPTIONAL_DEPENDENCIES[module]
    extras = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(re.match(rf"{re.escape(package)}\b", requirement) for requirement in extras[extra])
    monkeypatch.setitem(sys.modules, module, None)  # the import fails, as when the package is not installed
    expected = f'X needs the optional package {package}: pip install "dpslm-utils[{extra}]" (in a clone: pip install -e ".[{extra}]")'
    for call in (checks.import_optional, checks.check_installed):
        with pytest.raises(checks.MissingDependency) as error:
            call(module, "X")
        assert str(error.value) == expected and isinstance(error.value, ImportError)


def test_abx_without_its_package_is_refused_in_one_line(tmp_path, capsys, monkeypatch, no_models):
    item_file, audio = tmp_path / "x.item", tmp_path / "audio"
    audio.mkdir()
    soundfile.write(audio / "a.wav", 0.1 * np.ones(8000, dtype=np.float32), 16000)
    item_file.write_text("#file onset offset #phone prev-phone next-phone speaker\na 0.1 0.2 a b c s1\n")
    monkeypatch.setitem(sys.modules, "zrc_abx2", None)
    assert cli.main(["abx", str(item_file), str(audio), str(tmp_path / "out"), "--k", "100", "--lmbda", "600"]) == 2
    assert capsys.readouterr().err == ('dpslm: error: dpslm abx needs the optional package zerospeech-libriabx2: '
                                       'pip install "dpslm-utils[eval]" (in a clone: pip install -e ".[eval]")\n')


def test_torchrun_shards_files_across_two_ranks(corpus, tmp_path):
    (corpus / "broken.wav").unlink()
    out = tmp_path / "dist"
    env = {**os.environ, "DPSLM_WEIGHTS": "random-tiny", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
               "-m", "dpslm_utils", "encode", str(corpus), str(out), "--k", "100", "--lmbda", "600", "--quiet"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "[rank 0/2] 3 audio files" in result.stdout and "[rank 1/2] 3 audio files" in result.stdout
    assert "2 for this process" in result.stdout and "1 for this process" in result.stdout
    for name in ("a.flac", "c.wav", "sub/b.wav"):
        stem = out / Path(name).with_suffix("")
        table = np.load(stem.with_name(stem.name + ".npy"))
        assert table[:, 0].tolist() == _expected_units(corpus / name).units.tolist()


def test_score_prints_one_loglikelihood_per_file(corpus, capsys):
    files = [str(corpus / "a.flac"), str(corpus / "broken.wav")]
    assert cli.main(["score", *files, "--k", "100", "--lmbda", "600"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    score, name = lines[-1].split("\t")
    model = dpslm_utils.DPSLM.from_pretrained(100, 600, device="cpu")
    wav, sr = dpslm_utils.load_audio(corpus / "a.flac")
    assert name == files[0] and float(score) == pytest.approx(model.loglikelihood(wav, sr), abs=1e-3)


def test_resynthesize_writes_n_files(corpus, tmp_path):
    prefix = tmp_path / "re" / "out"
    assert cli.main(["resynthesize", str(corpus / "a.flac"), str(prefix), "--k", "100", "--lmbda", "600", "-n", "2",
                     "--seed", "0"]) == 0
    for i in range(2):
        wav, sr = soundfile.read(f"{prefix}_{i}.wav")
        assert sr == 24000 and len(wav) % 600 == 0 and np.abs(wav).max() > 0




def test_demo_falls_back_to_random_weights_and_writes_outputs(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DPSLM_WEIGHTS")  # pretrained mode: the download fails here, the demo must go on
    assert cli.main(["demo", "--out", str(tmp_path / "demo"), "--k", "100", "--lmbda", "600"]) == 0
    out = capsys.readouterr().out
    assert "RANDOM TINY WEIGHTS" in out and "could not download" in out
    written = sorted(p.name for p in (tmp_path / "demo").iterdir())
    weight_free = [name for name in written if re.fullmatch(r"weightfree_lambda_\d+\.wav", name)]
    assert written == sorted(["demo.png", "original.wav", "resynthesis_0.wav", "resynthesis_1.wav", "units.txt",
                              "rate_distortion.png", "weightfree_logmel.wav", *weight_free])  # fmt: skip
    assert len(weight_free) == len(demo.DEMO_UNITS_PER_SECOND)
    assert "WEIGHT-FREE resynthesis: no model weights at all" in out and "come from these random models" in out
    units = (tmp_path / "demo" / "units.txt").read_text().split()
    assert units and all(u.startswith("u") and 0 <= int(u[1:]) < 100 for u in units)
    assert os.environ.get("DPSLM_WEIGHTS") == "random-tiny"


def test_the_offline_demos_weight_free_audio_is_speech_whose_coarseness_follows_lambda(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path), "--k", "100", "--lmbda", "600", "--weights", "random-tiny"]) == 0
    printed = capsys.readouterr().out
    fbank = dpslm_utils.feature_encoder("fbank")
    original = fbank(*dpslm_utils.example_audio("librispeech", official=False))
    errors = []
    for path in sorted(tmp_path.glob("weightfree_lambda_*.wav"), key=lambda p: int(p.stem.rsplit("_", 1)[1])):
        wav, sr = soundfile.read(path, dtype="float32")
        assert sr == 16000 and len(wav) == 320 * original.shape[0]
        assert np.sqrt(np.mean(wav**2)) > 0.01, path.name  # not silence
        assert f"{path.name}: λ = " in printed
        errors.append((fbank(torch.from_numpy(wav), sr) - original).square().mean().item())
    assert len(errors) == 3 and errors == sorted(errors)  # bigger λ, further from the original spectrum
    copy, sr = soundfile.read(tmp_path / "weightfree_logmel.wav", dtype="float32")
    assert (fbank(torch.from_numpy(copy), sr) - original).square().mean().item() < errors[0]
