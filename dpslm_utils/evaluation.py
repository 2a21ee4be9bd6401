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

from .audio import load_mono
from .checks import AUDIO_SUFFIXES, clashes, first_few, import_optional
from .checkpoints import using_random_weights, write_atomically
from .datasets import save_array
from .pipeline import FEATURE_LAYER
from .settings_record import FileCache, check_settings, model_identity

REDUCTIONS = ("sum", "mean")
TASKS = ("lexical", "syntactic")
SPLITS = ("dev", "test")
FREQUENCY_BANDS = (("oov", 0, 1), ("1-5", 1, 5), ("6-20", 5, 20), ("21-100", 20, 100), (">100", 100, math.inf))
"""Official lexical frequency bands: (label, low, high) with ``low <= frequency < high``."""

_REQUIRED_COLUMNS = {"lexical": ("filename", "correct", "id", "voice", "frequency"),
                     "syntactic": ("filename", "correct", "id", "voice", "type", "subtype")}
_INTEGER_COLUMNS = ("correct", "frequency", "length")


# -- gold files and the official metrics -------------------------------------------------------------


def read_gold(path: str | os.PathLike, task: str | None = None) -> list[dict]:
    """The rows of a ZeroSpeech ``gold.csv`` as dicts (``correct``, ``frequency``, ``length`` as ints).

    Refuses a file that names one audio file on several lines (a repeated row would count its pair
    twice), naming the lines. With ``task`` (``"lexical"`` or ``"syntactic"``) it also checks that
    task's columns. A UTF-8 byte-order mark is accepted.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"gold file {path} does not exist")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path} is not a ZeroSpeech gold file (a UTF-8 CSV table): {e}") from None
    needed = _REQUIRED_COLUMNS[task] if task is not None else ("filename", "correct", "id", "voice")
    if not set(needed) <= set(columns):
        raise ValueError(f"{path} is not a ZeroSpeech {task + ' ' if task else ''}gold file: it needs the columns "
                         f"{', '.join(needed)}; found {columns}")
    repeated = [f"{name} on lines {', '.join(str(i + 2) for i in rows_of)}" for name, rows_of in _repeated(rows).items()]
    if repeated:
        raise ValueError(f"{path} names {len(repeated)} file(s) more than once: {'; '.join(repeated[:3])}. "
                         "Each file must appear on one line")
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


def _repeated(rows: Sequence[dict]) -> dict[str, list[int]]:
    """File names that appear in more than one row -> the indices of those rows."""
    where: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        where[row["filename"]].append(i)
    return {name: indices for name, indices in where.items() if len(indices) > 1}


def _check_inputs(gold: Sequence[dict], scores: dict[str, float], task: str) -> None:
    if not gold:
        raise ValueError("the gold list is empty")
    missing_columns = [c for c in _REQUIRED_COLUMNS[task] if c not in gold[0]]
    if missing_columns:
        raise ValueError(f"{task} gold rows need the columns {list(_REQUIRED_COLUMNS[task])}; missing {missing_columns}")
    repeated = _repeated(gold)
    if repeated:
        raise ValueError(f"{len(repeated)} files appear in more than one gold row, e.g. {sorted(repeated)[:3]}")
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


def paired_bootstrap_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95,
                              num_samples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval ``(low, high)`` of ``mean(a) − mean(b)``, where ``a[i]`` and ``b[i]``
    measure the same item (e.g. two models' scores of item i).

    Each resample draws items, and keeps both of an item's values together: the interval of the mean
    of the differences ``a[i] − b[i]``. What the two share (an easy item is easy for both) cancels, so
    it is narrower than two separate intervals would suggest whenever the values are positively correlated.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal shapes (one value per item in each), got {list(a.shape)} and "
                         f"{list(b.shape)}")
    return bootstrap_interval(a - b, confidence, num_samples, seed)


# -- units against phones -------------------------------------------------------------------------------


def _unit_phone_counts(frame_units: Sequence, frame_phones: Sequence) -> np.ndarray:
    """Joint counts ``[units, phones]`` of frames: how often unit u and phone p label the same frame."""
    units, phones = np.asarray(frame_units), np.asarray(frame_phones)
    if units.ndim != 1 or units.shape != phones.shape or len(units) == 0:
        raise ValueError(f"frame_units and frame_phones must be equally long, non-empty 1-D sequences (one label per "
                         f"frame), got shapes {list(units.shape)} and {list(phones.shape)}")
    _, unit_ids = np.unique(units, return_inverse=True)
    _, phone_ids = np.unique(phones, return_inverse=True)
    counts = np.zeros((unit_ids.max() + 1, phone_ids.max() + 1), dtype=np.int64)
    np.add.at(counts, (unit_ids, phone_ids), 1)
    return counts


def unit_phone_purity(frame_units: Sequence, frame_phones: Sequence) -> float:
    """Phone purity of units (Hsu et al., HuBERT, 2021): the share of frames whose phone is the most
    frequent phone of their unit, i.e. the accuracy of reading each unit as its majority phone.

    ``frame_units`` ``[T]`` and ``frame_phones`` ``[T]`` label the same frames (any hashable labels,
    e.g. :meth:`~dpslm_utils.PhoneAlignment.frame_labels`). 1 when every unit covers one phone only; a
    single unit for everything gives the share of the most frequent phone.
    """
    counts = _unit_phone_counts(frame_units, frame_phones)
    return float(counts.max(axis=1).sum() / counts.sum())


def phone_normalized_mutual_information(frame_units: Sequence, frame_phones: Sequence) -> float:
    """Phone-normalized mutual information (PNMI; Hsu et al., 2021): ``I(phone; unit) / H(phone)``.

    The share of the uncertainty about a frame's phone that knowing its unit removes: 1 when the unit
    determines the phone, 0 when units and phones are independent. Frames as in :func:`unit_phone_purity`;
    needs at least two phones (``H(phone) > 0``).
    """
    joint = _unit_phone_counts(frame_units, frame_phones) / len(frame_units)
    p_unit, p_phone = joint.sum(axis=1, keepdims=True), joint.sum(axis=0, keepdims=True)
    if joint.shape[1] < 2:
        raise ValueError("PNMI needs frames of at least two phones: with one phone, H(phone) = 0")
    seen = joint > 0
    mutual = float((joint[seen] * np.log(joint[seen] / (p_unit @ p_phone)[seen])).sum())
    entropy = float(-(p_phone * np.log(p_phone)).sum())
    return max(0.0, mutual / entropy)  # ≥ 0 up to rounding


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


def encoder_identity(encoder) -> dict:
    """What determines an encoder's units, as JSON values: the key of every unit and feature cache.

    For a :class:`~dpslm_utils.UnitEncoder`: ``k``, ``lmbda``, ``num_neighbors``, ``random_weights``
    and ``model`` (:func:`~dpslm_utils.settings_record.model_identity` of WavLM and the codebook).
    Any other encoder must say it with a ``cache_identity`` attribute (a dict).
    """
    identity = getattr(encoder, "cache_identity", None)
    if identity is not None:
        return dict(identity)
    quantizer, features = getattr(encoder, "quantizer", None), getattr(encoder, "encoder", None)
    if quantizer is None or features is None:
        raise TypeError(f"cannot tell what determines the units of a {type(encoder).__name__}: use a UnitEncoder, "
                        "or give it a cache_identity dict (the settings and weights its units depend on)")
    return {"k": quantizer.k, "lmbda": float(quantizer.lmbda), "num_neighbors": quantizer.num_neighbors,
            "random_weights": bool(encoder.random_weights), "model": model_identity(features, quantizer.codebook)}


def check_distinct_stems(paths: Sequence[Path]) -> None:
    """Refuse (ValueError) audio files that share a stem (``x.wav`` and ``x.flac``): results are keyed by it."""
    shared = clashes(paths, key=lambda path: path.stem)
    if shared:
        raise ValueError(f"audio files must have distinct names (stems), results are keyed by them: {first_few(shared, 3)}")


def encode_files(paths: Sequence[str | os.PathLike], encoder, *, batch_size: int = 8,
                 cache_dir: str | os.PathLike | None = None, progress: bool = True) -> dict[str, torch.Tensor]:
    """Deduplicated units (LongTensor ``[N]``) of each audio file, keyed by file stem.

    ``encoder`` is a :class:`~dpslm_utils.UnitEncoder`; files are encoded ``batch_size`` at a time.
    With ``cache_dir``, each file's units are kept as ``<stem>.npy`` (int64 ``[N]``) and read back on
    the next call, so an interrupted run resumes where it stopped. A cached file is reused only while
    its audio file has the same size and modification time and the encoder the same
    :func:`encoder_identity`; otherwise it is encoded again.
    """
    paths = [Path(p) for p in paths]
    check_distinct_stems(paths)
    stems = [p.stem for p in paths]
    cache = FileCache(cache_dir, encoder_identity(encoder)) if cache_dir is not None else None
    units: dict[str, torch.Tensor] = {}
    keys: dict[Path, str] = {}
    todo = []
    for path in paths:
        if cache is not None:
            keys[path] = cache.key(path)
            cached = cache.folder / f"{path.stem}.npy"
            if cache.holds(path.stem, keys[path], [cached]):
                with contextlib.suppress(ValueError, OSError):  # unreadable: encoded again
                    units[path.stem] = torch.from_numpy(np.load(cached))
                    continue
        todo.append(path)
    todo.sort(key=lambda p: p.stat().st_size)  # similar lengths share a padded WavLM batch
    with tqdm(total=len(todo), desc="encode", unit="file", disable=not progress or not todo) as bar:
        for begin in range(0, len(todo), batch_size):
            chunk = todo[begin : begin + batch_size]
            audio = [load_mono(p) for p in chunk]
            rates = {sr for _, sr in audio}
            groups = [[i for i, (_, sr) in enumerate(audio) if sr == rate] for rate in rates]
            for group in groups:
                try:
                    encoded = encoder.encode_batch([audio[i][0] for i in group], audio[group[0]][1])
                except (ValueError, RuntimeError) as e:
                    raise ValueError(f"cannot encode {', '.join(str(chunk[i]) for i in group)}: {e}") from e
                for i, result in zip(group, encoded):
                    path = chunk[i]
                    units[path.stem] = result.units
                    if cache is not None:
                        cache.forget(path.stem)
                        save_array(cache.folder / f"{path.stem}.npy", result.units.numpy().astype(np.int64))
                        cache.record(path.stem, keys[path])
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


_ACCURACY = {"lexical": lexical_accuracy, "syntactic": syntactic_accuracy}


def check_zerospeech_dataset(dataset_dir: str | os.PathLike, splits: Iterable[str] = ("dev",)
                             ) -> dict[tuple[str, str], tuple[list[Path], list[dict] | None]]:
    """``{(task, split): (audio files, gold rows or None)}`` of an sLM21-layout dataset, checked before any encoding.

    Refuses (ValueError, FileNotFoundError; the message names the file) a dataset with no audio for
    ``splits``, a split with two audio files of one stem (``x.wav`` and ``x.flac``), and a
    ``gold.csv`` with missing columns, repeated files, unpaired rows or files that have no audio.
    """
    splits = list(splits)
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"splits must come from {list(SPLITS)}, got {split!r}")
    found = {}
    for task in TASKS:
        for split in splits:
            files, gold_path = find_split(dataset_dir, task, split), Path(dataset_dir) / task / split / "gold.csv"
            check_distinct_stems(files)
            gold = read_gold(gold_path, task) if gold_path.is_file() else None
            if gold is not None:
                stems = {p.stem for p in files}
                missing = sorted({row["filename"] for row in gold} - stems)
                if missing:
                    raise FileNotFoundError(f"{gold_path} names {len(missing)} file(s) with no audio file in "
                                            f"{gold_path.parent}, e.g. {missing[:3]}")
                try:
                    _ACCURACY[task](gold, dict.fromkeys(stems, 0.0))  # the pairing, checked before hours of encoding
                except ValueError as e:
                    raise ValueError(f"{gold_path}: {e}") from None
            if files:
                found[(task, split)] = (files, gold)
    if not found:
        raise FileNotFoundError(f"no audio under {dataset_dir}/{{lexical,syntactic}}/{{{','.join(splits)}}}: "
                                f"expected the sLM21 layout (e.g. lexical/dev/*.wav and lexical/dev/gold.csv)")
    return found


def evaluate_zerospeech(dataset_dir: str | os.PathLike, out_dir: str | os.PathLike, *, encoder, ulm,
                        splits: Iterable[str] = ("dev",), reduction: str = "sum", batch_size: int = 8,
                        progress: bool = True) -> dict:
    """Score an sLM21-layout dataset and compute the official lexical and syntactic metrics.

    For each task and split found under ``dataset_dir`` it writes ``out_dir/<task>/<split>.txt``
    (the submission file), caches units under ``out_dir/units/<task>/<split>/`` and, where the split
    has a ``gold.csv``, adds the metrics. Everything also goes to ``out_dir/results.json``.
    Returns ``{task: {split: {"files", "submission", ...metrics}}}`` plus ``"settings"``.

    The dataset is checked first (:func:`check_zerospeech_dataset`). ``out_dir`` records the
    :func:`encoder_identity` in ``dpslm_settings.json``; a folder filled by another encoder (other k,
    λ, search or weights) is refused, and a cached file is encoded again when its audio changed.
    The unit LM and ``reduction`` may differ from run to run: scores are always recomputed.
    """
    _check_reduction(reduction)
    found = check_zerospeech_dataset(dataset_dir, splits)
    out_dir = Path(out_dir)
    check_settings(out_dir, "zerospeech", encoder_identity(encoder))
    results: dict = {"settings": {"reduction": reduction, "random_weights": using_random_weights()}}
    for (task, split), (files, gold) in found.items():
        scores = score_files(files, encoder, ulm, reduction=reduction, batch_size=batch_size,
                             cache_dir=out_dir / "units" / task / split, progress=progress)
        submission = out_dir / task / f"{split}.txt"
        write_submission(submission, scores)
        entry = {"files": len(files), "submission": str(submission)}
        if gold is not None:
            entry.update(_ACCURACY[task](gold, scores))
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


ITEM_COLUMNS = ("#file", "onset", "offset", "#phone", "prev-phone", "next-phone", "speaker")


@dataclass(frozen=True)
class ItemToken:
    """One line of an ABX ``.item`` file: a phone (or word) token, where it is, its context and speaker."""

    line: int
    file: str
    onset: float
    offset: float
    phone: str
    previous: str
    next: str
    speaker: str

    @property
    def context(self) -> tuple[str, str]:
        return self.previous, self.next


def read_item_file(path: str | os.PathLike) -> list[ItemToken]:
    """The tokens of an ABX ``.item`` file: a header line, then one line per token with the
    :data:`ITEM_COLUMNS` (times in seconds). Blank lines are skipped.

    Refuses (ValueError naming the file and line) a file that is not UTF-8 text, a line without 7
    columns, a time that is not a finite number, a negative onset, an offset not after its onset,
    and a file without tokens.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"item file {path} does not exist")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not an ABX item file: byte {e.start} is not UTF-8 text") from None
    if "\0" in text:
        raise ValueError(f"{path} is not an ABX item file: it holds binary data")
    tokens = []
    for number, line in enumerate(text.splitlines()[1:], start=2):
        columns = line.split()
        if not columns:
            continue
        where = f"{path} line {number}"
        if len(columns) != len(ITEM_COLUMNS):
            raise ValueError(f"{where}: expected {len(ITEM_COLUMNS)} columns ({' '.join(ITEM_COLUMNS)}), "
                             f"got {len(columns)}: {line.strip()[:80]!r}")
        try:
            onset, offset = float(columns[1]), float(columns[2])
        except ValueError:
            raise ValueError(f"{where}: onset and offset must be numbers (seconds), "
                             f"got {columns[1]!r} {columns[2]!r}") from None
        if not (math.isfinite(onset) and math.isfinite(offset) and 0 <= onset < offset):
            raise ValueError(f"{where}: expected 0 <= onset < offset (seconds), got {onset} and {offset}")
        tokens.append(ItemToken(number, columns[0], onset, offset, *columns[3:]))
    if not tokens:
        raise ValueError(f"{path} holds no ABX tokens (a header line, then lines of {' '.join(ITEM_COLUMNS)})")
    return tokens


