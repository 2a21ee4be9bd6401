"""Notebook 09's experiment (dpslm_utils.toy_experiment): its pieces on the real toy corpus, the runner on a tiny
budget, and the training budget the notebook runs in CI."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import dpslm_utils as dpslm
from dpslm_utils import toy_experiment
from dpslm_utils.toy_experiment import ToyExperimentConfig
from dpslm_utils.toy_language import PHONES, load_toy_language

from conftest import notebook_cells

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
        assert set(condition.units) == set(toy_experiment.CORPUS_SPLITS)
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
    assert f"mfcc k=8: {fine.pnmi:.2f} → {coarse.pnmi:.2f}" in findings  # PNMI, finest rate first
    phones = conditions[-1]
    best = max(conditions[:2], key=lambda c: c.final.accuracy("lexical"))
    assert (f"- lexical: the phone LM {100 * phones.final.accuracy('lexical'):.1f} %, the best unit LM ({best.name}) "
            f"{100 * best.final.accuracy('lexical'):.1f} %") in findings


def test_the_config_refuses_stages_out_of_order():
    with pytest.raises(ValueError, match="stages must be increasing"):
        ToyExperimentConfig(stages=(50, 25))


# -- notebook 09's budget -----------------------------------------------------------------------------------

CI_TRAINING_TOKENS = 7 * 100 * 8 * 128
"""Tokens notebook 09 trains on offline (7 tiny LMs × 100 steps × 8 × 128): measured to run in the CI time
recorded in benchmarks/README.md ("Notebook 09 in CI")."""


def notebook_code():
    return "\n".join(text for kind, text, cell in notebook_cells(NOTEBOOK)
                     if kind == "code" and "solution" not in cell["metadata"].get("tags", []))


def test_notebook_09_trains_within_its_measured_ci_budget(monkeypatch):
    code = notebook_code()
    assert "CONFIG = toy_experiment.notebook_config()" in code, "the notebook runs the configuration tested here"
    monkeypatch.delenv(toy_experiment.BUDGET_ENV, raising=False)
    assert toy_experiment.notebook_config() is toy_experiment.NOTEBOOK_CONFIG
    assert not re.search(r"ToyExperimentConfig\(|stages=|batch_size=", code), "the budget is changed nowhere else"
    config = toy_experiment.NOTEBOOK_CONFIG
    assert config.features == ("mfcc",) and config.num_models * config.tokens_per_model <= CI_TRAINING_TOKENS
    assert len(config.codebook_sizes) >= 2 and len(config.units_per_second) >= 3  # the grid


def test_the_smoke_budget_runs_the_same_grid_at_the_smallest_cost(monkeypatch):
    """DPSLM_TOY_BUDGET=smoke (the wheel test's run of notebook 09): every cell's grid, a fraction of the training."""
    monkeypatch.setenv(toy_experiment.BUDGET_ENV, "smoke")
    smoke, full = toy_experiment.notebook_config(), toy_experiment.NOTEBOOK_CONFIG
    assert smoke is toy_experiment.SMOKE_CONFIG
    assert (len(smoke.codebook_sizes), smoke.units_per_second, smoke.features) == (2, full.units_per_second, ("mfcc",))
    assert smoke.num_models * smoke.tokens_per_model * 100 <= full.num_models * full.tokens_per_model
    monkeypatch.setenv(toy_experiment.BUDGET_ENV, "big")
    with pytest.raises(ValueError, match="DPSLM_TOY_BUDGET='big' is not a budget: use one of \\['notebook', 'smoke'\\]"):
        toy_experiment.notebook_config()


class StandInWavLM:
    """What feature_encoder("wavlm") returns with the released weights, for the notebook's WavLM path: real
    (not random-tiny) features on WavLM's frame grid, here a fixed projection of the MFCCs to 64 dimensions."""

    name, dim, frame_rate, random_weights = "wavlm", 64, 50, False

    def __init__(self):
        self.mfcc = dpslm.feature_encoder("mfcc")
        self.projection = torch.randn(self.mfcc.dim, self.dim, generator=torch.Generator().manual_seed(0))

    def batch(self, wavs, sr):
        return [f @ self.projection for f in self.mfcc.batch(wavs, sr)]


def cells_by_id(*ids):
    cells = {cell["id"]: text for _, text, cell in notebook_cells(NOTEBOOK)}
    return [cells[i] for i in ids]


def test_notebook_09_with_the_released_weights_runs_wavlm_beside_the_mfccs(corpus, mfcc, monkeypatch):
    """Sections 2, 3 and 9 of notebook 09, run as cells with a stand-in for the released WavLM: WavLM is encoded,
    its conditions (the largest k, every rate) join the MFCC ones, and the findings compare the two on the same items."""
    monkeypatch.setenv(toy_experiment.BUDGET_ENV, "smoke")
    monkeypatch.setattr(dpslm, "using_random_weights", lambda: False)
    real_feature_encoder = dpslm.feature_encoder
    monkeypatch.setattr(dpslm, "feature_encoder", lambda name, **options: StandInWavLM() if name == "wavlm" else
                        real_feature_encoder(name, **options))

    def encode_corpus(corpus, encoder):  # the MFCCs are encoded once, above; the stand-in projects them
        if encoder.name == "mfcc":
            return mfcc
        return {split: {stem: x @ encoder.projection for stem, x in f.items()} for split, f in mfcc.items()}

    monkeypatch.setattr(toy_experiment, "encode_corpus", encode_corpus)
    namespace = {"corpus": corpus, "display": lambda *a: None}
    for cell in cells_by_id("cell-02", "cell-10", "cell-13"):
        exec(cell, namespace)
    conditions, config = namespace["conditions"], toy_experiment.SMOKE_CONFIG
    k = max(config.codebook_sizes)
    assert [c.name for c in conditions] == [f"mfcc k={kk} {r:g}/s" for kk in config.codebook_sizes
                                            for r in config.units_per_second] + [f"wavlm k={k} {r:g}/s"
                                                                                 for r in config.units_per_second]
    rng = np.random.default_rng(0)
    for c in conditions:  # stand-in scores instead of training: the comparisons only pair them
        c.stages = [toy_experiment.Stage(4, 256, 10.0, 1.0, {"lexical": list(rng.integers(0, 2, 39) / 1.0),
                                                              "syntactic": list(rng.integers(0, 2, 60) / 1.0)})]
    across = [d for d in toy_experiment.paired_differences(conditions) if d.a.split()[0] != d.b.split()[0]]
    assert sorted((d.task, d.b) for d in across) == sorted((task, f"wavlm k={k} {r:g}/s") for task in toy_experiment.TASKS
                                                           for r in config.units_per_second)
    findings = toy_experiment.describe_findings(conditions)
    assert "**mfcc against wavlm** at the same k and rate:" in findings
    printed = []
    namespace["print"] = lambda *a, **kw: printed.append(" ".join(map(str, a)))
    exec(*cells_by_id("a1c0f013"), namespace)
    assert [line.split(":")[0] for line in printed] == [f"k = {k}, {r:g} units/s" for r in config.units_per_second]


def test_write_phone_abx_items_lists_every_phone_token_with_its_context_and_voice(tmp_path):
    from dpslm_utils.toy_language import write_phone_abx_items

    lines = write_phone_abx_items(tmp_path / "phones.item", split="validation").read_text().splitlines()
    assert lines[0] == "#file onset offset #phone prev-phone next-phone speaker"
    corpus = load_toy_language()
    expected = []
    for utterance in corpus.validation:
        a = utterance.alignment
        context = ["#", *a.phones, "#"]
        expected += [[utterance.path.stem, f"{start:.4f}", f"{end:.4f}", context[i], context[i - 1], context[i + 1],
                      utterance.voice] for i, (start, end) in enumerate(zip(a.starts, a.ends), start=1)]
    assert [line.split() for line in lines[1:]] == expected
    with pytest.raises(ValueError, match="split must be 'train' or 'validation', got 'lexical'"):
        write_phone_abx_items(tmp_path / "x.item", split="lexical")


def test_plot_toy_experiment_draws_each_condition_where_its_numbers_are(corpus):
    """Left: final accuracy against bits/s, one line per (features, k), the phone LM apart; right: accuracy
    against minutes of speech seen, one line per condition."""
    import matplotlib

    matplotlib.use("Agg")
    from dpslm_utils import plots

    def condition(k, target, bits, scores):
        c = toy_experiment.Condition("mfcc" if k else "phones", k or 30, target, None,
                                     dpslm.Bitrate(target or 9.0, 1.0, bits), None, None, {})
        c.stages = [toy_experiment.Stage(steps, steps * 10, steps * 6.0, 1.0,
                                         {"lexical": [s] * 4, "syntactic": [1 - s] * 4}) for steps, s in scores]
        return c

    conditions = [condition(8, 12.0, 100.0, [(2, 0.5), (4, 0.75)]), condition(8, 6.0, 40.0, [(2, 0.25), (4, 1.0)]),
                  condition(None, None, 30.0, [(2, 1.0), (4, 1.0)])]
    axes = plots.plot_toy_experiment(conditions)
    assert axes.shape == (2, 2)
    by_rate, by_speech = axes[0]
    assert list(by_rate.get_legend_handles_labels()[1]) == ["mfcc, k = 8", "phone LM (topline)"]
    points = [(tuple(line.get_xdata()), tuple(line.get_ydata())) for line in by_rate.get_lines()
              if len(line.get_xdata()) == 2]
    assert ((40.0, 100.0), (100.0, 75.0)) in points  # sorted by bits/s, last stage's lexical accuracy in %
    speech = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in by_speech.get_lines()}
    assert speech["mfcc, k = 8, 6 units/s"] == ([0.2, 0.4], [25.0, 100.0])  # minutes of speech, accuracy in %
    assert speech["phone LM (topline)"][1] == [100.0, 100.0]
    syntactic = {line.get_label(): list(line.get_ydata()) for line in axes[1][1].get_lines()}
    assert syntactic["mfcc, k = 8, 6 units/s"] == [75.0, 0.0]  # the second row is the syntactic task
    matplotlib.pyplot.close("all")


def test_notebook_09_ends_with_its_references_points_forward_and_checks_its_solutions():
    """Issue 16: the references come last (what they cite: test_notebooks.test_references_are_complete); no
    "Next: 08" (09 is the last notebook); every solution cell checks its result (an assert or a check() call)."""
    cells = notebook_cells(NOTEBOOK)
    assert cells[-1][1].startswith("## References")
    text = "\n".join(text for _, text, _ in cells)
    assert not re.search(r"Next:?\*?\*?:? *(notebook )?`?0[0-8]", text), "09 is the last notebook"
    solutions = [text for _, text, cell in cells if "solution" in cell["metadata"].get("tags", [])]
    assert len(solutions) >= 3
    for source in solutions:
        assert re.search(r"^\s*assert |\bcheck\(", source, re.M), f"a solution that checks nothing:\n{source[:200]}"
