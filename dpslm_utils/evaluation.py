"""Measure units and unit LMs the way the paper does: ZeroSpeech 2021 sWUGGY / sBLIMP, and phone ABX.

Lexical (sWUGGY) and syntactic (sBLIMP) accuracy ask whether the LM scores the real word (the
grammatical sentence) above its matched non-word (ungrammatical sentence). The metrics follow the
official ``zerospeech2021`` evaluation step by step:

1. every (word, non-word) pair spoken by the same voice scores 1 if the word's score is higher,
   0.5 on a tie, 0 otherwise (lexical: pairs share ``id`` and ``voice``; syntactic: the i-th
   correct row of ``gold.csv`` is paired with the i-th incorrect row, which must share ``id`` and voice);
2. the pairs of one ``id`` are averaged over voices: one value per item;
3. ``overall`` is the mean over items; ``by_frequency`` (lexical) and ``by_type`` (syntactic) give
   ``n``, mean and (sample) standard deviation over the items of each group. Lexical ``in_vocab``
   excludes the ``oov`` band (the leaderboard's "in-vocabulary" figure).

The frequency bands are the official half-open intervals ``[0, 1), [1, 5), [5, 20), [20, 100),
[100, ∞)``, with the official labels ``oov, 1-5, 6-20, 21-100, >100`` (so "1-5" holds counts 1 to 4).

Each file's score is the unit LM's summed log-likelihood of its deduplicated units, as Mistral-ULM's
ZeroSpeech script computes it (``reduction="sum"``); ``reduction="mean"`` divides by the number of
units, which removes the bias against long utterances.

ABX (``abx_error_rates``) uses the ZeroSpeech-maintained ``zerospeech-libriabx2`` package
(``pip install -e ".[eval]"``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .audio import load_audio, to_mono
from .checks import AUDIO_SUFFIXES, import_optional
from .checkpoints import using_random_weights, write_atomically
from .datasets import save_array
from .pipeline import FEATURE_LAYER

REDUCTIONS = ("sum", "mean")
TASKS = ("lexical", "syntactic")
SPLITS = ("dev", "test")
FREQUENCY_BANDS = (("oov", 0, 1), ("1-5", 1, 5), ("6-20", 5, 20), ("21-100", 20, 100), (">100", 100, math.inf))
"""Official lexical frequency bands: (label, low, high) with ``low <= frequency < high``."""

_REQUIRED_COLUMNS = {"lexical": ("filename", "correct", "id", "voice", "frequency"),
                     "syntactic": ("filename", "correct", "id", "voice", "type", "subtype")}
_INTEGER_COLUMNS = ("correct", "frequency", "length")


# -- gold files and the official metrics -------------------------------------------------------------


def read_gold(path: str | os.PathLike) -> list[dict]:
    """The rows of a ZeroSpeech ``gold.csv`` as dicts (``correct``, ``frequency``, ``length`` as ints)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"gold file {path} does not exist")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        columns = reader.fieldnames or []
    if not {"filename", "correct", "id", "voice"} <= set(columns):
        raise ValueError(f"{path} is not a ZeroSpeech gold file: it needs the columns filename, correct, id, voice; "
                         f"found {columns}")
    for line, row in enumerate(rows, start=2):
        for column in _INTEGER_COLUMNS:
            if column in row:
                value = row[column]
                try:
                    row[column] = None if value in ("", None) else int(value)
                except ValueError:
                    raise ValueError(f"{path} line {line}: {column} must be an integer, got {value!r}") from None
        if row["correct"] not in (0, 1):
            raise ValueError(f"{path} line {line}: correct must be 0 or 1, got {row['correct']!r}")
    return rows


def _check_inputs(gold: Sequence[dict], scores: dict[str, float], task: str) -> None:
    if not gold:
        raise ValueError("the gold list is empty")
    missing_columns = [c for c in _REQUIRED_COLUMNS[task] if c not in gold[0]]
    if missing_columns:
        raise ValueError(f"{task} gold rows need the columns {list(_REQUIRED_COLUMNS[task])}; missing {missing_columns}")
    missing = [row["filename"] for row in gold if row["filename"] not in scores]
    if missing:
        raise ValueError(f"{len(missing)} gold files have no score, e.g. {missing[:3]}")


def _pair_score(good: float, bad: float) -> float:
    return 1.0 if good > bad else 0.5 if good == bad else 0.0


