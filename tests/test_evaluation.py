"""ZeroSpeech metrics (hand-derived cases), unit-LM scoring, the sLM21 pipeline, phone ABX."""

import csv
import itertools
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dpslm_utils import PAPER_NUM_NEIGHBORS, UnitLM, cli, evaluation
from dpslm_utils.audio import load_mono
from dpslm_utils.corpora import slm21_stand_in_dir
from dpslm_utils.evaluation import (
    bootstrap_interval,
    evaluate_zerospeech,
    lexical_accuracy,
    pair_accuracy,
    paired_bootstrap_interval,
    phone_normalized_mutual_information,
    read_gold,
    syntactic_accuracy,
    unit_phone_purity,
)
from dpslm_utils.pipeline import EncodedSpeech
from dpslm_utils.settings_record import SettingsMismatch
from dpslm_utils.toy_language import TOY_LANGUAGE_DIR

SLM21 = slm21_stand_in_dir()


def write_gold(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def lexical_rows(items):
    """items: (id, frequency, voices) -> gold rows named w<id><voice> / n<id><voice>."""
    rows = []
    for item, frequency, voices in items:
        for voice in voices:
            rows.append({"id": item, "filename": f"w{item}{voice}", "voice": voice, "frequency": frequency,
                         "word": f"word{item}", "phones": "a b", "length": 2, "correct": 1})
            rows.append({"id": item, "filename": f"n{item}{voice}", "voice": voice, "frequency": "",
                         "word": "", "phones": "a c", "length": 2, "correct": 0})
    return rows


# -- official metrics on hand-made gold files ----------------------------------------------------------


def test_lexical_accuracy_pairs_ties_voice_means_and_official_bands(tmp_path):
    gold = read_gold(write_gold(tmp_path / "gold.csv", lexical_rows(
        [(1, 3, "xy"), (2, 0, "xy"), (3, 5, "xy"), (4, 100, "x")])))
    scores = {
        "w1x": -1.0, "n1x": -2.0,  # word wins: 1
        "w1y": -2.0, "n1y": -2.0,  # tie: 0.5          -> item 1 = 0.75 (frequency 3: band "1-5")
        "w2x": -3.0, "n2x": -1.0,  # non-word wins: 0
        "w2y": -1.0, "n2y": -3.0,  # 1                 -> item 2 = 0.5 (frequency 0: "oov")
        "w3x": 0.0, "n3x": -1.0, "w3y": 0.0, "n3y": -1.0,  # item 3 = 1 (frequency 5: "6-20", half-open bands)
        "w4x": -5.0, "n4x": -4.0,  # item 4 = 0 (frequency 100: ">100")
    }
    result = lexical_accuracy(gold, scores)
    assert [p["score"] for p in result["pairs"]] == [1, 0.5, 0, 1, 1, 1, 0]
    assert [(i["id"], i["score"]) for i in result["by_id"]] == [("1", 0.75), ("2", 0.5), ("3", 1.0), ("4", 0.0)]
    assert result["overall"] == pytest.approx((0.75 + 0.5 + 1 + 0) / 4)
    assert {band: g["score"] for band, g in result["by_frequency"].items()} == {
        "oov": 0.5, "1-5": 0.75, "6-20": 1.0, ">100": 0.0}
    assert result["in_vocab"] == pytest.approx((0.75 + 1 + 0) / 3)
    assert result["by_frequency"]["oov"]["std"] is None


def test_band_statistics_are_the_sample_mean_and_standard_deviation(tmp_path):
    gold = read_gold(write_gold(tmp_path / "gold.csv", lexical_rows([(i, 10, "x") for i in range(1, 5)])))
    wins = [1, 1, 0, 1]
    scores = {}
    for i, win in zip(range(1, 5), wins):
        scores[f"w{i}x"], scores[f"n{i}x"] = (0.0, -1.0) if win else (-1.0, 0.0)
    band = lexical_accuracy(gold, scores)["by_frequency"]["6-20"]
    assert band["n"] == 4 and band["score"] == 0.75
    assert band["std"] == pytest.approx(np.std(wins, ddof=1))


def test_syntactic_accuracy_by_type_and_position_pairing(tmp_path):
    rows = []
    for item, kind, voices in ((1, "agreement", "xy"), (2, "agreement", "x"), (3, "islands", "x")):
        for voice in voices:
            for correct in (1, 0):
                rows.append({"id": item, "filename": f"s{item}{voice}{correct}", "voice": voice, "type": kind,
                             "subtype": kind + "_1", "correct": correct, "transcription": "..."})
    gold = read_gold(write_gold(tmp_path / "gold.csv", rows))
    scores = {"s1x1": -1, "s1x0": -2, "s1y1": -3, "s1y0": -2, "s2x1": -1, "s2x0": -1, "s3x1": -9, "s3x0": -2}
    result = syntactic_accuracy(gold, scores)
    assert [p["score"] for p in result["pairs"]] == [1, 0, 0.5, 0]
    assert [(i["id"], i["score"]) for i in result["by_id"]] == [("1", 0.5), ("2", 0.5), ("3", 0.0)]
    assert result["by_type"]["agreement"] == {"n": 2, "score": 0.5, "std": 0.0}
    assert result["overall"] == pytest.approx(1 / 3)

    swapped = rows[:]
    swapped[1], swapped[3] = swapped[3], swapped[1]  # the i-th incorrect row no longer matches the i-th correct one
    with pytest.raises(ValueError, match="out of order"):
        syntactic_accuracy(read_gold(write_gold(tmp_path / "bad.csv", swapped)), scores)


def test_bad_gold_files_and_missing_scores_are_refused(tmp_path):
    write_gold(tmp_path / "a.csv", [{"filename": "x", "correct": 1}])
    with pytest.raises(ValueError, match="needs the columns filename, correct, id, voice"):
        read_gold(tmp_path / "a.csv")
    write_gold(tmp_path / "b.csv", [{"filename": "x", "correct": 2, "id": 1, "voice": "v"}])
    with pytest.raises(ValueError, match="line 2: correct must be 0 or 1"):
        read_gold(tmp_path / "b.csv")
    gold = read_gold(write_gold(tmp_path / "c.csv", lexical_rows([(1, 3, "x")])))
    with pytest.raises(ValueError, match="1 gold files have no score"):
        lexical_accuracy(gold, {"w1x": 0.0})
    with pytest.raises(ValueError, match="missing \\['type', 'subtype'\\]"):
        syntactic_accuracy(gold, {"w1x": 0.0, "n1x": 0.0})


def test_bootstrap_interval_matches_the_normal_approximation():
    values = [0.0, 1.0] * 200  # mean 0.5, standard error sqrt(0.25 / 400) = 0.025
    low, high = bootstrap_interval(values, confidence=0.95, num_samples=4000)
    assert low < 0.5 < high
    assert (high - low) / 2 == pytest.approx(1.96 * 0.025, rel=0.1)
    assert bootstrap_interval([0.7] * 10) == pytest.approx((0.7, 0.7))
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_interval([])


def test_paired_bootstrap_interval_of_a_constant_difference_is_that_difference():
    rng = np.random.default_rng(0)
    b = rng.integers(0, 2, size=50).astype(float)
    assert paired_bootstrap_interval(b + 0.25, b) == pytest.approx((0.25, 0.25))  # every item moves by 0.25
    assert paired_bootstrap_interval(b, b) == (0.0, 0.0)
    with pytest.raises(ValueError, match=r"equal shapes .* got \[3\] and \[2\]"):
        paired_bootstrap_interval([1, 0, 1], [1, 0])


def test_paired_bootstrap_interval_is_antisymmetric_and_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.3, 1.0, size=2000), rng.normal(0.0, 1.0, size=2000)
    low, high = paired_bootstrap_interval(a, b, num_samples=4000)
    minus_high, minus_low = paired_bootstrap_interval(b, a, num_samples=4000)
    assert (low, high) == pytest.approx((-minus_low, -minus_high))  # the same resamples, negated
    standard_error = np.std(a - b) / np.sqrt(len(a))  # closed form for the mean of independent differences
    assert (low + high) / 2 == pytest.approx(np.mean(a - b), abs=0.2 * standard_error)
    assert (high - low) / 2 == pytest.approx(1.96 * standard_error, rel=0.1)


