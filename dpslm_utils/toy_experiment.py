"""The paper's experiment in miniature, on the toy language: does a coarser unit help a unit LM?

    audio ─► features (once) ─► k-means codebook per k ─► λ per target rate (lambda_for_rate) ─► DPDP units
          ─► one tiny unit LM per (features, k, rate), trained in stages ─► lexical and syntactic pair accuracy

plus a phone LM trained the same way on espeak-ng's own phones (the topline), and, from the phone
alignments, how well each unit inventory follows the phones (purity, PNMI). Conditions are compared
at equal *units per second*, not equal λ: λ is a squared feature distance whose scale changes with the
features and the codebook (:func:`~dpslm_utils.lambda_for_rate`).

Notebook 09 calls these steps one section at a time; :func:`run_toy_experiment` chains them for
``benchmarks/toy_experiment.py``::

    corpus = load_toy_language()
    features = {"mfcc": encode_corpus(corpus, feature_encoder("mfcc"))}     # {name: {split: {stem: [T, D]}}}
    conditions = make_conditions(corpus, features, config)                  # λ, units, bitrate, purity per condition
    conditions.append(phone_condition(corpus))                              # the topline
    for condition in conditions:
        train_and_score(condition, corpus, work_dir, config)                # condition.stages: accuracy per stage

Every number comes from weight-free features offline (MFCC, log-mel) or the released WavLM, never
from random weights: :func:`encode_corpus` refuses a random-tiny WavLM.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .audio import load_mono
from .codebooks import train_codebook
from .datasets import save_units
from .evaluation import (TASKS, bootstrap_interval, lexical_accuracy, paired_bootstrap_interval,
                         phone_normalized_mutual_information, read_gold, syntactic_accuracy, unit_phone_purity)
from .features import FRAME_RATE, feature_encoder
from .quantize import Bitrate, deduplicate, dpdp_batch, segments_bitrate
from .rates import lambda_for_rate
from .toy_language import PHONES, SAMPLE_RATE, ToyLanguage, load_toy_language
from .training import train_ulm
from .ulm import UnitLM

CORPUS_SPLITS = ("train", "validation", "lexical", "syntactic")
"""The toy corpus' splits, as :func:`encode_corpus` and every condition's ``units`` hold them."""
PHONE_FEATURES = "phones"
"""The ``features`` name of the topline condition: espeak-ng's phones as the units."""

SplitUnits = dict[str, tuple[Tensor, Tensor]]
"""One split's units: file stem -> (deduplicated units ``[N]``, durations ``[N]`` in 50 Hz frames)."""