def _mean(values: list[float]) -> float:
    """Mean as the official code's ``Series.mean`` computes it (numpy's pairwise sum), to the last bit."""
    return float(np.sum(np.asarray(values, dtype=np.float64)) / len(values))


def _summary(values: list[float]) -> dict:
    """``n``, ``score`` (mean) and ``std`` (sample standard deviation; None for one value) of a group.

    Computed as the official code's ``groupby(...).agg(mean, std)`` does (Kahan-compensated sum,
    Welford variance), so the digits agree exactly.
    """
    total = compensation = mean = m2 = 0.0
    for n, value in enumerate(values, start=1):
        y = value - compensation
        t = total + y
        compensation, total = (t - total) - y, t
        delta = value - mean
        mean += delta / n
        m2 += delta * (value - mean)
    n = len(values)
    return {"n": n, "score": total / n, "std": math.sqrt(m2 / (n - 1)) if n > 1 else None}


def _by_item(pairs: list[dict], key: Callable[[dict], tuple]) -> list[tuple[tuple, list[dict]]]:
    """Pairs grouped by ``key``, in the official (pandas groupby) order: sorted, integer ids as numbers.

    The order matters to the last bit: the overall mean is a pairwise sum over items in this order.
    """
    items: dict[tuple, list[dict]] = defaultdict(list)
    for pair in pairs:
        items[key(pair)].append(pair)
    numeric = all(str(k[-1]).lstrip("-").isdigit() for k in items)
    return sorted(items.items(), key=lambda item: (*item[0][:-1], int(item[0][-1]) if numeric else item[0][-1]))


def lexical_accuracy(gold: Sequence[dict], scores: dict[str, float]) -> dict:
    """Official sWUGGY metrics from gold rows (:func:`read_gold`) and ``scores`` (file stem -> score).

    Returns ``{"overall", "in_vocab", "by_frequency": {band: {n, score, std}}, "by_length",
    "by_id": [{id, word, non_word, frequency, length, score}], "pairs": [{id, voice, word, non_word, score}]}``;
    pair scores are 0 / 0.5 / 1, item (``by_id``) scores their mean over voices.
    """
    _check_inputs(gold, scores, "lexical")
    words, non_words = defaultdict(list), defaultdict(list)
    for row in gold:
        (words if row["correct"] == 1 else non_words)[(row["voice"], row["id"])].append(row)

    pairs = []
    for key, word_rows in words.items():
        for word in word_rows:
            for non_word in non_words.get(key, []):
                pairs.append({"id": word["id"], "voice": word["voice"], "word": word["filename"],
                              "non_word": non_word["filename"], "frequency": word["frequency"],
                              "length": word.get("length"), "word_text": word.get("word") or word.get("phones"),
                              "non_word_text": non_word.get("word") or non_word.get("phones"),
                              "score": _pair_score(scores[word["filename"]], scores[non_word["filename"]])})
    if not pairs:
        raise ValueError("no (word, non-word) pairs: no id/voice has both a correct and an incorrect row")

    by_id = []
    for (item_id,), item in _by_item(pairs, lambda p: (p["id"],)):
        first = item[0]
        by_id.append({"id": item_id, "word": first["word_text"], "non_word": first["non_word_text"],
                      "frequency": first["frequency"], "length": first["length"],
                      "score": _mean([p["score"] for p in item])})

    by_frequency = {}
    for label, low, high in FREQUENCY_BANDS:
        band = [i["score"] for i in by_id if i["frequency"] is not None and low <= i["frequency"] < high]
        if band:
            by_frequency[label] = _summary(band)
    lengths = sorted({i["length"] for i in by_id if i["length"] is not None})
    by_length = {length: _summary([i["score"] for i in by_id if i["length"] == length]) for length in lengths}
    in_vocab = [band for label, band in by_frequency.items() if label != "oov"]  # the leaderboard's n-weighted mean
    return {
        "overall": _mean([i["score"] for i in by_id]),
        "in_vocab": float(np.average([b["score"] for b in in_vocab], weights=[b["n"] for b in in_vocab]))
        if in_vocab else None,
        "by_frequency": by_frequency,
        "by_length": by_length,
        "by_id": by_id,
        "pairs": [{k: p[k] for k in ("id", "voice", "word", "non_word", "score")} for p in pairs],
    }


