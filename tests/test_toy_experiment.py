"""Notebook 09's experiment (dpslm_utils.toy_experiment): its pieces on the real toy corpus, the runner on a tiny
budget, and the training budget the notebook runs in CI."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

import dpslm_utils as dpslm
from dpslm_utils import toy_experiment
from dpslm_utils.toy_experiment import ToyExperimentConfig
from dpslm_utils.toy_language import PHONES, load_toy_language

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "09_train_your_own.ipynb"


@pytest.fixture(scope="module")
def corpus():
    return load_toy_language(max_train=40)


@pytest.fixture(scope="module")
def mfcc(corpus):
    return toy_experiment.encode_corpus(corpus, dpslm.feature_encoder("mfcc"))


def test_encode_corpus_keeps_every_file_of_every_split_in_order(corpus, mfcc):
    files = toy_experiment.corpus_files(corpus)
    assert {split: list(features) for split, features in mfcc.items()} == {
        split: [p.stem for p in paths] for split, paths in files.items()}
    assert (len(mfcc["train"]), len(mfcc["lexical"]), len(mfcc["syntactic"])) == (40, 234, 120)
    first = corpus.train[0]
    assert torch.equal(mfcc["train"][first.path.stem], dpslm.feature_encoder("mfcc")(*dpslm.load_audio(first.path)))


def test_encode_corpus_refuses_a_random_wavlm(corpus, monkeypatch):
    monkeypatch.setenv("DPSLM_WEIGHTS", "random-tiny")
    with pytest.raises(ValueError, match="random weights .*feature_encoder\\('mfcc'\\)"):
        toy_experiment.encode_corpus(corpus, dpslm.feature_encoder("wavlm"))


def test_a_condition_has_the_rate_it_asked_for_and_its_units_follow_the_phones(corpus, mfcc):
    codebook = dpslm.train_codebook(torch.cat(list(mfcc["train"].values())), 16, iterations=5)
    fine, coarse = (toy_experiment.make_condition(corpus, "mfcc", mfcc, codebook, rate) for rate in (15.0, 5.0))
    assert fine.rate.units_per_second == pytest.approx(15.0, rel=0.01)  # lambda_for_rate's tolerance
    assert coarse.rate.units_per_second == pytest.approx(5.0, rel=0.01) and coarse.lmbda > fine.lmbda
    frames = [u.repeat_interleave(d) for u, d in fine.units["train"].values()]
    assert fine.rate == pytest.approx(dpslm.bitrate(frames))  # unit_bitrate is bitrate's definition
    for condition in (fine, coarse):
        assert set(condition.units) == set(toy_experiment.SPLITS)
        assert all(int(d.sum()) == len(mfcc[split][stem]) for split, units in condition.units.items()
                   for stem, (_, d) in units.items())  # every frame in one unit
        assert 0 < condition.pnmi < condition.purity < 1
    assert coarse.pnmi < fine.pnmi  # one unit per syllable says less about the phone than three per syllable


def test_the_phone_condition_is_espeak_ngs_phones(corpus):
    phones = toy_experiment.phone_condition(corpus)
    assert phones.k == len(PHONES) and phones.purity is None
    first = corpus.train[0]
    units, durations = phones.units["train"][first.path.stem]
    assert [PHONES_LIST[i] for i in units] == list(first.phones) and (durations >= 1).all()
    lexical = corpus.test_alignments("lexical")
    assert {stem: [PHONES_LIST[i] for i in u] for stem, (u, _) in phones.units["lexical"].items()} == {
        stem: list(a.phones) for stem, a in lexical.items()}
    seconds = sum(u.alignment.num_samples for u in corpus.train) / 16000
    assert phones.rate.units_per_second == pytest.approx(sum(len(u.phones) for u in corpus.train) / seconds)


PHONES_LIST = list(PHONES)


def test_a_phone_lm_learns_the_toy_language_in_a_few_steps(corpus, tmp_path):
    """The topline's training path end to end: 25 steps on 40 utterances already prefer real words."""
    phones = toy_experiment.phone_condition(corpus)
    config = ToyExperimentConfig(stages=(25,), batch_size=8)
    (stage,) = toy_experiment.train_and_score(phones, corpus, tmp_path, config)
    assert stage.steps == 25 and len(stage.items["lexical"]) == 39 and len(stage.items["syntactic"]) == 60
    assert stage.accuracy("lexical") > 0.75 and stage.interval("lexical")[0] > 0.5