def test_pairing_removes_what_two_scores_of_one_item_share():
    """Item difficulty shared by both models cancels in the paired interval but not in two separate ones."""
    rng = np.random.default_rng(2)
    difficulty = rng.normal(0.0, 1.0, size=200)
    a, b = difficulty + 0.2 + rng.normal(0, 0.1, size=200), difficulty + rng.normal(0, 0.1, size=200)
    paired_low, paired_high = paired_bootstrap_interval(a, b)
    (a_low, a_high), (b_low, b_high) = bootstrap_interval(a), bootstrap_interval(b)
    assert paired_low > 0  # the 0.2 is resolved when the items are paired ...
    assert a_low < b_high  # ... while the two separate intervals overlap
    assert paired_high - paired_low < 0.2 * ((a_high - a_low) + (b_high - b_low))


def test_unit_phone_purity_on_hand_counted_frames():
    units, phones = [0, 0, 0, 1, 1, 2], ["a", "a", "b", "b", "b", "c"]
    assert unit_phone_purity(units, phones) == pytest.approx(5 / 6)  # unit 0 -> a (2 of 3), 1 -> b (2), 2 -> c (1)
    assert unit_phone_purity([7, 7, 3, 3, 9, 9], list("aabbcc")) == 1.0  # any one-to-one renaming
    assert unit_phone_purity([0] * 6, list("aaabbc")) == pytest.approx(3 / 6)  # one unit: the commonest phone's share
    with pytest.raises(ValueError, match="equally long.*shapes \\[3\\] and \\[2\\]"):
        unit_phone_purity([0, 1, 2], ["a", "b"])


def test_phone_normalized_mutual_information_in_closed_form():
    def entropy(*p):
        return -sum(x * math.log(x) for x in p if x > 0)

    assert phone_normalized_mutual_information([5, 5, 1, 1], list("aabb")) == pytest.approx(1.0)  # unit = phone
    assert phone_normalized_mutual_information(list(range(6)), list("aabbcc")) == pytest.approx(1.0)  # finer units
    assert phone_normalized_mutual_information([0, 0, 1, 1], list("abab")) == pytest.approx(0.0, abs=1e-12)  # independent
    # unit 0 covers a, a; unit 1 covers a, b: I = H(phone) − H(phone | unit) = H(3/4, 1/4) − ½ H(½, ½)
    expected = (entropy(0.75, 0.25) - 0.5 * entropy(0.5, 0.5)) / entropy(0.75, 0.25)
    assert phone_normalized_mutual_information([0, 0, 1, 1], list("aaab")) == pytest.approx(expected)
    with pytest.raises(ValueError, match="at least two phones"):
        phone_normalized_mutual_information([0, 1], ["a", "a"])


