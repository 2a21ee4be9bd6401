"""``python -m dpslm_utils``: encode (resumable, sharded, robust to bad files), resynthesize, score, demo."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

import dpslm_utils
from dpslm_utils import cli

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
    parts = [cli.shard(items, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == items and parts[1] == [1, 4, 7, 10]
    with pytest.raises(ValueError):
        cli.shard(items, 3, 3)


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


def test_encode_refuses_a_rerun_with_other_settings(corpus, tmp_path):
    (corpus / "broken.wav").unlink()
    out = tmp_path / "out"
    assert cli.main(["encode", str(corpus), str(out), "--k", "100", "--lmbda", "600", "--quiet"]) == 0
    with pytest.raises(SystemExit, match=r"lmbda: 600.0 there, 1500.0 now"):
        cli.main(["encode", str(corpus), str(out), "--k", "100", "--lmbda", "1500", "--quiet"])
    with pytest.raises(SystemExit, match="command: 'encode' there, 'encode-codec' now"):
        cli.main(["encode-codec", str(corpus), str(out), "--quiet"])


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


def test_encode_refuses_an_unwritable_out_dir(corpus, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    with pytest.raises(SystemExit, match="cannot write to"):
        cli.main(["encode", str(corpus), str(blocker / "out"), "--k", "100", "--lmbda", "0"])


def test_encode_refuses_bad_settings(corpus, tmp_path):
    with pytest.raises(ValueError, match="valid k"):
        cli.main(["encode", str(corpus), str(tmp_path / "o"), "--k", "300", "--lmbda", "0", "--quiet"])
    with pytest.raises(SystemExit, match="not a directory"):
        cli.main(["encode", str(tmp_path / "missing"), str(tmp_path / "o")])


def test_torchrun_shards_files_across_two_ranks(corpus, tmp_path):
    (corpus / "broken.wav").unlink()
    out = tmp_path / "dist"
    env = {**os.environ, "DPSLM_WEIGHTS": "random-tiny", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
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


def test_score_rejects_invalid_combination(capsys):
    with pytest.raises(SystemExit):
        cli.main(["score", "x.wav", "--k", "500", "--lmbda", "1"])
    assert "valid lmbda for k=500" in capsys.readouterr().err


def test_demo_falls_back_to_random_weights_and_writes_outputs(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DPSLM_WEIGHTS")  # pretrained mode: the download fails here, the demo must go on
    assert cli.main(["demo", "--out", str(tmp_path / "demo"), "--k", "100", "--lmbda", "600"]) == 0
    out = capsys.readouterr().out
    assert "RANDOM TINY WEIGHTS" in out and "could not download" in out
    written = sorted(p.name for p in (tmp_path / "demo").iterdir())
    assert written == ["demo.png", "original.wav", "resynthesis_0.wav", "resynthesis_1.wav", "units.txt"]
    units = (tmp_path / "demo" / "units.txt").read_text().split()
    assert units and all(u.startswith("u") and 0 <= int(u[1:]) < 100 for u in units)
    assert os.environ.get("DPSLM_WEIGHTS") == "random-tiny"