def syntactic_accuracy(gold: Sequence[dict], scores: dict[str, float]) -> dict:
    """Official sBLIMP metrics from gold rows (:func:`read_gold`) and ``scores`` (file stem -> score).

    Returns ``{"overall", "by_type": {type: {n, score, std}}, "by_id": [{type, subtype, id, score}],
    "pairs": [{id, voice, sentence, non_sentence, score}]}``.
    """
    _check_inputs(gold, scores, "syntactic")
    good = [row for row in gold if row["correct"] == 1]
    bad = [row for row in gold if row["correct"] == 0]
    if len(good) != len(bad) or not good:
        raise ValueError(f"sBLIMP gold needs as many correct as incorrect rows (and some), "
                         f"got {len(good)} and {len(bad)}")
    pairs = []
    for sentence, non_sentence in zip(good, bad):
        if (sentence["id"], sentence["voice"]) != (non_sentence["id"], non_sentence["voice"]):
            raise ValueError(f"gold rows are out of order: the correct row {sentence['filename']} (id "
                             f"{sentence['id']}, voice {sentence['voice']}) is paired by position with "
                             f"{non_sentence['filename']} (id {non_sentence['id']}, voice {non_sentence['voice']})")
        pairs.append({"id": sentence["id"], "voice": sentence["voice"], "type": sentence["type"],
                      "subtype": sentence["subtype"], "sentence": sentence["filename"],
                      "non_sentence": non_sentence["filename"],
                      "score": _pair_score(scores[sentence["filename"]], scores[non_sentence["filename"]])})

    items = _by_item(pairs, lambda p: (p["type"], p["subtype"], p["id"]))
    by_id = [{"type": t, "subtype": s, "id": i, "score": _mean([p["score"] for p in item])}
             for (t, s, i), item in items]
    types = sorted({i["type"] for i in by_id})
    return {
        "overall": _mean([i["score"] for i in by_id]),
        "by_type": {t: _summary([i["score"] for i in by_id if i["type"] == t]) for t in types},
        "by_id": by_id,
        "pairs": [{k: p[k] for k in ("id", "voice", "sentence", "non_sentence", "score")} for p in pairs],
    }