# -- scoring with a unit LM ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ulm():
    torch.manual_seed(0)
    from dpslm_utils.transformer import ModelArgs, Transformer

    args = ModelArgs(dim=32, n_layers=2, head_dim=8, hidden_dim=64, n_heads=4, n_kv_heads=2, norm_eps=1e-5,
                     vocab_size=21, rope_theta=10000.0)
    return UnitLM(Transformer(args, output_bias=False)).eval()


def test_pair_accuracy_margins_are_loglikelihood_differences(ulm):
    pairs = [([1, 2, 3], [3, 2, 1, 4]), ([5, 6], [5, 6]), ([7, 8, 9, 10], [0])]
    result = pair_accuracy(ulm, pairs)
    expected = [ulm.loglikelihood(good) - ulm.loglikelihood(bad) for good, bad in pairs]
    assert result.margins == pytest.approx(expected, abs=1e-4)
    assert result.per_pair == [1.0 if m > 0 else 0.0 if m < 0 else 0.5 for m in result.margins]
    assert result.per_pair[1] == 0.5  # identical sequences tie
    assert result.accuracy == pytest.approx(sum(result.per_pair) / 3)
    mean = pair_accuracy(ulm, pairs, reduction="mean")
    assert mean.margins[0] == pytest.approx(ulm.loglikelihood([1, 2, 3]) / 3 - ulm.loglikelihood([3, 2, 1, 4]) / 4,
                                            abs=1e-4)
    with pytest.raises(ValueError, match="reduction must be one of"):
        pair_accuracy(ulm, pairs, reduction="max")


class FakeEncoder:
    """Units from the audio itself (its loudest samples' positions mod k): deterministic, no model."""

    def __init__(self, k, version=0):
        self.k, self.calls = k, 0
        self.cache_identity = {"fake": k, "version": version}

    def encode_batch(self, wavs, sample_rate):
        self.calls += len(wavs)
        out = []
        for wav in wavs:
            units = torch.unique_consecutive(torch.topk(wav.abs(), 12).indices % self.k)
            out.append(EncodedSpeech(units, torch.ones_like(units), units))
        return out


def test_evaluate_zerospeech_on_the_synthetic_set_matches_its_submission_and_resumes(tmp_path, ulm):
    encoder = FakeEncoder(ulm.k)
    results = evaluate_zerospeech(SLM21, tmp_path, encoder=encoder, ulm=ulm, splits=("dev", "test"), progress=False)
    flac = {task: sorted(p.stem for p in (SLM21 / task / "dev").glob("*.flac")) for task in ("lexical", "syntactic")}
    for task, accuracy in (("lexical", lexical_accuracy), ("syntactic", syntactic_accuracy)):
        lines = (tmp_path / task / "dev.txt").read_text().splitlines()
        submitted = {stem: float(score) for stem, score in (line.split(" ") for line in lines)}
        assert sorted(submitted) == flac[task]
        units = {s: torch.from_numpy(np.load(tmp_path / "units" / task / "dev" / f"{s}.npy")) for s in submitted}
        for stem in list(submitted)[:3]:
            assert submitted[stem] == pytest.approx(ulm.loglikelihood(units[stem]), abs=1e-4)
        expected = accuracy(read_gold(SLM21 / task / "dev" / "gold.csv"), submitted)
        assert results[task]["dev"]["overall"] == expected["overall"]
    assert results["lexical"]["test"] == {"files": 4, "submission": str(tmp_path / "lexical" / "test.txt")}
    assert json.loads((tmp_path / "results.json").read_text())["syntactic"]["dev"]["overall"] == \
        results["syntactic"]["dev"]["overall"]

    calls = encoder.calls
    again = evaluate_zerospeech(SLM21, tmp_path, encoder=encoder, ulm=ulm, splits=("dev",), reduction="mean",
                                progress=False)
    assert encoder.calls == calls  # every file's units came from the cache
    stem = flac["lexical"][0]
    units = torch.from_numpy(np.load(tmp_path / "units" / "lexical" / "dev" / f"{stem}.npy"))
    mean_line = next(l for l in (tmp_path / "lexical" / "dev.txt").read_text().splitlines() if l.startswith(stem))
    assert float(mean_line.split()[1]) == pytest.approx(ulm.loglikelihood(units) / len(units), abs=1e-5)
    assert again["settings"]["reduction"] == "mean"


def test_evaluate_zerospeech_explains_a_wrong_layout(tmp_path, ulm):
    with pytest.raises(FileNotFoundError, match="expected the sLM21 layout"):
        evaluate_zerospeech(tmp_path, tmp_path / "out", encoder=FakeEncoder(ulm.k), ulm=ulm)
    with pytest.raises(ValueError, match="splits must come from"):
        evaluate_zerospeech(SLM21, tmp_path / "out", encoder=FakeEncoder(ulm.k), ulm=ulm, splits=("train",))