@dataclass(frozen=True)
class ToyExperimentConfig:
    """What the experiment trains: every feature × every codebook size × every target rate, plus the phone LM."""

    features: tuple[str, ...] = ("mfcc",)
    """Names for :func:`~dpslm_utils.feature_encoder`."""
    codebook_sizes: tuple[int, ...] = (50, 100)
    units_per_second: tuple[float, ...] = (20.0, 10.0, 5.0)
    """Target rates, finest first: about two units per phone, one per phone, one per syllable (the toy's
    speech has about 10 phones per second)."""
    stages: tuple[int, ...] = (25, 50, 100)
    """Training steps after each stage: every model is scored after each, to plot accuracy against the
    speech it has seen."""
    batch_size: int = 8
    chunk_size: int = 128
    codebook_iterations: int = 20
    seed: int = 0

    def __post_init__(self):
        if not (self.features and self.codebook_sizes and self.units_per_second and self.stages):
            raise ValueError("features, codebook_sizes, units_per_second and stages must each name at least one value")
        if list(self.stages) != sorted(set(self.stages)) or self.stages[0] < 1:
            raise ValueError(f"stages must be increasing step counts >= 1, got {self.stages}")

    @property
    def num_models(self) -> int:
        """Unit LMs trained: one per (features, k, rate), and the phone LM."""
        return len(self.features) * len(self.codebook_sizes) * len(self.units_per_second) + 1

    @property
    def tokens_per_model(self) -> int:
        """Training tokens each model reads (at most: a chunk may end early at the corpus' end)."""
        return self.stages[-1] * self.batch_size * self.chunk_size

    def training_settings(self) -> dict:
        """:func:`~dpslm_utils.train_ulm` settings (the tiny model): warm up over a tenth of the steps, then
        decay to the last stage; validation loss at the end of every stage."""
        warmup = max(1, self.stages[-1] // 10)
        return dict(batch_size=self.batch_size, chunk_size=self.chunk_size, warmup_steps=warmup,
                    decay_steps=self.stages[-1] - warmup, eval_interval=self.stages[-1], seed=self.seed)


NOTEBOOK_CONFIG = ToyExperimentConfig()
"""Notebook 09's experiment offline: 2 codebook sizes × 3 rates of MFCC units, 100 steps each (its CI budget,
``tests/test_toy_experiment.py``)."""

SMOKE_CONFIG = ToyExperimentConfig(codebook_sizes=(16, 32), stages=(2, 4), batch_size=2, chunk_size=32,
                                   codebook_iterations=3)
"""The same grid (2 codebook sizes × 3 rates) at the smallest budget: every step of notebook 09 runs, in seconds,
and its accuracies mean nothing. For a run that checks the mechanics only, e.g. the wheel test of
``tests/test_packaging.py`` (which checks that the installed package finds its data, not the science)."""

BUDGET_ENV = "DPSLM_TOY_BUDGET"
"""``DPSLM_TOY_BUDGET=smoke`` makes :func:`notebook_config` return :data:`SMOKE_CONFIG`; unset (or ``notebook``),
:data:`NOTEBOOK_CONFIG`."""


def notebook_config() -> ToyExperimentConfig:
    """Notebook 09's configuration: :data:`NOTEBOOK_CONFIG`, or :data:`SMOKE_CONFIG` when the environment
    variable ``DPSLM_TOY_BUDGET`` is ``smoke`` (a mechanics-only run)."""
    budget = os.environ.get(BUDGET_ENV, "").strip() or "notebook"
    configs = {"notebook": NOTEBOOK_CONFIG, "smoke": SMOKE_CONFIG}
    if budget not in configs:
        raise ValueError(f"{BUDGET_ENV}={budget!r} is not a budget: use one of {sorted(configs)} (or leave it unset)")
    return configs[budget]


@dataclass
class Stage:
    """One trained model's test results after ``steps`` training steps."""

    steps: int
    tokens: int
    """Training tokens read so far."""
    seconds: float
    """Seconds of speech those tokens stand for: ``tokens × training seconds / training tokens``."""
    val_loss: float
    items: dict[str, list[float]]
    """Per task, the item scores (1, 0.5 or 0, averaged over voices) in the gold files' item order."""

    def accuracy(self, task: str) -> float:
        return float(np.mean(self.items[task]))

    def interval(self, task: str) -> tuple[float, float]:
        """95 % percentile bootstrap interval of the accuracy, over items."""
        return bootstrap_interval(self.items[task])


@dataclass
class Condition:
    """One unit inventory of the toy corpus (features, k, rate), and what its unit LM measured."""

    features: str
    k: int
    """Codebook size: the unit LM's vocabulary (the phone inventory's size for the phone LM)."""
    target: float | None
    """Units per second asked of :func:`~dpslm_utils.lambda_for_rate` (None for phones)."""
    lmbda: float | None
    rate: Bitrate
    """Of the training split."""
    purity: float | None
    """:func:`~dpslm_utils.unit_phone_purity` of the training frames (None for the phones themselves)."""
    pnmi: float | None
    """:func:`~dpslm_utils.phone_normalized_mutual_information` of the training frames (None for phones)."""
    units: dict[str, SplitUnits] = field(repr=False)
    stages: list[Stage] = field(default_factory=list, repr=False)
    run_dir: Path | None = field(default=None, repr=False)
    """The unit LM's training folder (:func:`train_and_score`): ``metrics.jsonl``, ``last.pt``, ..."""

    @property
    def name(self) -> str:
        return PHONE_FEATURES if self.features == PHONE_FEATURES else f"{self.features} k={self.k} {self.target:g}/s"

    @property
    def final(self) -> Stage:
        """The results after the last stage."""
        return self.stages[-1]


# -- the corpus, its features and its units --------------------------------------------------------


def corpus_files(corpus: ToyLanguage) -> dict[str, list[Path]]:
    """The audio files of every split (:data:`CORPUS_SPLITS`); the test sets sorted by name."""
    return {"train": [u.path for u in corpus.train], "validation": [u.path for u in corpus.validation],
            "lexical": sorted(corpus.lexical_dir.glob("*.ogg")), "syntactic": sorted(corpus.syntactic_dir.glob("*.ogg"))}


def encode_corpus(corpus: ToyLanguage, encoder, splits: tuple[str, ...] = CORPUS_SPLITS,
                  batch_size: int = 16) -> dict[str, dict[str, Tensor]]:
    """Features ``[T, D]`` of every file: ``{split: {file stem: features}}``, in each split's file order.

    ``encoder`` is a :func:`~dpslm_utils.feature_encoder`; files of similar length share one batch (WavLM
    pads a batch to its longest file). A random-tiny WavLM is refused: its features would make every
    number of the experiment a measurement of random weights.
    """
    if getattr(encoder, "random_weights", False):
        raise ValueError("the toy experiment measures real features: this WavLM has random weights "
                         "(DPSLM_WEIGHTS=random-tiny). Use feature_encoder('mfcc') or 'fbank' offline")
    files = corpus_files(corpus)
    features = {}
    for split in splits:
        paths = sorted(files[split], key=lambda p: p.stat().st_size)
        encoded = {}
        for begin in range(0, len(paths), batch_size):
            batch = paths[begin:begin + batch_size]
            wavs = [load_mono(p)[0] for p in batch]
            encoded.update({p.stem: f for p, f in zip(batch, encoder.batch(wavs, SAMPLE_RATE))})
        features[split] = {p.stem: encoded[p.stem] for p in files[split]}
    return features


def quantize_corpus(features: dict[str, dict[str, Tensor]], codebook: Tensor, lmbda: float) -> dict[str, SplitUnits]:
    """DPDP units of every file (exact search): ``{split: {stem: (units [N], durations [N])}}``."""
    return {split: {stem: deduplicate(u) for stem, u in zip(feats, dpdp_batch(list(feats.values()), codebook, lmbda))}
            for split, feats in features.items()}


def unit_bitrate(units: SplitUnits, seconds: float) -> Bitrate:
    """Units per second, entropy (bits per unit) and bits per second of one split's deduplicated units over
    ``seconds`` of audio (:func:`~dpslm_utils.quantize.segments_bitrate`)."""
    return segments_bitrate(torch.cat([u for u, _ in units.values()]), seconds)


def phone_agreement(corpus: ToyLanguage, train_units: SplitUnits) -> tuple[float, float]:
    """(purity, PNMI) of the training split's frame units against espeak-ng's phone of each frame."""
    frame_units, frame_phones = [], []
    for utterance in corpus.train:
        units, durations = train_units[utterance.path.stem]
        frame_units.append(units.repeat_interleave(durations).numpy())
        frame_phones += utterance.alignment.frame_labels(FRAME_RATE, int(durations.sum()))
    frame_units = np.concatenate(frame_units)
    return unit_phone_purity(frame_units, frame_phones), phone_normalized_mutual_information(frame_units, frame_phones)


def make_condition(corpus: ToyLanguage, features_name: str, features: dict[str, dict[str, Tensor]],
                   codebook: Tensor, units_per_second: float) -> Condition:
    """The units of one (features, codebook, target rate): λ from the training split, then every split."""
    lmbda = lambda_for_rate(list(features["train"].values()), codebook, units_per_second)
    units = quantize_corpus(features, codebook, lmbda)
    seconds = sum(int(d.sum()) for _, d in units["train"].values()) / FRAME_RATE
    purity, pnmi = phone_agreement(corpus, units["train"])
    return Condition(features_name, codebook.shape[0], units_per_second, lmbda, unit_bitrate(units["train"], seconds),
                     purity, pnmi, units)


def make_conditions(corpus: ToyLanguage, features: dict[str, dict[str, dict[str, Tensor]]],
                    config: ToyExperimentConfig) -> list[Condition]:
    """One :class:`Condition` per features × codebook size × rate; a k-means codebook per (features, k),
    trained on the training split (seeded)."""
    conditions = []
    for name in config.features:
        train = torch.cat(list(features[name]["train"].values()))
        for k in config.codebook_sizes:
            codebook = train_codebook(train, k, iterations=config.codebook_iterations, seed=config.seed)
            conditions += [make_condition(corpus, name, features[name], codebook, rate) for rate in config.units_per_second]
    return conditions


def phone_condition(corpus: ToyLanguage) -> Condition:
    """The topline: espeak-ng's phones as the units (ids in :data:`~dpslm_utils.toy_language.PHONES` order),
    each lasting as long as espeak-ng spoke it (at least one frame)."""
    ids = {phone: i for i, phone in enumerate(PHONES)}

    def units_of(alignment) -> tuple[Tensor, Tensor]:
        frames = [max(1, round(FRAME_RATE * (end - start))) for start, end in zip(alignment.starts, alignment.ends)]
        return torch.tensor([ids[p] for p in alignment.phones]), torch.tensor(frames)

    units = {"train": {u.path.stem: units_of(u.alignment) for u in corpus.train},
             "validation": {u.path.stem: units_of(u.alignment) for u in corpus.validation}}
    units |= {task: {stem: units_of(a) for stem, a in corpus.test_alignments(task).items()} for task in TASKS}
    rate = unit_bitrate(units["train"], train_seconds(corpus))
    return Condition(PHONE_FEATURES, len(PHONES), None, None, rate, None, None, units)


def train_seconds(corpus: ToyLanguage) -> float:
    """Seconds of training speech, from the alignments' sample counts."""
    return sum(u.alignment.num_samples for u in corpus.train) / SAMPLE_RATE


# -- train and score --------------------------------------------------------------------------------------


def score_items(ulm: UnitLM, condition: Condition, golds: dict[str, list[dict]]) -> dict[str, list[float]]:
    """Each task's item scores (summed log-likelihood of each file's units, paired as ZeroSpeech 2021 does)."""
    accuracy = {"lexical": lexical_accuracy, "syntactic": syntactic_accuracy}
    items = {}
    for task in TASKS:
        test = condition.units[task]
        scores = dict(zip(test, ulm.loglikelihood_batch([u for u, _ in test.values()])))
        items[task] = [item["score"] for item in accuracy[task](golds[task], scores)["by_id"]]
    return items


def read_golds(corpus: ToyLanguage) -> dict[str, list[dict]]:
    return {"lexical": read_gold(corpus.lexical_dir / "gold.csv"), "syntactic": read_gold(corpus.syntactic_dir / "gold.csv")}


def train_and_score(condition: Condition, corpus: ToyLanguage, work_dir: Path, config: ToyExperimentConfig,
                    golds: dict[str, list[dict]] | None = None) -> list[Stage]:
    """Write the condition's unit files, train its unit LM stage by stage (each stage resumes the run) and
    score the test pairs after each; fills and returns ``condition.stages``."""
    folder = Path(work_dir) / condition.name.replace(" ", "_").replace("/", "_per_")
    for split in ("train", "validation"):
        for stem, (units, durations) in condition.units[split].items():
            save_units(folder / "units" / split / f"{stem}.npy", units, durations)
    golds = golds or read_golds(corpus)
    train_tokens = sum(len(u) + 1 for u, _ in condition.units["train"].values())  # BOS + units per utterance
    seconds_per_token = train_seconds(corpus) / train_tokens
    condition.stages, condition.run_dir = [], folder / "run"
    for steps in config.stages:
        run = train_ulm(folder / "units" / "train", condition.run_dir, k=condition.k, preset="tiny",
                        val_dir=folder / "units" / "validation", max_steps=steps, progress=False,
                        **config.training_settings())
        tokens = run.metrics[-1]["tokens"]
        ulm = UnitLM.from_checkpoint(run.last_checkpoint)
        condition.stages.append(Stage(steps, tokens, tokens * seconds_per_token, run.metrics[-1]["val_loss"],
                                      score_items(ulm, condition, golds)))
    return condition.stages


# -- comparisons and findings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    """Accuracy of ``a`` minus accuracy of ``b`` on the same items (last stage), with its paired interval."""

    task: str
    a: str
    b: str
    difference: float
    low: float
    high: float

    @property
    def verdict(self) -> str:
        return "higher" if self.low > 0 else "lower" if self.high < 0 else "no difference shown"


def paired_differences(conditions: list[Condition]) -> list[Difference]:
    """Every pair of rates of one (features, k), coarser minus finer; and, with several features, every
    pair of features at one (k, rate). Paired over the same test items (:func:`~dpslm_utils.paired_bootstrap_interval`)."""
    units = [c for c in conditions if c.features != PHONE_FEATURES]
    pairs = []
    for a, b in combinations(units, 2):
        same_inventory = (a.features, a.k) == (b.features, b.k)
        if same_inventory or (a.k, a.target) == (b.k, b.target):
            coarser, finer = (a, b) if not same_inventory or a.target < b.target else (b, a)
            pairs.append((coarser, finer))
    differences = []
    for task in TASKS:
        for a, b in pairs:
            x, y = a.final.items[task], b.final.items[task]
            differences.append(Difference(task, a.name, b.name, float(np.mean(x) - np.mean(y)),
                                          *paired_bootstrap_interval(x, y)))
    return differences


def chance_verdict(low: float, high: float) -> str:
    return "above chance" if low > 0.5 else "below chance" if high < 0.5 else "not distinguishable from chance"


def describe_findings(conditions: list[Condition]) -> str:
    """What this run measured, in Markdown: each model's final accuracies against chance, and each
    coarser-vs-finer comparison against the paper's direction (coarser units, higher accuracy at a lower
    bitrate). Every number is formatted from ``conditions``."""
    def cell(stage: Stage, task: str) -> str:
        low, high = stage.interval(task)
        return f"{task} {100 * stage.accuracy(task):.1f} % [{100 * low:.0f}, {100 * high:.0f}], {chance_verdict(low, high)}"

    lines = ["**Accuracy after the last stage** (95 % bootstrap interval over items):", ""]
    for c in conditions:
        cells = [cell(c.final, task) for task in TASKS]
        lines.append(f"- {c.name} ({c.rate.bits_per_second:.0f} bits/s): " + "; ".join(cells))
    by_name, differences = {c.name: c for c in conditions}, paired_differences(conditions)
    lines += ["", "**Coarser against finer units** (same features and k; difference in accuracy points, paired "
              "95 % interval over the same items):", ""]
    agree = disagree = 0
    for d in differences:
        a, b = by_name[d.a], by_name[d.b]
        if a.features != b.features:
            continue
        relation = {"higher": "the paper's direction", "lower": "against the paper's direction",
                    "no difference shown": "no difference this run can show"}[d.verdict]
        agree, disagree = agree + (d.verdict == "higher"), disagree + (d.verdict == "lower")
        lines.append(f"- {d.task}, {a.features} k={a.k}: {a.target:g} vs {b.target:g} units/s "
                     f"({a.rate.bits_per_second:.0f} vs {b.rate.bits_per_second:.0f} bits/s): "
                     f"{100 * d.difference:+.1f} points [{100 * d.low:+.1f}, {100 * d.high:+.1f}], {relation}")
    lines += ["", f"Of these comparisons, {agree} show the coarser units ahead at a lower bitrate (the paper's "
              f"direction), {disagree} show them behind, and the rest show no difference these items can resolve."]
    inventories = {}
    for c in conditions:
        if c.features != PHONE_FEATURES:
            inventories.setdefault((c.features, c.k), []).append(c)
    if inventories:
        lines += ["", "**Units against phones** (PNMI, finest to coarsest rate): " + "; ".join(
            f"{features} k={k}: " + " → ".join(f"{c.pnmi:.2f}" for c in sorted(members, key=lambda c: -c.target))
            for (features, k), members in inventories.items()) + "."]
    phones = [c for c in conditions if c.features == PHONE_FEATURES]
    units = [c for c in conditions if c.features != PHONE_FEATURES]
    if phones and units:
        lines += ["", "**The phone LM (the topline) against the best unit LM:**", ""]
        for task in TASKS:
            best = max(units, key=lambda c: c.final.accuracy(task))
            lines.append(f"- {task}: the phone LM {100 * phones[0].final.accuracy(task):.1f} %, the best unit LM "
                         f"({best.name}) {100 * best.final.accuracy(task):.1f} %: "
                         f"{100 * (phones[0].final.accuracy(task) - best.final.accuracy(task)):.1f} points of room above it.")
    features = sorted({c.features for c in conditions} - {PHONE_FEATURES})
    if len(features) > 1:
        lines += ["", f"**{features[0]} against {features[1]}** at the same k and rate:", ""]
        for d in differences:
            a, b = by_name[d.a], by_name[d.b]
            if a.features != b.features:
                lines.append(f"- {d.task}, k={a.k}, {a.target:g} units/s: {a.features} − {b.features} = "
                             f"{100 * d.difference:+.1f} points [{100 * d.low:+.1f}, {100 * d.high:+.1f}], {d.verdict}")
    return "\n".join(lines)


# -- the whole experiment ---------------------------------------------------------------------------------


def run_toy_experiment(config: ToyExperimentConfig, work_dir: str | Path, corpus: ToyLanguage | None = None,
                       log: Callable[[str], None] = print) -> tuple[list[Condition], dict[str, float]]:
    """Notebook 09's experiment, headless: features, conditions, the phone topline, training and scoring.

    Returns the conditions (the phone LM last) and the seconds each step took. ``work_dir`` receives the
    unit files and training runs (one folder per condition).
    """
    corpus = corpus or load_toy_language()
    timings, started = {}, time.perf_counter()
    features = {name: encode_corpus(corpus, feature_encoder(name)) for name in config.features}
    timings["features"] = time.perf_counter() - started
    started = time.perf_counter()
    conditions = make_conditions(corpus, features, config) + [phone_condition(corpus)]
    timings["codebooks, λ and units"] = time.perf_counter() - started
    started, golds = time.perf_counter(), read_golds(corpus)
    for condition in conditions:
        train_and_score(condition, corpus, Path(work_dir), config, golds)
        log(f"{condition.name}: " + ", ".join(f"{task} {100 * condition.final.accuracy(task):.1f} %" for task in TASKS)
            + f" ({time.perf_counter() - started:.0f} s)")
    timings["training and scoring"] = time.perf_counter() - started
    return conditions, timings


def results_json(conditions: list[Condition], config: ToyExperimentConfig, **extra) -> dict:
    """Everything the run measured, as JSON values: the config, every condition's rates, purity and stages
    (item scores included), and the paired differences."""
    def stage(s: Stage) -> dict:
        return {"steps": s.steps, "tokens": s.tokens, "seconds_of_speech": round(s.seconds, 1), "val_loss": s.val_loss,
                **{task: {"accuracy": s.accuracy(task), "interval": list(s.interval(task)), "items": s.items[task]}
                   for task in TASKS}}

    return {
        "config": asdict(config),
        **extra,
        "conditions": [{"name": c.name, "features": c.features, "k": c.k, "target_units_per_second": c.target,
                        "lmbda": c.lmbda, **asdict(c.rate), "purity": c.purity, "pnmi": c.pnmi,
                        "stages": [stage(s) for s in c.stages]} for c in conditions],
        "differences": [asdict(d) for d in paired_differences(conditions)],
    }


def write_results(path: str | Path, conditions: list[Condition], config: ToyExperimentConfig, **extra) -> Path:
    path = Path(path)
    path.write_text(json.dumps(results_json(conditions, config, **extra), indent=1, allow_nan=False) + "\n")
    return path