def bootstrap_interval(values: Sequence[float], confidence: float = 0.95, num_samples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval ``(low, high)`` of the mean of ``values``."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"values must be a non-empty 1-D sequence, got shape {list(values.shape)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(num_samples, len(values)))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


# -- scoring with a unit LM ---------------------------------------------------------------------------


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {list(REDUCTIONS)}, got {reduction!r}")


def score_units(ulm, sequences: Sequence, reduction: str = "sum", batch_size: int = 32) -> list[float]:
    """Unit-LM score of each deduplicated unit sequence: summed (or per-unit mean) log-likelihood in nats."""
    _check_reduction(reduction)
    sums = ulm.loglikelihood_batch(list(sequences), batch_size=batch_size)
    if reduction == "sum":
        return sums
    return [total / len(units) for total, units in zip(sums, sequences)]


@dataclass(frozen=True)
class PairAccuracy:
    """How often the unit LM prefers the good member of each (good, bad) pair."""

    accuracy: float
    """Mean of ``per_pair``."""
    per_pair: list[float]
    """1 when the good sequence scores higher, 0.5 on a tie, 0 otherwise."""
    margins: list[float]
    """score(good) - score(bad) per pair, in nats (per unit with ``reduction="mean"``)."""


def pair_accuracy(ulm, pairs: Sequence[tuple], reduction: str = "sum", batch_size: int = 32) -> PairAccuracy:
    """Score in-memory ``(good_units, bad_units)`` pairs of deduplicated unit sequences with ``ulm``."""
    if not pairs:
        raise ValueError("pairs is empty")
    if any(len(pair) != 2 for pair in pairs):
        raise ValueError("each pair must be (good_units, bad_units)")
    scores = score_units(ulm, [seq for pair in pairs for seq in pair], reduction, batch_size)
    good, bad = scores[0::2], scores[1::2]
    per_pair = [_pair_score(g, b) for g, b in zip(good, bad)]
    return PairAccuracy(sum(per_pair) / len(per_pair), per_pair, [g - b for g, b in zip(good, bad)])


def _read_mono(path: Path) -> tuple[torch.Tensor, int]:
    wav, sample_rate = load_audio(path)
    return to_mono(wav), sample_rate


def encode_files(paths: Sequence[str | os.PathLike], encoder, *, batch_size: int = 8,
                 cache_dir: str | os.PathLike | None = None, progress: bool = True) -> dict[str, torch.Tensor]:
    """Deduplicated units (LongTensor ``[N]``) of each audio file, keyed by file stem.

    ``encoder`` is a :class:`~dpslm_utils.UnitEncoder`; files are encoded ``batch_size`` at a time.
    With ``cache_dir``, each file's units are kept as ``<stem>.npy`` (int64 ``[N]``) and read back on
    the next call, so an interrupted run resumes where it stopped.
    """
    paths = [Path(p) for p in paths]
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        raise ValueError("audio files must have distinct names (stems): results are keyed by them")
    cache = Path(cache_dir) if cache_dir is not None else None
    units: dict[str, torch.Tensor] = {}
    todo = []
    for path in paths:
        cached = cache / f"{path.stem}.npy" if cache else None
        if cached is not None and cached.is_file():
            units[path.stem] = torch.from_numpy(np.load(cached))
        else:
            todo.append(path)
    todo.sort(key=lambda p: p.stat().st_size)  # similar lengths share a padded WavLM batch
    with tqdm(total=len(todo), desc="encode", unit="file", disable=not progress or not todo) as bar:
        for begin in range(0, len(todo), batch_size):
            chunk = todo[begin : begin + batch_size]
            audio = [_read_mono(p) for p in chunk]
            rates = {sr for _, sr in audio}
            groups = [[i for i, (_, sr) in enumerate(audio) if sr == rate] for rate in rates]
            for group in groups:
                try:
                    encoded = encoder.encode_batch([audio[i][0] for i in group], audio[group[0]][1])
                except (ValueError, RuntimeError) as e:
                    raise ValueError(f"cannot encode {', '.join(str(chunk[i]) for i in group)}: {e}") from e
                for i, result in zip(group, encoded):
                    units[chunk[i].stem] = result.units
                    if cache is not None:
                        save_array(cache / f"{chunk[i].stem}.npy", result.units.numpy().astype(np.int64))
            bar.update(len(chunk))
    return {stem: units[stem] for stem in stems}


def score_files(paths: Sequence[str | os.PathLike], encoder, ulm, *, reduction: str = "sum", batch_size: int = 8,
                cache_dir: str | os.PathLike | None = None, progress: bool = True) -> dict[str, float]:
    """Encode each audio file with ``encoder`` and score its units with ``ulm``: file stem -> score (nats)."""
    _check_reduction(reduction)
    units = encode_files(paths, encoder, batch_size=batch_size, cache_dir=cache_dir, progress=progress)
    stems = list(units)
    scores = score_units(ulm, [units[s] for s in stems], reduction)
    return dict(zip(stems, scores))


def find_split(dataset_dir: str | os.PathLike, task: str, split: str) -> list[Path]:
    """The audio files (any of ``checks.AUDIO_SUFFIXES``) of ``DATASET_DIR/<task>/<split>``, sorted; [] if absent."""
    folder = Path(dataset_dir) / task / split
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def write_submission(path: str | os.PathLike, scores: dict[str, float]) -> None:
    """The official submission file: one ``"<file stem> <score>"`` per line, sorted by stem."""
    text = "".join(f"{stem} {scores[stem]!r}\n" for stem in sorted(scores))
    write_atomically(Path(path), lambda tmp: tmp.write_text(text))


def evaluate_zerospeech(dataset_dir: str | os.PathLike, out_dir: str | os.PathLike, *, encoder, ulm,
                        splits: Iterable[str] = ("dev",), reduction: str = "sum", batch_size: int = 8,
                        progress: bool = True) -> dict:
    """Score an sLM21-layout dataset and compute the official lexical and syntactic metrics.

    For each task and split found under ``dataset_dir`` it writes ``out_dir/<task>/<split>.txt``
    (the submission file), caches units under ``out_dir/units/<task>/<split>/`` and, where the split
    has a ``gold.csv``, adds the metrics. Everything also goes to ``out_dir/results.json``.
    Returns ``{task: {split: {"files", "submission", ...metrics}}}`` plus ``"settings"``.
    """
    _check_reduction(reduction)
    splits = list(splits)
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"splits must come from {list(SPLITS)}, got {split!r}")
    out_dir = Path(out_dir)
    found = {(t, s): find_split(dataset_dir, t, s) for t in TASKS for s in splits}
    if not any(found.values()):
        raise FileNotFoundError(f"no audio under {dataset_dir}/{{lexical,syntactic}}/{{{','.join(splits)}}}: "
                                f"expected the sLM21 layout (e.g. lexical/dev/*.wav and lexical/dev/gold.csv)")
    results: dict = {"settings": {"reduction": reduction, "random_weights": using_random_weights()}}
    accuracy = {"lexical": lexical_accuracy, "syntactic": syntactic_accuracy}
    for (task, split), files in found.items():
        if not files:
            continue
        scores = score_files(files, encoder, ulm, reduction=reduction, batch_size=batch_size,
                             cache_dir=out_dir / "units" / task / split, progress=progress)
        submission = out_dir / task / f"{split}.txt"
        write_submission(submission, scores)
        entry = {"files": len(files), "submission": str(submission)}
        gold = Path(dataset_dir) / task / split / "gold.csv"
        if gold.is_file():
            entry.update(accuracy[task](read_gold(gold), scores))
        results.setdefault(task, {})[split] = entry
    write_atomically(out_dir / "results.json", lambda tmp: tmp.write_text(json.dumps(results, indent=1) + "\n"))
    return results