def test_zerospeech_command_with_random_tiny_models(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DPSLM_WEIGHTS", "random-tiny")
    dataset = tmp_path / "slm21"
    shutil.copytree(SLM21 / "syntactic", dataset / "syntactic")
    out = tmp_path / "out"
    assert cli.main(["zerospeech", str(dataset), str(out), "--k", "100", "--lmbda", "600", "--quiet"]) == 0
    printed = capsys.readouterr().out
    overall = json.loads((out / "results.json").read_text())["syntactic"]["dev"]["overall"]
    assert f"{overall * 100:.2f}%" in printed and "RANDOM WEIGHTS" in printed
    assert len((out / "syntactic" / "dev.txt").read_text().splitlines()) == 16
    assert cli.main(["zerospeech", str(dataset), str(out), "--k", "100", "--lmbda", "1500", "--quiet"]) == 2
    assert re.fullmatch("dpslm: error: .*holds the output of other settings \\(lmbda: 600.0 there, 1500.0 now\\).*\n",
                        capsys.readouterr().err)
    assert cli.main(["zerospeech", str(dataset), str(tmp_path / "o2"), "--k", "100", "--lmbda", "601"]) == 2
    assert re.search("^dpslm: error: no pretrained models for k=100, lmbda=601.*--ulm PATH", capsys.readouterr().err)
    assert not (tmp_path / "o2").exists()  # refused before the output folder was made


def test_zerospeech_command_scores_with_a_unit_lm_of_your_own(tmp_path, monkeypatch, capsys):
    from dpslm_utils import random_tiny

    monkeypatch.setenv("DPSLM_WEIGHTS", "random-tiny")
    random_tiny.write("unit_lm", tmp_path / "mine.pt", k=200)
    dataset = tmp_path / "slm21"
    shutil.copytree(SLM21 / "lexical" / "test", dataset / "lexical" / "test")
    assert cli.main(["zerospeech", str(dataset), str(tmp_path / "a"), "--k", "100", "--splits", "test",
                     "--ulm", str(tmp_path / "mine.pt")]) == 2
    assert re.fullmatch("dpslm: error: .*mine.pt is a unit LM for k=200, but --k is 100\n", capsys.readouterr().err)
    assert not (tmp_path / "a").exists()
    out = tmp_path / "b"
    assert cli.main(["zerospeech", str(dataset), str(out), "--k", "200", "--lmbda", "1234", "--splits", "test",
                     "--ulm", str(tmp_path / "mine.pt"), "--reduction", "mean", "--quiet"]) == 0
    ulm = UnitLM.from_checkpoint(tmp_path / "mine.pt")
    for line in (out / "lexical" / "test.txt").read_text().splitlines():
        stem, score = line.split()
        units = torch.from_numpy(np.load(out / "units" / "lexical" / "test" / f"{stem}.npy"))
        assert float(score) == pytest.approx(ulm.loglikelihood(units) / len(units), abs=1e-5)
    assert "(no gold)" in capsys.readouterr().out


# -- phone ABX ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def abx_items(tmp_path_factory):
    """3 speakers x triphones (prev in {a, b}, centre in {a, b, c, d}, next in {c, d}), 5 frames per phone."""
    folder = tmp_path_factory.mktemp("abx")
    rng = np.random.default_rng(0)
    phones = ["a", "b", "c", "d"]
    centroids = {p: rng.normal(size=16) * 3 for p in phones}
    lines = ["#file onset offset #phone prev-phone next-phone speaker"]
    separated, noise, units = {}, {}, {}
    for n, (speaker, (prev, centre, nxt), _) in enumerate(
            itertools.product(["s1", "s2", "s3"], itertools.product("ab", phones, "cd"), range(2))):
        name = f"{speaker}_{n}"
        sequence = [prev] * 5 + [centre] * 5 + [nxt] * 5
        separated[name] = np.stack([centroids[p] + rng.normal(size=16) * 0.3 for p in sequence]).astype(np.float32)
        noise[name] = rng.normal(size=(15, 16)).astype(np.float32)
        units[name] = torch.tensor([phones.index(p) for p in sequence])
        lines.append(f"{name} 0.1 0.2 {centre} {prev} {nxt} {speaker}")
    (folder / "test.item").write_text("\n".join(lines) + "\n")
    return folder / "test.item", separated, noise, units


def test_abx_separates_distinct_phones_and_not_noise(abx_items, tmp_path):
    pytest.importorskip("zrc_abx2")
    item_file, separated, noise, units = abx_items
    folder = tmp_path / "separated"
    folder.mkdir()
    for stem, features in separated.items():
        np.save(folder / f"{stem}.npy", features)
    rates = evaluation.abx_error_rates(item_file, {"separated": folder, "noise": noise, "units": units})
    assert rates["separated"] == {"within": pytest.approx(0, abs=1), "across": pytest.approx(0, abs=1)}
    assert rates["units"] == {"within": 0.0, "across": 0.0}
    assert 30 < rates["noise"]["within"] < 70 and 30 < rates["noise"]["across"] < 70


def test_abx_explains_a_missing_package_and_bad_input(abx_items, monkeypatch):
    item_file, separated, _, units = abx_items
    monkeypatch.setitem(__import__("sys").modules, "zrc_abx2.eval_ABX", None)
    with pytest.raises(ImportError, match='pip install -e ".\\[eval\\]"'):
        evaluation.abx_error_rates(item_file, {"x": separated})
    with pytest.raises(ValueError, match="units must lie in \\[0, 4\\)"):
        evaluation.one_hot_units(np.array([0, 4]), 4)
    assert evaluation.one_hot_units(np.array([2, 0]), 3).tolist() == [[0, 0, 1], [1, 0, 0]]


def test_units_are_compared_as_one_hot_vectors(tmp_path):
    evaluation._write_features(tmp_path, "units", {"a": np.array([0, 2]), "b": np.array([1])})
    assert np.load(tmp_path / "a.npy").tolist() == [[1, 0, 0], [0, 0, 1]]
    with pytest.raises(ValueError, match="mixes features"):
        evaluation._write_features(tmp_path, "m", {"a": np.array([0]), "b": np.zeros((2, 3))})
    assert math.isclose(np.load(tmp_path / "b.npy").sum(), 1)


def test_abx_command_writes_the_three_representations_with_random_tiny_models(tmp_path, monkeypatch, capsys):
    pytest.importorskip("zrc_abx2")
    monkeypatch.setenv("DPSLM_WEIGHTS", "random-tiny")
    gold = read_gold(SLM21 / "lexical" / "dev" / "gold.csv")  # item "phone" = the word id, speaker = the voice
    lines = ["#file onset offset #phone prev-phone next-phone speaker"]
    lines += [f"{row['filename']} 0.10 0.30 w{row['id']} x y {row['voice']}" for row in gold]
    (tmp_path / "words.item").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert cli.main(["abx", str(tmp_path / "words.item"), str(SLM21 / "lexical"), str(out), "--k", "100",
                     "--lmbda", "600", "--quiet"]) == 0
    rates = json.loads((out / "abx.json").read_text())
    assert set(rates) == {"wavlm", "dpdp", "units"}
    assert all(0 <= rate[mode] <= 100 for rate in rates.values() for mode in ("within", "across"))
    assert "RANDOM WEIGHTS" in capsys.readouterr().out
    stem = gold[0]["filename"]
    wavlm, dpdp, units = (np.load(out / "features" / name / f"{stem}.npy") for name in ("wavlm", "dpdp", "units"))
    assert units.ndim == 1 and len(units) == len(wavlm) == len(dpdp) and units.max() < 100
    for a, b in itertools.combinations(range(len(units)), 2):  # one codebook vector per unit
        assert np.array_equal(dpdp[a], dpdp[b]) == (units[a] == units[b])
    assert len(list((out / "features" / "units").glob("*.npy"))) == 20  # only the files the item file names
    (tmp_path / "elsewhere").mkdir()
    capsys.readouterr()
    assert cli.main(["abx", str(tmp_path / "words.item"), str(tmp_path / "elsewhere"), str(tmp_path / "o2")]) == 2
    assert re.fullmatch("dpslm: error: no audio file under .*elsewhere is named in .*words.item.*\n", capsys.readouterr().err)
    assert not (tmp_path / "o2").exists()  # refused before the output folder was made


def test_scores_keep_their_order_when_batches_are_sorted_by_length(ulm):
    sequences = [[1, 2, 3, 4, 5, 6], [7], [8, 9, 10], [11, 12], [13, 14, 15, 16, 17]]
    batched = evaluation.score_units(ulm, sequences, batch_size=2)
    assert batched == pytest.approx([ulm.loglikelihood(s) for s in sequences], abs=1e-4)


def test_an_encoding_failure_names_the_files_and_caches_nothing_for_them(tmp_path):
    class Failing:
        cache_identity = {"failing": True}

        def encode_batch(self, wavs, sample_rate):
            raise RuntimeError("input too short")

    path = SLM21 / "lexical" / "test" / "lextest06usw.flac"
    with pytest.raises(ValueError, match="cannot encode .*lextest06usw.flac: input too short"):
        evaluation.encode_files([path], Failing(), cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_find_split_reads_the_toy_language_ogg_files_named_in_gold():
    toy = TOY_LANGUAGE_DIR
    for task in ("lexical", "syntactic"):
        files = evaluation.find_split(toy, task, "dev")
        gold = read_gold(toy / task / "dev" / "gold.csv")
        assert files and {p.suffix for p in files} == {".ogg"}
        assert {p.stem for p in files} == {row["filename"] for row in gold}


# -- caches keyed by what determines them, checks before any work (issue 17) ------------------------------


def copy_slm21(tmp_path, *parts):
    dataset = tmp_path / "slm21"
    for part in parts:
        shutil.copytree(SLM21 / part, dataset / part)
    return dataset


def test_changed_audio_is_encoded_again_and_another_encoder_is_refused(tmp_path, ulm):
    dataset = copy_slm21(tmp_path, "lexical")
    out = tmp_path / "out"
    encoder = FakeEncoder(ulm.k)
    evaluate_zerospeech(dataset, out, encoder=encoder, ulm=ulm, progress=False)
    assert encoder.calls == 20
    changed = dataset / "lexical" / "dev" / "lexdev01usw.flac"
    shutil.copy(dataset / "lexical" / "dev" / "lexdev03gbn.flac", changed)  # other audio, same name
    again = evaluate_zerospeech(dataset, out, encoder=encoder, ulm=ulm, progress=False)
    assert encoder.calls == 21  # only the changed file
    submitted = dict(line.split() for line in (out / "lexical" / "dev.txt").read_text().splitlines())
    assert submitted["lexdev01usw"] == submitted["lexdev03gbn"]  # its new audio's score, not the old one
    assert again["lexical"]["dev"]["pairs"][0]["word"] == "lexdev01usw"

    with pytest.raises(SettingsMismatch, match=r"version: 0 there, 1 now"):
        evaluate_zerospeech(dataset, out, encoder=FakeEncoder(ulm.k, version=1), ulm=ulm, progress=False)
    cache = out / "units" / "lexical" / "dev"
    other = FakeEncoder(ulm.k, version=1)
    evaluation.encode_files(sorted((dataset / "lexical" / "dev").glob("*.flac")), other, cache_dir=cache, progress=False)
    assert other.calls == 20  # a bare cache folder of another encoder: nothing reused


def test_a_unit_encoder_is_identified_by_its_settings_and_weights(random_tiny):
    from dpslm_utils import UnitEncoder

    a = evaluation.encoder_identity(UnitEncoder.from_pretrained(100, 600, "cpu", num_neighbors=5))
    assert {key: a[key] for key in ("k", "lmbda", "num_neighbors", "random_weights")} == {
        "k": 100, "lmbda": 600.0, "num_neighbors": 5, "random_weights": True}
    assert evaluation.encoder_identity(UnitEncoder.from_pretrained(100, 1500, "cpu", num_neighbors=5))["model"] == a["model"]
    other_codebook = UnitEncoder.from_pretrained(200, 600, "cpu", num_neighbors=5)
    assert evaluation.encoder_identity(other_codebook)["model"] != a["model"]
    with pytest.raises(TypeError, match="cache_identity"):
        evaluation.encoder_identity(object())


def test_duplicate_gold_rows_are_refused_with_their_lines_and_a_bom_is_accepted(tmp_path):
    rows = lexical_rows([(1, 3, "xy"), (2, 0, "x")])
    scores = {row["filename"]: -float(i) for i, row in enumerate(rows)}
    honest = lexical_accuracy(read_gold(write_gold(tmp_path / "gold.csv", rows)), scores)["overall"]
    write_gold(tmp_path / "twice.csv", rows + [rows[0]])  # w1x again: its pair would count twice
    with pytest.raises(ValueError, match=r"twice.csv names 1 file\(s\) more than once: w1x on lines 2, 8"):
        read_gold(tmp_path / "twice.csv")
    with pytest.raises(ValueError, match=r"1 files appear in more than one gold row, e.g. \['w1x'\]"):
        lexical_accuracy(read_gold(tmp_path / "gold.csv") + read_gold(tmp_path / "gold.csv")[:1], scores)
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + (tmp_path / "gold.csv").read_bytes())
    assert lexical_accuracy(read_gold(bom), scores)["overall"] == honest
    (tmp_path / "latin.csv").write_bytes("filename,correct,id,voice\ncaf\xe9,1,1,v\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin.csv is not a ZeroSpeech gold file"):
        read_gold(tmp_path / "latin.csv")


class NeverEncoder(FakeEncoder):
    def encode_batch(self, wavs, sample_rate):
        raise AssertionError("nothing may be encoded before the dataset is checked")


@pytest.mark.parametrize("damage, message", [
    ("columns", r"syntactic/dev/gold.csv is not a ZeroSpeech syntactic gold file: it needs the columns .*type, subtype"),
    ("missing", r"syntactic/dev/gold.csv names 1 file\(s\) with no audio file in .*\['syndev01usg'\]"),
    ("stems", r"distinct names .*syndev01usu.flac and .*syndev01usu.wav"),
    ("order", r"syntactic/dev/gold.csv: gold rows are out of order"),
])
def test_the_whole_dataset_is_checked_before_any_encoding(tmp_path, ulm, damage, message):
    dataset = copy_slm21(tmp_path, "lexical", "syntactic")
    split = dataset / "syntactic" / "dev"  # the last split to be encoded
    rows = list(csv.DictReader((split / "gold.csv").open()))
    if damage == "columns":
        write_gold(split / "gold.csv", [{k: v for k, v in row.items() if k != "type"} for row in rows])
    elif damage == "missing":
        (split / "syndev01usg.flac").unlink()
    elif damage == "stems":
        shutil.copy(split / "syndev01usu.flac", split / "syndev01usu.wav")
    else:
        rows[1], rows[3] = rows[3], rows[1]
        write_gold(split / "gold.csv", rows)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        evaluate_zerospeech(dataset, tmp_path / "out", encoder=NeverEncoder(ulm.k), ulm=ulm, progress=False)
    assert not (tmp_path / "out").exists()
    assert cli.main(["zerospeech", str(dataset), str(tmp_path / "cli-out")]) == 2  # refused before any model loads
    assert not (tmp_path / "cli-out").exists()


def test_zerospeech_uses_the_papers_search_unless_told_otherwise(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DPSLM_WEIGHTS", "random-tiny")
    dataset = copy_slm21(tmp_path, "lexical")
    record = lambda out: json.loads((out / "dpslm_settings.json").read_text())  # noqa: E731
    assert cli.main(["zerospeech", str(dataset), str(tmp_path / "paper"), "--k", "100", "--lmbda", "600", "--quiet"]) == 0
    assert record(tmp_path / "paper")["num_neighbors"] == PAPER_NUM_NEIGHBORS[100] == 5
    assert cli.main(["zerospeech", str(dataset), str(tmp_path / "exact"), "--k", "100", "--lmbda", "600", "--quiet",
                     "--exact-search"]) == 0
    assert record(tmp_path / "exact")["num_neighbors"] is None
    assert cli.main(["zerospeech", str(dataset), str(tmp_path / "paper"), "--k", "100", "--lmbda", "600",
                     "--exact-search"]) == 2  # a folder of the paper's search: not mixed with exact units
    assert "num_neighbors: 5 there, None now" in capsys.readouterr().err
    assert cli.main(["zerospeech", str(dataset), str(tmp_path / "both"), "--k", "100", "--lmbda", "600",
                     "--exact-search", "--num-neighbors", "3"]) == 2
    assert "--exact-search or --num-neighbors, not both" in capsys.readouterr().err
    assert not (tmp_path / "both").exists()
    from dpslm_utils import UnitEncoder

    encoder = UnitEncoder.from_pretrained(100, 600, "cpu", num_neighbors=5)
    wav = load_mono(dataset / "lexical" / "dev" / "lexdev02gbn.flac")
    cached = np.load(tmp_path / "paper" / "units" / "lexical" / "dev" / "lexdev02gbn.npy")
    assert cached.tolist() == encoder.encode(*wav).units.tolist()


def unwritable_folder(tmp_path) -> Path:
    """A folder in which not even root may create anything (sysfs), or a read-only one for other users."""
    import os

    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    if not Path("/sys/kernel").is_dir():
        pytest.skip("running as root without sysfs: no folder is read-only")
    return Path("/sys/kernel")


def test_unwritable_output_and_wrong_layouts_are_refused_before_models_load(tmp_path, monkeypatch, capsys):
    from dpslm_utils import ulm as ulm_module

    monkeypatch.setattr(ulm_module.UnitLM, "from_pretrained", lambda *a, **k: pytest.fail("a model was loaded"))
    dataset = copy_slm21(tmp_path, "lexical")
    out = unwritable_folder(tmp_path) / "out"
    assert cli.main(["zerospeech", str(dataset), str(out)]) == 2
    assert re.fullmatch(f"dpslm: error: cannot write to {out}: .*\n", capsys.readouterr().err)
    assert cli.main(["zerospeech", str(tmp_path), str(tmp_path / "o")]) == 2  # not the sLM21 layout
    assert "expected the sLM21 layout" in capsys.readouterr().err
    assert cli.main(["zerospeech", str(dataset), str(dataset / "lexical" / "dev" / "gold.csv" / "x")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# -- ABX item files and feature files (issue 17 items 8, 9) ----------------------------------------------


@pytest.fixture(scope="module")
def toy_items(tmp_path_factory):
    """The project's own word item file and random features of the right length for each file it names."""
    from dpslm_utils.toy_language import write_word_abx_items

    folder = tmp_path_factory.mktemp("toy-abx")
    item_file = write_word_abx_items(folder / "words.item")
    rng = np.random.default_rng(0)
    features = {}
    for line in item_file.read_text().splitlines()[1:]:
        stem, _, offset = line.split()[:3]
        features[stem] = rng.normal(size=(int(float(offset) * 50) + 1, 8)).astype(np.float32)
    return item_file, features


def test_abx_on_the_projects_word_items_explains_the_within_speaker_mode(toy_items):
    pytest.importorskip("zrc_abx2")
    item_file, features = toy_items
    with pytest.raises(ValueError, match="words.item gives no within-speaker ABX triplets: no speaker says one phone "
                                         "twice .*Ask for the across-speaker mode only"):
        evaluation.abx_error_rates(item_file, {"x": features})
    rates = evaluation.abx_error_rates(item_file, {"x": features}, speaker_modes=("across",))
    assert set(rates["x"]) == {"across"} and 30 < rates["x"]["across"] < 70  # random features: chance


def rewrite_items(source, target, edit):
    lines = source.read_text().splitlines()
    target.write_text("\n".join([lines[0]] + [edit(i, line.split()) for i, line in enumerate(lines[1:])]) + "\n")
    return target


def test_abx_refuses_bad_item_files_naming_the_file_and_line(toy_items, tmp_path):
    pytest.importorskip("zrc_abx2")
    item_file, features = toy_items
    across = {"speaker_modes": ("across",)}
    past = rewrite_items(item_file, tmp_path / "past.item",
                         lambda i, c: " ".join([c[0], "30.0", "31.0", *c[3:]] if i == 4 else c))
    first = item_file.read_text().splitlines()[5].split()[0]
    with pytest.raises(ValueError, match=rf"past.item line 6: the token starts at 30 s, but {first} ends at .* frames at 50 Hz"):
        evaluation.abx_error_rates(past, {"x": features}, **across)
    three = rewrite_items(item_file, tmp_path / "three.item", lambda i, c: " ".join(c[:3] if i == 2 else c))
    with pytest.raises(ValueError, match=r"three.item line 4: expected 7 columns .*got 3"):
        evaluation.abx_error_rates(three, {"x": features}, **across)
    backwards = rewrite_items(item_file, tmp_path / "backwards.item", lambda i, c: " ".join([c[0], "0.5", "0.2", *c[3:]]))
    with pytest.raises(ValueError, match=r"backwards.item line 2: expected 0 <= onset < offset"):
        evaluation.abx_error_rates(backwards, {"x": features}, **across)
    (tmp_path / "binary.item").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=r"binary.item is not an ABX item file: byte 128 is not UTF-8"):
        evaluation.abx_error_rates(tmp_path / "binary.item", {"x": features}, **across)
    (tmp_path / "nul.item").write_bytes(b"#header\n\0\0\0\0 1 2 a b c d\n")
    with pytest.raises(ValueError, match=r"nul.item is not an ABX item file: it holds binary data"):
        evaluation.abx_error_rates(tmp_path / "nul.item", {"x": features}, **across)
    with pytest.raises(ValueError, match=rf"representation 'x' has no features for 1 file\(s\) that .*words.item names, e.g. \['{first}'\]"):
        evaluation.abx_error_rates(item_file, {"x": {s: f for s, f in features.items() if s != first}}, **across)
    blank_lines = rewrite_items(item_file, tmp_path / "blank.item", lambda i, c: " ".join(c) + "\n")  # zrc_abx2 trips on these
    assert evaluation.abx_error_rates(blank_lines, {"x": features}, **across) == \
        evaluation.abx_error_rates(item_file, {"x": features}, **across)


def test_abx_names_junk_feature_files(toy_items, tmp_path):
    pytest.importorskip("zrc_abx2")
    item_file, features = toy_items
    stems = sorted(features)
    for name, junk in (("pickle", None), ("empty", b""), ("text", b"not a numpy file at all"), ("flat", np.zeros(5)),
                       ("strings", np.array(["a", "b"]))):
        folder = tmp_path / name
        folder.mkdir()
        for stem in stems:
            np.save(folder / f"{stem}.npy", features[stem])
        bad = folder / f"{stems[3]}.npy"
        if name == "pickle":
            np.save(bad, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        elif isinstance(junk, bytes):
            bad.write_bytes(junk)
        else:
            np.save(bad, junk)
        with pytest.raises(ValueError, match=rf"representation 'x': {re.escape(str(bad))} (is not a readable|holds|has shape)"):
            evaluation.abx_error_rates(item_file, {"x": folder}, speaker_modes=("across",))


def test_abx_features_are_computed_again_for_changed_audio_or_another_encoder(random_tiny, tmp_path):
    from dpslm_utils import UnitEncoder

    audio = tmp_path / "audio"
    audio.mkdir()
    shutil.copy(SLM21 / "lexical" / "dev" / "lexdev01usw.flac", audio / "a.flac")
    encoder = UnitEncoder.from_pretrained(100, 600, "cpu")
    folders = evaluation.abx_representations([audio / "a.flac"], encoder, tmp_path / "features", progress=False)
    before = np.load(folders["wavlm"] / "a.npy")
    shutil.copy(SLM21 / "lexical" / "dev" / "lexdev04gbn.flac", audio / "a.flac")
    evaluation.abx_representations([audio / "a.flac"], encoder, tmp_path / "features", progress=False)
    after = np.load(folders["wavlm"] / "a.npy")
    expected = encoder.encoder(*load_mono(audio / "a.flac"), layer=11).numpy()
    assert after.shape != before.shape and np.allclose(after, expected, atol=1e-5)
    coarse = UnitEncoder.from_pretrained(100, 50000, "cpu")
    evaluation.abx_representations([audio / "a.flac"], coarse, tmp_path / "features", progress=False)
    units = np.load(folders["units"] / "a.npy")
    assert units.tolist() == coarse.quantizer(torch.from_numpy(expected))[1].tolist()


def test_abx_command_checks_the_item_file_and_audio_before_models_load(toy_items, tmp_path, capsys):
    pytest.importorskip("zrc_abx2")
    item_file, _ = toy_items
    audio = TOY_LANGUAGE_DIR / "lexical" / "dev"
    assert cli.main(["abx", str(item_file), str(audio), str(tmp_path / "out")]) == 2
    assert "gives no within-speaker ABX triplets" in capsys.readouterr().err
    three = rewrite_items(item_file, tmp_path / "three.item", lambda i, c: " ".join(c[:3]))
    assert cli.main(["abx", str(three), str(audio), str(tmp_path / "out"), "--speaker-modes", "across"]) == 2
    assert re.fullmatch(r"dpslm: error: .*three.item line 2: expected 7 columns .*\n", capsys.readouterr().err)
    partial = tmp_path / "partial"
    partial.mkdir()
    left_out = item_file.read_text().splitlines()[1].split()[0]
    for path in audio.glob("*.ogg"):
        if path.stem != left_out:
            (partial / path.name).symlink_to(path)
    assert cli.main(["abx", str(item_file), str(partial), str(tmp_path / "out"), "--speaker-modes", "across"]) == 2
    assert re.search(rf"1 of the 78 files that .*words.item names are not under .*partial, e.g. \['{left_out}'\]",
                     capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