def test_the_runner_on_a_tiny_budget(corpus, mfcc, tmp_path, monkeypatch):
    config = ToyExperimentConfig(codebook_sizes=(8,), units_per_second=(12.0, 6.0), stages=(2, 4), batch_size=2,
                                 chunk_size=32, codebook_iterations=3)
    monkeypatch.setattr(toy_experiment, "encode_corpus", lambda corpus, encoder: mfcc)  # encoded once, above
    conditions, timings = toy_experiment.run_toy_experiment(config, tmp_path, corpus, log=lambda line: None)
    assert [c.name for c in conditions] == ["mfcc k=8 12/s", "mfcc k=8 6/s", "phones"]
    assert len(conditions) == config.num_models and set(timings) == {"features", "codebooks, λ and units",
                                                                      "training and scoring"}
    for condition in conditions:
        train_tokens = sum(len(u) + 1 for u, _ in condition.units["train"].values())
        seconds = sum(u.alignment.num_samples for u in corpus.train) / 16000
        assert [s.steps for s in condition.stages] == [2, 4]
        first, last = condition.stages
        assert 0 < first.tokens < last.tokens <= 4 * config.batch_size * config.chunk_size
        assert last.seconds == pytest.approx(last.tokens * seconds / train_tokens)  # speech seen, not tokens
        assert all(0 <= x <= 1 for x in last.items["lexical"] + last.items["syntactic"])
    results = json.loads(json.dumps(toy_experiment.results_json(conditions, config)))
    differences = results["differences"]
    assert len(differences) == 2  # 6/s against 12/s, per task
    fine, coarse = conditions[:2]
    for difference in differences:
        task = difference["task"]
        assert (difference["a"], difference["b"]) == (coarse.name, fine.name)
        assert difference["difference"] == pytest.approx(coarse.final.accuracy(task) - fine.final.accuracy(task))
        assert difference["low"] <= difference["difference"] <= difference["high"]
    findings = toy_experiment.describe_findings(conditions)
    assert f"{100 * coarse.final.accuracy('syntactic'):.1f} %" in findings and "6 vs 12 units/s" in findings


def test_the_config_refuses_stages_out_of_order():
    with pytest.raises(ValueError, match="stages must be increasing"):
        ToyExperimentConfig(stages=(50, 25))


# -- notebook 09's budget -----------------------------------------------------------------------------------

CI_TRAINING_TOKENS = 7 * 100 * 8 * 128
"""Tokens notebook 09 trains on offline (7 tiny LMs × 100 steps × 8 × 128): measured to run in the CI time
recorded in benchmarks/README.md ("Notebook 09 in CI")."""


def notebook_code():
    return "\n".join("".join(c["source"]) for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"
                     and "solution" not in c["metadata"].get("tags", []))


def test_notebook_09_trains_within_its_measured_ci_budget():
    code = notebook_code()
    assert "CONFIG = toy_experiment.NOTEBOOK_CONFIG" in code, "the notebook runs the configuration tested here"
    assert not re.search(r"ToyExperimentConfig\(|stages=|batch_size=", code), "the budget is changed nowhere else"
    config = toy_experiment.NOTEBOOK_CONFIG
    assert config.features == ("mfcc",) and config.num_models * config.tokens_per_model <= CI_TRAINING_TOKENS
    assert len(config.codebook_sizes) >= 2 and len(config.units_per_second) >= 3  # the grid