def check_abx_triplets(item_file: str | os.PathLike, tokens: Sequence[ItemToken], speaker_modes: Sequence[str],
                       context_mode: str = "within") -> None:
    """Refuse (ValueError) a speaker mode for which ``tokens`` form no ABX triplet.

    A and X are tokens of one phone, B of another, A and B said by one speaker (in one context with
    ``context_mode="within"``). Within speakers X is another token of A's speaker, so some phone
    needs two tokens from one speaker; across speakers X comes from another speaker.
    """
    group = (lambda t: (t.context, t.speaker)) if context_mode == "within" else (lambda t: ((), t.speaker))
    counts: dict[tuple, dict[str, int]] = defaultdict(lambda: defaultdict(int))  # (context, speaker) -> phone -> tokens
    speakers: dict[tuple, set] = defaultdict(set)  # (context, phone) -> speakers
    for token in tokens:
        context, speaker = group(token)
        counts[(context, speaker)][token.phone] += 1
        speakers[(context, token.phone)].add(speaker)
    possible = {
        "within": any(len(phones) > 1 and max(phones.values()) > 1 for phones in counts.values()),
        "across": any(len(phones) > 1 and any(len(speakers[(context, p)]) > 1 for p in phones)
                      for (context, _), phones in counts.items()),
    }
    why = {"within": "no speaker says one phone twice (in one context) beside another phone",
           "across": "no phone is said by two speakers (in one context) beside another phone"}
    for mode in speaker_modes:
        if not possible[mode]:
            others = [m for m in ("within", "across") if m != mode and possible[m]]
            raise ValueError(f"{item_file} gives no {mode}-speaker ABX triplets: {why[mode]}"
                             + (f". Ask for the {others[0]}-speaker mode only" if others else ""))