def results_table(results: dict) -> str:
    """The headline numbers of :func:`evaluate_zerospeech` as a plain-text table (accuracies in %)."""
    lines = [f"{'task':<10} {'split':<5} {'files':>6} {'accuracy':>9}  details"]
    for task in TASKS:
        for split, entry in results.get(task, {}).items():
            if "overall" not in entry:
                lines.append(f"{task:<10} {split:<5} {entry['files']:>6} {'(no gold)':>9}")
                continue
            groups = entry["by_frequency"] if task == "lexical" else entry["by_type"]
            details = ", ".join(f"{name} {g['score'] * 100:.1f}" for name, g in groups.items())
            if task == "lexical" and entry["in_vocab"] is not None:
                details = f"in-vocab {entry['in_vocab'] * 100:.1f}; " + details
            lines.append(f"{task:<10} {split:<5} {entry['files']:>6} {entry['overall'] * 100:>8.2f}%  {details}")
    return "\n".join(lines)


# -- phone ABX ------------------------------------------------------------------------------------------

def _libriabx():
    eval_abx = import_optional("zrc_abx2.eval_ABX", "ABX")
    return eval_abx.EvalABX, eval_abx.EvalArgs


def one_hot_units(units, num_units: int) -> np.ndarray:
    """Frame units ``[T]`` -> float32 one-hot ``[T, num_units]`` (the "units" representation for ABX)."""
    units = np.asarray(units)
    if units.ndim != 1 or not np.issubdtype(units.dtype, np.integer):
        raise ValueError(f"units must be a 1-D integer array [T], got {units.dtype} of shape {list(units.shape)}")
    if len(units) and (units.min() < 0 or units.max() >= num_units):
        raise ValueError(f"units must lie in [0, {num_units})")
    return np.eye(num_units, dtype=np.float32)[units]


def _as_arrays(name: str, representation: dict | str | os.PathLike) -> dict[str, np.ndarray] | Path:
    """A folder of 2-D ``.npy`` features as it is; anything else as a dict stem -> array."""
    if isinstance(representation, dict):
        arrays = {stem: np.asarray(v.cpu() if isinstance(v, torch.Tensor) else v) for stem, v in representation.items()}
    else:
        folder = Path(representation)
        files = sorted(folder.glob("*.npy")) if folder.is_dir() else []
        if not files:
            raise FileNotFoundError(f"representation {name!r}: {folder} is not a folder of <stem>.npy files")
        if np.load(files[0], mmap_mode="r").ndim == 2:
            return folder
        arrays = {p.stem: np.load(p) for p in files}
    if not arrays:
        raise ValueError(f"representation {name!r} is empty")
    return arrays


def _write_features(folder: Path, name: str, arrays: dict[str, np.ndarray]) -> None:
    """One ``<stem>.npy`` float32 ``[T, D]`` per file; 1-D integer units become one-hot vectors."""
    discrete = [a.ndim == 1 for a in arrays.values()]
    if any(discrete) and not all(discrete):
        raise ValueError(f"representation {name!r} mixes features [T, D] and units [T]")
    num_units = max((int(a.max()) + 1 for a in arrays.values() if len(a)), default=1) if all(discrete) else None
    for stem, array in arrays.items():
        if num_units is not None:
            array = one_hot_units(array, num_units)
        elif array.ndim != 2:
            raise ValueError(f"representation {name!r}, {stem}: features must be [T, D], got shape {list(array.shape)}")
        np.save(folder / f"{stem}.npy", array.astype(np.float32))


