"""``dpslm train-codebook`` and ``dpslm encode --features/--codebook/--units-per-second``: weight-free units."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import dpslm_utils
from dpslm_utils import cli

pytestmark = pytest.mark.usefixtures("random_tiny")


@pytest.fixture
def corpus(tmp_path) -> Path:
    """Twelve toy-language recordings, two of them in a sub-folder."""
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    for i, utterance in enumerate(dpslm_utils.load_toy_language(max_train=12).train):
        shutil.copy(utterance.path, root / ("sub" if i < 2 else ".") / utterance.path.name)
    return root


def _features(corpus: Path, name: str) -> dict[str, torch.Tensor]:
    encoder = dpslm_utils.feature_encoder(name)
    files = cli.find_audio(corpus)
    return {f.relative_to(corpus).with_suffix("").as_posix(): encoder(*dpslm_utils.load_audio(f)) for f in files}


def _written_units(out: Path) -> dict[str, torch.Tensor]:
    """Per-frame units of every .npy under ``out``, by relative path without suffix."""
    return {p.relative_to(out).with_suffix("").as_posix(): dpslm_utils.load_frame_units(p) for p in out.rglob("*.npy")}


def _train(corpus: Path, out_file: Path, k: int = 16, features: str = "mfcc", *extra: str) -> int:
    return cli.main(["train-codebook", str(corpus), str(out_file), "--k", str(k), "--features", features, "--quiet", *extra])


# -- train-codebook --------------------------------------------------------------------------------


def test_train_codebook_is_k_means_of_the_features_and_records_them(corpus, tmp_path, capsys):
    out_file = tmp_path / "codebooks" / "mfcc16.pt"
    assert _train(corpus, out_file, 16, "mfcc", "--seed", "3") == 0
    frames = torch.cat(list(_features(corpus, "mfcc").values()))
    assert f"12 files, {frames.shape[0] / 50:.1f} s ({frames.shape[0]} frames) -> 16 centres of mfcc features (D = 39)" in capsys.readouterr().out
    codebook, details = dpslm_utils.read_codebook(out_file)
    torch.testing.assert_close(codebook, dpslm_utils.train_codebook(frames, 16, seed=3))
    assert details == {"features": {"features": "mfcc", "normalize": True, "deltas": True}, "k": 16, "seed": 3,
                       "iterations": 100, "frames": frames.shape[0], "files": 12}  # fmt: skip
    assert "RANDOM WEIGHTS" not in capsys.readouterr().out  # MFCCs have no weights, random or not


def test_train_codebook_never_replaces_a_file_unasked(corpus, tmp_path, capsys):
    out_file = tmp_path / "mine.pt"
    out_file.write_bytes(b"my own file")
    assert _train(corpus, out_file) == 2
    assert capsys.readouterr().err == f"dpslm: error: {out_file} exists; pass --overwrite to replace it\n"
    assert out_file.read_bytes() == b"my own file"
    assert _train(corpus, out_file, 16, "fbank", "--overwrite") == 0
    assert dpslm_utils.read_codebook(out_file)[0].shape == (16, 80)


def test_train_codebook_with_more_centres_than_frames_fails_without_a_file(corpus, tmp_path, capsys):
    out_file = tmp_path / "big.pt"
    assert _train(corpus, out_file, 100000) == 1
    assert "cannot fit k=100000 centres" in capsys.readouterr().err
    assert list(tmp_path.glob("*.pt*")) == [] and not list(tmp_path.glob(".big*"))


# -- encode with weight-free features --------------------------------------------------------------


@pytest.fixture
def mfcc_codebook(corpus, tmp_path) -> Path:
    path = tmp_path / "mfcc16.pt"
    assert _train(corpus, path) == 0
    return path


def test_encode_with_mfcc_features_writes_the_dpdp_units_of_the_library(corpus, mfcc_codebook, tmp_path, capsys):
    out = tmp_path / "units"
    argv = ["encode", str(corpus), str(out), "--features", "mfcc", "--codebook", str(mfcc_codebook), "--lmbda", "40"]
    assert cli.main([*argv, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "encoded 12 files with mfcc features, k=16, lmbda=40" in printed and "RANDOM WEIGHTS" not in printed
    codebook = dpslm_utils.read_codebook(mfcc_codebook)[0]
    expected = {name: dpslm_utils.dpdp(x, codebook, 40.0) for name, x in _features(corpus, "mfcc").items()}
    written = _written_units(out)
    assert written.keys() == expected.keys() and all(torch.equal(written[n], expected[n]) for n in expected)
    record = json.loads((out / "dpslm_settings.json").read_text())
    digest = dpslm_utils.checkpoints.sha256_of(mfcc_codebook)
    assert record == {"command": "encode", "k": 16, "lmbda": 40.0, "num_neighbors": None, "features": "mfcc",
                      "codebook": f"sha256:{digest}", "package_version": record["package_version"]}  # fmt: skip


def test_a_folder_is_never_mixed_across_features_or_codebooks(corpus, mfcc_codebook, tmp_path, capsys):
    other_codebook = tmp_path / "other.pt"
    assert _train(corpus, other_codebook, 16, "mfcc", "--seed", "1") == 0
    fbank_codebook = tmp_path / "fbank.pt"
    assert _train(corpus, fbank_codebook, 16, "fbank") == 0
    out = str(tmp_path / "units")
    mfcc = ["--features", "mfcc", "--codebook", str(mfcc_codebook), "--lmbda", "40", "--quiet"]
    assert cli.main(["encode", str(corpus), out, *mfcc]) == 0
    capsys.readouterr()
    refusals = [
        (["--features", "mfcc", "--codebook", str(other_codebook), "--lmbda", "40"], r"codebook: 'sha256:\w+' there, 'sha256:\w+' now"),
        (["--features", "fbank", "--codebook", str(fbank_codebook), "--lmbda", "40"], "features: 'mfcc' there, 'fbank' now"),
        (["--k", "100", "--lmbda", "40"], "codebook: 'sha256:\\w+' there, None now; features: 'mfcc' there, None now"),
        (["--features", "mfcc", "--codebook", str(mfcc_codebook), "--units-per-second", "10"], "units_per_second: None there, 10.0 now"),
    ]
    before = {p: p.stat().st_mtime_ns for p in Path(out).rglob("*")}
    for options, message in refusals:
        assert cli.main(["encode", str(corpus), out, *options, "--quiet"]) == 2, options
        err = capsys.readouterr().err
        assert re.search(message, err) and "holds the output of other settings" in err, (message, err)
    assert {p: p.stat().st_mtime_ns for p in Path(out).rglob("*")} == before


def test_a_folder_of_todays_encode_keeps_todays_record_and_refuses_weight_free_units(corpus, mfcc_codebook, tmp_path, capsys):
    out = tmp_path / "wavlm"
    assert cli.main(["encode", str(corpus), str(out), "--k", "100", "--lmbda", "600", "--quiet"]) == 0
    record = json.loads((out / "dpslm_settings.json").read_text())
    assert sorted(record) == ["command", "k", "lmbda", "num_neighbors", "package_version", "weights"]
    capsys.readouterr()
    argv = ["encode", str(corpus), str(out), "--features", "mfcc", "--codebook", str(mfcc_codebook), "--lmbda", "600"]
    assert cli.main(argv) == 2
    assert "features: None there, 'mfcc' now" in capsys.readouterr().err


def test_units_per_second_finds_lambda_once_and_resumes_with_it(corpus, mfcc_codebook, tmp_path, capsys):
    out = tmp_path / "rate"
    argv = ["encode", str(corpus), str(out), "--features", "mfcc", "--codebook", str(mfcc_codebook),
            "--units-per-second", "12", "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0
    lmbda = json.loads((out / "dpslm_settings.json").read_text())["lmbda"]
    assert f"λ = {lmbda:.6g} gives 12 units/s (± 1 %) over 12 files" in capsys.readouterr().out
    codebook = dpslm_utils.read_codebook(mfcc_codebook)[0]
    features = _features(corpus, "mfcc")
    assert lmbda == dpslm_utils.lambda_for_rate(list(features.values()), codebook, 12.0)
    rate = dpslm_utils.bitrate(list(_written_units(out).values())).units_per_second
    assert abs(rate - 12.0) <= 0.12

    # A resumed run, with one output lost and one more file: the recorded λ, not a new one
    next(out.rglob("*.npy")).unlink()
    shutil.copy(dpslm_utils.load_toy_language().validation[0].path, corpus / "extra.ogg")
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"λ = {lmbda:.6g}, found for 12 units/s by the first run" in printed and "2 to do" in printed
    extra = dpslm_utils.feature_encoder("mfcc")(*dpslm_utils.load_audio(corpus / "extra.ogg"))
    assert torch.equal(_written_units(out)["extra"], dpslm_utils.dpdp(extra, codebook, lmbda))


def test_units_per_second_with_wavlm_and_a_released_codebook(corpus, tmp_path, capsys):
    out = tmp_path / "wavlm-rate"
    assert cli.main(["encode", str(corpus), str(out), "--k", "100", "--units-per-second", "15", "--quiet"]) == 0
    record = json.loads((out / "dpslm_settings.json").read_text())
    assert record["units_per_second"] == 15.0 and record["weights"] == "random-tiny" and "features" not in record
    rate = dpslm_utils.bitrate(list(_written_units(out).values())).units_per_second
    assert abs(rate - 15.0) <= 0.15


def test_an_unreachable_rate_fails_in_one_line_without_outputs(corpus, mfcc_codebook, tmp_path, capsys):
    out = tmp_path / "fast"
    argv = ["encode", str(corpus), str(out), "--features", "mfcc", "--codebook", str(mfcc_codebook),
            "--units-per-second", "49", "--quiet"]  # fmt: skip
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("dpslm: error: 49 units/s is above the highest rate of these features") and err.count("\n") == 1
    assert not out.exists() or not any(out.iterdir())


def _refusals(corpus: Path, mfcc_codebook: Path, tmp: Path) -> list[tuple[list[str], str]]:
    out = str(tmp / "out")
    wrong_dim = tmp / "wrong_dim.pt"
    torch.save({"codebook": torch.zeros(8, 5)}, wrong_dim)
    not_a_codebook = tmp / "model.pt"
    torch.save({"weights": torch.zeros(3)}, not_a_codebook)
    mfcc = ["--features", "mfcc", "--codebook", str(mfcc_codebook)]
    return [
        (["encode", str(corpus), out, "--features", "mfcc", "--lmbda", "40"], "--features mfcc needs --codebook"),
        (["encode", str(corpus), out, *mfcc, "--k", "16"], "--k and --codebook: the codebook file sets k"),
        (["encode", str(corpus), out, *mfcc, "--lmbda", "4", "--units-per-second", "9"], "not allowed with argument --lmbda"),
        (["encode", str(corpus), out, *mfcc, "--units-per-second", "0"], "--units-per-second must be > 0"),
        (["encode", str(corpus), out, *mfcc, "--units-per-second", "-2"], "--units-per-second must be >= 0"),
        (["encode", str(corpus), out, *mfcc, "--num-neighbors", "17"], "--num-neighbors must be an integer from 1 to 16"),
        (["encode", str(corpus), out, "--features", "fbank", "--codebook", str(mfcc_codebook)],
         "mfcc16.pt is a codebook of mfcc features, not fbank: pass --features mfcc"),
        (["encode", str(corpus), out, "--features", "mfcc", "--codebook", str(wrong_dim)],
         "wrong_dim.pt has entries of dimension 5, but mfcc features have 39"),
        (["encode", str(corpus), out, "--features", "mfcc", "--codebook", str(not_a_codebook)],
         "model.pt is not a WavLM-codebooks k-means codebook checkpoint"),
        (["encode", str(corpus), out, "--features", "mfcc", "--codebook", str(tmp / "gone.pt")], "codebook file .*gone.pt does not exist"),
        (["encode", str(corpus), out, "--features", "hubert"], "argument --features: invalid choice: 'hubert'"),
        (["train-codebook", str(corpus), out + "/c.pt", "--k", "0"], "--k must be an integer >= 1, got 0"),
        (["train-codebook", str(corpus), out + "/c.pt", "--k", "5", "--iterations", "-1"], "--iterations must be an integer >= 0"),
        (["train-codebook", str(tmp / "missing"), out + "/c.pt", "--k", "5"], "missing does not exist"),
        (["train-codebook", str(corpus), str(tmp), "--k", "5"], "is a folder; give the path of the codebook file"),
        (["train-codebook", str(corpus), out + "/c.pt", "--k", "5", "--features", "lpc"], "invalid choice: 'lpc'"),
    ]


def test_every_refusal_is_one_line_with_status_2_before_any_output(corpus, mfcc_codebook, tmp_path, capsys):
    for argv, message in _refusals(corpus, mfcc_codebook, tmp_path):
        assert cli.main(argv) == 2, argv
        captured = capsys.readouterr()
        lines = captured.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("dpslm: error: "), (argv, captured.err)
        assert re.search(message, lines[0]), (message, lines[0])
        assert captured.out == "" and not (tmp_path / "out").exists(), argv


def test_a_codebook_of_random_tiny_wavlm_is_refused_with_the_released_wavlm(corpus, tmp_path, capsys, monkeypatch):
    path = tmp_path / "wavlm.pt"
    assert _train(corpus, path, 8, "wavlm") == 0
    assert dpslm_utils.read_codebook(path)[1]["features"] == {"features": "wavlm", "layer": 11, "random_weights": True}
    monkeypatch.delenv("DPSLM_WEIGHTS")
    assert cli.main(["encode", str(corpus), str(tmp_path / "o"), "--codebook", str(path), "--lmbda", "1"]) == 2
    assert "clusters wavlm features with other settings ({'features': 'wavlm', 'layer': 11, 'random_weights': True})" in capsys.readouterr().err


def test_weight_free_units_are_written_as_numpy_tables(corpus, mfcc_codebook, tmp_path):
    out = tmp_path / "u"
    cli.main(["encode", str(corpus), str(out), "--features", "mfcc", "--codebook", str(mfcc_codebook), "--lmbda", "40",
              "--format", "npy", "--quiet"])  # fmt: skip
    table = np.load(next(out.rglob("*.npy")))
    assert table.dtype == np.int64 and table.shape[1] == 2 and (table[:, 0] < 16).all() and (table[:, 1] >= 1).all()