def _check_token_frames(item_file: Path, name: str, tokens: Sequence[ItemToken], frames: dict[str, int],
                        frame_rate: float) -> list[ItemToken]:
    """The tokens that cover at least one frame (as zrc_abx2 slices them); refuse missing files and onsets past the end."""
    missing = sorted({t.file for t in tokens} - set(frames))
    if missing:
        raise ValueError(f"representation {name!r} has no features for {len(missing)} file(s) that {item_file} "
                         f"names, e.g. {missing[:3]}")
    kept = []
    for token in tokens:
        total = frames[token.file]
        start = max(0, math.ceil(frame_rate * token.onset - 0.5))
        if start >= total:
            raise ValueError(f"{item_file} line {token.line}: the token starts at {token.onset:g} s, but {token.file} "
                             f"ends at {total / frame_rate:g} s ({total} frames at {frame_rate:g} Hz): "
                             "is this the item file of this audio?")
        if min(total, math.floor(frame_rate * token.offset - 0.5)) > start:
            kept.append(token)  # shorter than a frame: skipped, as the official code does
    return kept


def _representation(name: str, representation: dict | str | os.PathLike
                    ) -> tuple[dict[str, np.ndarray] | Path, dict[str, int]]:
    """A folder of 2-D ``.npy`` features as it is, anything else as a dict stem -> array; and each file's frames."""
    if isinstance(representation, dict):
        arrays = {stem: np.asarray(v.cpu() if isinstance(v, torch.Tensor) else v) for stem, v in representation.items()}
        if not arrays:
            raise ValueError(f"representation {name!r} is empty")
        return arrays, {stem: len(a) for stem, a in arrays.items()}
    folder = Path(representation)
    files = sorted(folder.glob("*.npy")) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"representation {name!r}: {folder} is not a folder of <stem>.npy files")
    shapes = {}
    for path in files:
        try:
            array = np.load(path, mmap_mode="r")
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"representation {name!r}: {path} is not a readable .npy array ({e})") from None
        if array.ndim not in (1, 2) or not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"representation {name!r}: {path} holds {array.dtype} of shape {list(array.shape)}; "
                             "expected features [T, D] or units [T]")
        first = shapes.setdefault(files[0].stem, array.shape)
        if array.shape[1:] != first[1:]:
            raise ValueError(f"representation {name!r}: {path} has shape {list(array.shape)}, but {files[0].name} "
                             f"has {list(first)}: every file must be features [T, D] with one D, or units [T]")
        shapes[path.stem] = array.shape
    frames = {stem: shape[0] for stem, shape in shapes.items()}
    if len(first) == 1:  # units [T]: written as one-hot features
        return {path.stem: np.load(path) for path in files}, frames
    return folder, frames


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

    Checked before any distance is computed (ValueError naming the file, and the line where there is
    one): the item file (:func:`read_item_file`); that each requested speaker mode has triplets
    (:func:`check_abx_triplets`: an item file with one token per phone and speaker, such as
    ``toy_language.write_word_abx_items`` writes, has none within speakers); that every file it names
    has features, in readable ``.npy`` files of one shape; and that no token starts past the end of
    its file. Tokens shorter than a frame are skipped, as the official code does.

    Returns ``{name: {"within": error %, "across": error %}}`` (the requested ``speaker_modes``).
    """
    EvalABX, EvalArgs = _libriabx()
    item_file = Path(item_file)
    if context_mode not in ("within", "any"):
        raise ValueError(f"context_mode must be 'within' or 'any', got {context_mode!r}")
    modes = list(speaker_modes)
    if not modes or any(m not in ("within", "across") for m in modes):
        raise ValueError(f"speaker_modes must be a non-empty subset of ('within', 'across'), got {modes}")
    tokens = read_item_file(item_file)
    check_abx_triplets(item_file, tokens, modes, context_mode)
    sources = {name: _representation(name, representation) for name, representation in representations.items()}
    for name, (_, frames) in sources.items():
        check_abx_triplets(item_file, _check_token_frames(item_file, name, tokens, frames, frame_rate), modes, context_mode)
    results = {}
    with tempfile.TemporaryDirectory(prefix="dpslm-abx-") as tmp:
        items = Path(tmp) / item_file.name  # the checked tokens, one per line (no blank lines for zrc_abx2 to trip on)
        items.write_text(" ".join(ITEM_COLUMNS) + "\n" + "".join(
            f"{t.file} {t.onset!r} {t.offset!r} {t.phone} {t.previous} {t.next} {t.speaker}\n" for t in tokens))
        for i, (name, (arrays, _)) in enumerate(sources.items()):
            folder = arrays if isinstance(arrays, Path) else Path(tmp) / f"features-{i}"
            if not isinstance(arrays, Path):
                folder.mkdir()
                _write_features(folder, name, arrays)
            args = EvalArgs(path_data=str(folder), path_item_file=str(items), file_extension=".npy",
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
    ``out_dir/<name>/<stem>.npy`` and the folders are returned. Files already there are kept
    (resumable) while their audio file has the same size and modification time and the encoder the
    same :func:`encoder_identity`; otherwise they are computed again.
    """
    names = ("wavlm", "dpdp", "units")
    paths = [Path(p) for p in paths]
    check_distinct_stems(paths)
    folders = {n: Path(out_dir) / n for n in names} if out_dir is not None else None
    cache = FileCache(out_dir, encoder_identity(encoder)) if out_dir is not None else None
    out: dict = {n: {} for n in names}
    for path in tqdm(paths, desc="ABX features", unit="file", disable=not progress):
        if cache is not None:
            key = cache.key(path)
            if cache.holds(path.stem, key, [folders[n] / f"{path.stem}.npy" for n in names]):
                continue
        wav, sample_rate = load_mono(path)
        features = encoder.encoder(wav, sample_rate, layer=FEATURE_LAYER).float()
        _, units = encoder.quantizer(features)
        values = {"wavlm": features.cpu(), "dpdp": encoder.quantizer.codebook[units].float().cpu(), "units": units.cpu()}
        if cache is not None:
            cache.forget(path.stem)
        for n in names:
            if folders:
                save_array(folders[n] / f"{path.stem}.npy", values[n].numpy())
            else:
                out[n][path.stem] = values[n]
        if cache is not None:
            cache.record(path.stem, key)
    return folders if folders else out