def abx_error_rates(item_file: str | os.PathLike, representations: dict[str, dict | str | os.PathLike], *,
                    frame_rate: float = 50.0, distance: str = "cosine", speaker_modes: Sequence[str] = ("within", "across"),
                    context_mode: str = "within", max_size_group: int = 10, max_x_across: int = 5,
                    seed: int = 3459, cuda: bool = False) -> dict[str, dict[str, float]]:
    """ABX error rates (%) of each representation on a ZeroSpeech / Libri-light ``.item`` file.

    ``representations`` maps a name to either a dict ``{file stem: features [T, D] or units [T]}``
    (frames at ``frame_rate`` Hz, the file stems the item file names) or a folder of ``<stem>.npy``
    feature files. Integer units ``[T]`` are compared as one-hot vectors: with the cosine (angular)
    distance two frames are 0 apart if they carry the same unit and 0.5 otherwise, so DTW counts
    mismatching frames along the best alignment. Features are compared with ``distance``
    (``cosine``, the ZeroSpeech default, or ``euclidean``, ``kl``, ``kl_symmetric``).
    ``context_mode="within"`` is the classic triphone ABX; ``"any"`` ignores the phone context.

    Returns ``{name: {"within": error %, "across": error %}}`` (the requested ``speaker_modes``).
    """
    EvalABX, EvalArgs = _libriabx()
    item_file = Path(item_file)
    if not item_file.is_file():
        raise FileNotFoundError(f"item file {item_file} does not exist")
    if context_mode not in ("within", "any"):
        raise ValueError(f"context_mode must be 'within' or 'any', got {context_mode!r}")
    modes = list(speaker_modes)
    if not modes or any(m not in ("within", "across") for m in modes):
        raise ValueError(f"speaker_modes must be a non-empty subset of ('within', 'across'), got {modes}")
    results = {}
    for name, representation in representations.items():
        arrays = _as_arrays(name, representation)
        with tempfile.TemporaryDirectory(prefix="dpslm-abx-") as tmp:
            folder = arrays if isinstance(arrays, Path) else Path(tmp)
            if not isinstance(arrays, Path):
                _write_features(folder, name, arrays)
            args = EvalArgs(path_data=str(folder), path_item_file=str(item_file), file_extension=".npy",
                            feature_size=1 / frame_rate, cuda=cuda,
                            speaker_mode=modes[0] if len(modes) == 1 else "all", context_mode=context_mode,
                            distance_mode=distance, max_size_group=max_size_group, max_x_across=max_x_across,
                            seed=seed)
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # it prints and warns a lot
                warnings.simplefilter("ignore")
                scores = EvalABX().eval_abx(args)
        results[name] = {s["abx-s-condition"]: 100 * s["score"] for s in scores
                         if s["abx-c-condition"] == context_mode and s["abx-s-condition"] in modes}
    return results


def abx_representations(paths: Sequence[str | os.PathLike], encoder, out_dir: str | os.PathLike | None = None,
                        progress: bool = True) -> dict[str, dict[str, torch.Tensor] | Path]:
    """The paper's three ABX representations of each audio file, from a :class:`~dpslm_utils.UnitEncoder`.

    ``"wavlm"``: WavLM layer-11 features ``[T, 1024]``; ``"dpdp"``: the codebook vector of each
    frame's DPDP unit ``[T, 1024]``; ``"units"``: the frame units ``[T]`` (one-hot for ABX).
    In memory (``{name: {stem: tensor}}``) by default; with ``out_dir`` each goes to
    ``out_dir/<name>/<stem>.npy`` (files already there are kept: resumable) and the folders are returned.
    """
    names = ("wavlm", "dpdp", "units")
    folders = {n: Path(out_dir) / n for n in names} if out_dir is not None else None
    out: dict = {n: {} for n in names}
    for path in tqdm([Path(p) for p in paths], desc="ABX features", unit="file", disable=not progress):
        if folders and all((folders[n] / f"{path.stem}.npy").is_file() for n in names):
            continue
        wav, sample_rate = _read_mono(path)
        features = encoder.encoder(wav, sample_rate, layer=FEATURE_LAYER).float()
        _, units = encoder.quantizer(features)
        values = {"wavlm": features.cpu(), "dpdp": encoder.quantizer.codebook[units].float().cpu(), "units": units.cpu()}
        for n in names:
            if folders:
                save_array(folders[n] / f"{path.stem}.npy", values[n].numpy())
            else:
                out[n][path.stem] = values[n]
    return folders if folders else out
