"""Resynthesis intelligibility: how much of what was said survives the units?

For a folder of speech with transcripts (the LibriSpeech layout: ``<speaker>/<chapter>/*.trans.txt``
with lines ``<utterance id> <TEXT>`` beside ``<utterance id>.flac``), each (k, λ) is measured as the
paper does: speech -> DPDP units (the paper's restricted search, ``PAPER_NUM_NEIGHBORS[k]``) ->
ELLA-V (temperature 1, top_p 0) -> WavTokenizer -> speech -> ASR -> word error rate against the
transcript (pooled over the utterances, ``wer``, and the median of the per-utterance WERs, ``median_wer``,
which the paper's Figure 4 plots), next to the bitrate of the units. Two reference rows come with it:
the original audio (the ASR's own error) and the codec's copy-synthesis (WavTokenizer encode -> decode:
the best any resynthesis through these 40 Hz codes can do).

    rows = resynthesis_wer("LibriSpeech/test-clean", [(500, 4500), (500, 0)], asr=my_asr, limit=200)
    plots.plot_k_lambda_curves([r for r in rows if r["system"] == "units"], x="bits_per_second", y="wer")

The ASR is any callable ``asr(wav [samples], sample_rate) -> text``; :func:`whisper_asr` is the
default (``pip install -e ".[asr]"``). Both texts are compared after :func:`normalize_text`.
An ASR may carry an ``identity`` string (:func:`asr_identity`): rows kept for a resumable sweep are
reused only for the same ASR.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
import os
import re
import statistics
import types
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import checkpoints, registry
from .audio import load_mono, resample, save_wav, to_mono
from .checks import MissingDependency, check_count, import_optional
from .ellav import ELLAV
from .pipeline import UnitEncoder, shared_vocoder, resolve_device, synthesize_batch
from .quantize import bitrate
from .settings_record import digest, file_state

ASR = Callable[[torch.Tensor, int], str]
"""A speech recogniser: ``asr(wav FloatTensor [samples], sample_rate) -> text``."""

LIBRISPEECH_AUDIO_SUFFIXES = (".flac", ".wav")
"""An utterance's audio beside its transcript, in order of preference: ``ID.flac`` (LibriSpeech's), else ``ID.wav``."""

RESULT_COLUMNS = ("system", "k", "lmbda", "num_neighbors", "units_per_second", "entropy_bits", "bits_per_second",
                  "wer", "median_wer", "substitutions", "deletions", "insertions", "reference_words",
                  "utterances")  # fmt: skip
"""The columns of a row: ``wer`` is pooled over the utterances, ``median_wer`` the median of their own WERs."""

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Transcripts, text normalisation, WER
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Utterance:
    id: str
    path: Path
    text: str


def read_transcripts(root: str | os.PathLike, limit: int | None = None) -> list[Utterance]:
    """Every utterance of a LibriSpeech-layout folder (``*.trans.txt`` lines ``ID TEXT``), sorted by id.

    ``limit`` keeps the first ``limit`` of them. An utterance whose text has no words (``"?!"``: nothing
    left after :func:`normalize_text`, so no WER) is left out, with a warning that names its line. Raises
    ValueError when there is no transcript, a line has no text, or an utterance's audio (``ID.flac`` or
    ``ID.wav`` beside its transcript) is missing.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be None or an integer >= 1, got {limit!r}")
    utterances, transcripts = [], sorted(root.rglob("*.trans.txt"))
    for transcript in transcripts:
        for number, line in enumerate(transcript.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            uid, _, text = line.strip().partition(" ")
            if not text.strip():
                raise ValueError(f"{transcript}:{number}: expected '<utterance id> <text>', got {line!r}")
            paths = [transcript.parent / f"{uid}{suffix}" for suffix in LIBRISPEECH_AUDIO_SUFFIXES]
            audio = next((p for p in paths if p.is_file()), None)
            if audio is None:
                raise ValueError(f"{transcript}:{number}: no audio for {uid} (looked for {', '.join(map(str, paths))})")
            if not normalize_text(text):
                log.warning("%s:%d: left out %s: its text %r has no words, so no WER", transcript, number, uid,
                            text.strip())
                continue
            utterances.append(Utterance(uid, audio, text.strip()))
    if not transcripts:
        raise ValueError(f"no transcripts (*.trans.txt in the LibriSpeech layout) under {root}")
    if not utterances:
        raise ValueError(f"no utterance under {root} has words in its transcript")
    return sorted(utterances, key=lambda u: u.id)[:limit]


_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()  # fmt: skip
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))
_ABBREVIATIONS = {"mr": "mister", "mrs": "missus", "dr": "doctor"}
_ORDINALS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth", "nine": "ninth",
             "twelve": "twelfth"}  # fmt: skip
_CURRENCIES = {"$": ("dollar", "dollars", "cent", "cents"), "£": ("pound", "pounds", "penny", "pence"),
               "€": ("euro", "euros", "cent", "cents")}  # fmt: skip
_NUMBER = re.compile(
    r"(?P<currency>[$£€])?\s?(?P<integer>\d{1,3}(?:,\d{3})+(?!\d)|\d{1,12})(?:\.(?P<fraction>\d+))?"
    r"(?:(?P<ordinal>st|nd|rd|th)\b|'?(?P<plural>s)\b|\s?(?P<percent>%))?"
)
"""A number as Whisper writes one: ``$5.50``, ``1,905``, ``3.14``, ``21st``, ``1990s``, ``50 %``."""


def _number_words(n: int) -> str:
    """An integer in words, as LibriSpeech transcripts write them: 1905 -> "one thousand nine hundred five"."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for scale, name in _SCALES:
        if n >= scale:
            rest = n % scale
            return f"{_number_words(n // scale)} {name}" + ("" if rest == 0 else " " + _number_words(rest))
    raise AssertionError(n)


def _year_words(n: int) -> str:
    """A year read in two halves: 1905 -> "nineteen oh five", 1850 -> "eighteen fifty", 1900 -> "nineteen hundred"."""
    century, rest = divmod(n, 100)
    second = "hundred" if rest == 0 else f"oh {_ONES[rest]}" if rest < 10 else _number_words(rest)
    return f"{_number_words(century)} {second}"


def _last_word(words: str, change: Callable[[str], str]) -> str:
    head, _, last = words.rpartition(" ")
    return f"{head} {change(last)}".strip()


def _spoken_number(match: re.Match) -> str:
    """One :data:`_NUMBER` in words: "21st" -> "twenty first", "1990s" -> "nineteen nineties", "$1.05" -> "one
    dollar five cents"."""
    digits, fraction, currency = match["integer"].replace(",", ""), match["fraction"], match["currency"]
    n = int(digits)
    is_year = digits == match["integer"] and len(digits) == 4 and 1100 <= n <= 1999 and fraction is None
    words = _year_words(n) if is_year else _number_words(n)
    if match["ordinal"]:
        words = _last_word(words, lambda w: _ORDINALS.get(w) or (w[:-1] + "ieth" if w.endswith("y") else w + "th"))
    elif match["plural"]:
        words = _last_word(words, lambda w: w[:-1] + "ies" if w.endswith("y") else w + ("es" if w.endswith("x") else "s"))
    if currency and fraction is not None and len(fraction) == 2:  # $5.50: dollars and cents
        unit, units, cent, cents = _CURRENCIES[currency]
        small = int(fraction)
        parts = [f"{words} {unit if n == 1 else units}"] * (n > 0 or small == 0)
        parts += [f"{_number_words(small)} {cent if small == 1 else cents}"] * (small > 0)
        return f" {' '.join(parts)} "
    if fraction is not None:
        words += " point " + " ".join(_ONES[int(d)] for d in fraction)
    if currency:
        unit, units = _CURRENCIES[currency][:2]
        words += f" {unit if n == 1 and fraction is None else units}"
    return f" {words}{' percent' if match['percent'] else ''} "


def _drop_number_and(words: list[str]) -> list[str]:
    """Remove the "and" of "one hundred and five", so that it equals "one hundred five" (from "105")."""
    numbers = {*_ONES, *_TENS[2:]}
    return [w for i, w in enumerate(words) if not (
        w == "and" and 0 < i < len(words) - 1 and words[i - 1] in ("hundred", "thousand", "million", "billion")
        and words[i + 1] in numbers)]  # fmt: skip


def normalize_text(text: str) -> str:
    """Lower case, accents and punctuation removed, numbers and a few abbreviations spelled out.

    ``"Mr. Quilter's 2 CATS, café!"`` -> ``"mister quilter's two cats cafe"``. Apostrophes inside words
    stay (LibriSpeech keeps them). Numbers are read as a reader says them: integers in words (``1,905``
    -> "one thousand nine hundred five", and "one hundred and five" loses its "and"); a four-digit whole
    number from 1100 to 1999 as a year (``1905`` -> "nineteen oh five", ``1990s`` -> "nineteen nineties");
    ordinals (``21st`` -> "twenty first"); decimals digit by digit (``3.14`` -> "three point one four");
    ``50%`` and "per cent" -> "fifty percent"; ``$5.50`` -> "five dollars fifty cents" (also £, €).
    """
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).lower()
    text = text.replace("\u2019", "'").replace("&", " and ")
    text = _NUMBER.sub(_spoken_number, text)
    words = re.sub(r"[^a-z0-9']+", " ", text).split()
    words = [_ABBREVIATIONS.get(w, w) for w in (w.strip("'") for w in words)]
    text = " ".join(_drop_number_and([w for w in words if w]))
    return re.sub(r"\bper cent\b", "percent", text)


@dataclass(frozen=True)
class WordErrors:
    """Word errors of hypotheses against references: counts over all utterances, and each utterance's WER."""

    substitutions: int
    deletions: int
    insertions: int
    reference_words: int
    utterance_wers: tuple[float, ...] = ()
    """Each utterance's own WER (its errors / its reference words), in the order of the references."""

    @property
    def wer(self) -> float:
        """The pooled (corpus) WER: (substitutions + deletions + insertions) / reference words."""
        return (self.substitutions + self.deletions + self.insertions) / self.reference_words

    @property
    def median_wer(self) -> float:
        """The median of :attr:`utterance_wers`, the statistic the paper's Figure 4 plots."""
        if not self.utterance_wers:
            raise ValueError("no per-utterance WERs: build WordErrors with word_error_rate")
        return statistics.median(self.utterance_wers)

    def __float__(self) -> float:
        return self.wer


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str],
                    normalize: Callable[[str], str] | None = normalize_text) -> WordErrors:
    """Word errors (via ``jiwer``) of ``hypotheses`` against ``references`` after ``normalize``, pooled and per utterance.

    ``float(word_error_rate(refs, hyps))`` is the pooled WER as a fraction, ``.median_wer`` the median of
    the per-utterance WERs; ``normalize=None`` compares the texts as given (split on white space). A
    reference without words (``"?!"``) has no WER: it raises ValueError naming it (leave it out).
    """
    jiwer = import_optional("jiwer", "word_error_rate")
    if isinstance(references, str) or isinstance(hypotheses, str):
        raise TypeError("references and hypotheses must be lists of texts, not single strings")
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    normalize = normalize or (lambda text: " ".join(text.split()))
    normalized = [normalize(t) for t in references]
    if not normalized:
        raise ValueError("no references: the WER is undefined")
    empty = [f"{i} ({text!r})" for i, (text, words) in enumerate(zip(references, normalized)) if not words.split()]
    if empty:
        raise ValueError(f"references with no words have no WER: {', '.join(empty[:5])}"
                         f"{f' and {len(empty) - 5} more' if len(empty) > 5 else ''}; leave them out")
    each = [jiwer.process_words(r, normalize(h)) for r, h in zip(normalized, hypotheses)]
    counts = [(out.substitutions, out.deletions, out.insertions, len(r.split())) for out, r in zip(each, normalized)]
    return WordErrors(*(sum(column) for column in zip(*counts)), tuple((s + d + i) / n for s, d, i, n in counts))


# ---------------------------------------------------------------------------------------------
# The default ASR
# ---------------------------------------------------------------------------------------------


class ASRUnavailable(RuntimeError):
    """The default speech recogniser is not installed or its weights cannot be loaded."""


def whisper_asr(model_name: str = "base.en", device: str | torch.device | None = None) -> ASR:
    """OpenAI Whisper (``pip install openai-whisper``) as an :data:`ASR`: English, greedy decoding.

    The weights are downloaded once into the dpslm cache (``<cache>/whisper``). ``base.en`` is quick on
    a CPU; ``large-v3`` (GPU) is closer to the strong recognisers papers use.
    """
    try:
        whisper = import_optional("whisper", "the default ASR (OpenAI Whisper)")
    except MissingDependency as e:
        raise ASRUnavailable(f"{e}, or pass your own asr callable (wav, sample_rate) -> text") from e
    root = checkpoints.cache_dir() / "whisper"
    device = resolve_device(device)
    try:
        model = whisper.load_model(model_name, device=device, download_root=str(root))
    except Exception as e:  # a failed download (URLError, OSError, checksum) or an unknown name (RuntimeError)
        url = getattr(whisper, "_MODELS", {}).get(model_name)
        where = f"download {url} elsewhere and place it at {root / url.rsplit('/', 1)[-1]}" if url else (
            f"choose one of {whisper.available_models()}")
        raise ASRUnavailable(f"could not load the Whisper model {model_name!r} ({e}); {where}") from e

    def transcribe(wav: torch.Tensor, sample_rate: int) -> str:
        audio = resample(to_mono(wav), sample_rate, 16000)[0].numpy()
        result = model.transcribe(audio, language="en", temperature=0.0, condition_on_previous_text=False,
                                  fp16=device.startswith("cuda"))  # fmt: skip
        return result["text"]

    transcribe.__name__ = f"whisper_{model_name}"
    transcribe.identity = (f"openai-whisper {getattr(whisper, '__version__', '?')} {model_name} "
                           f"{'fp16' if device.startswith('cuda') else 'fp32'}")
    return transcribe


def asr_identity(asr: ASR) -> str:
    """Which recogniser ``asr`` is: its ``identity`` attribute where it has one (:func:`whisper_asr`:
    package version, model, precision), else its module, qualified name and a digest of its code,
    constants and simple closure values (so two different lambdas differ)."""
    identity = getattr(asr, "identity", None)
    if identity is not None:
        return str(identity)
    function = asr if hasattr(asr, "__code__") else getattr(type(asr), "__call__", None)
    name = f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', type(asr).__qualname__)}"
    code = getattr(function, "__code__", None)
    if code is None:
        return name
    constants = [c for c in code.co_consts if not isinstance(c, types.CodeType)]
    cells = [c.cell_contents for c in getattr(function, "__closure__", None) or ()]
    simple = [v for v in cells if isinstance(v, (str, int, float, bool, type(None)))]
    return f"{name} {digest([code.co_code.hex(), repr(constants), simple])}"


# ---------------------------------------------------------------------------------------------
# Resynthesis WER
# ---------------------------------------------------------------------------------------------


def resynthesis_wer(
    audio_dir: str | os.PathLike,
    pairs: Sequence[tuple[int, float]],
    asr: ASR | None = None,
    limit: int | None = None,
    references: bool = True,
    exact_search: bool = False,
    temperature: float = 1.0,
    top_p: float = 0.0,
    seed: int = 0,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    save_audio: str | os.PathLike | None = None,
    results_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> list[dict]:
    """WER of the resynthesis of every utterance under ``audio_dir``, one row per system.

    Rows (dicts, keys :data:`RESULT_COLUMNS` plus ``hypotheses``: utterance id -> normalised ASR text):
    with ``references``, ``system="original"`` (the audio itself; no bitrate) and ``"codec"``
    (WavTokenizer copy-synthesis; nominal bitrate 40 codes/s × 12 bits); then ``system="units"`` for
    each (k, λ) of ``pairs``, whose bitrate is :func:`~dpslm_utils.bitrate` of all the utterances' units.
    Units use the paper's restricted search (``PAPER_NUM_NEIGHBORS[k]``) unless ``exact_search``;
    ELLA-V samples with ``temperature`` / ``top_p`` (the paper: 1.0 / 0.0), ``batch_size`` utterances
    at a time. ``asr`` defaults to :func:`whisper_asr`. ``save_audio`` writes every resynthesis as
    ``<save_audio>/<name>/<utterance id>.wav`` (name: ``original``, ``codec``, ``k500_lmbda4500``, with
    ``_exact`` for the exact search). With ``results_dir``, every finished row is kept
    there (``<name>.json``) and reused by a later call with the same utterances and settings, so an
    interrupted sweep resumes where it stopped. A kept row is keyed by the transcripts, the audio
    folder, each audio file's size and modification time, :func:`asr_identity` and the settings: a
    corrected transcript, changed audio or another ASR measure the row again.
    """
    pairs = [registry.check_combination(k, lmbda) for k, lmbda in pairs]
    if not pairs and not references:
        raise ValueError("nothing to measure: give at least one (k, lmbda) pair or references=True")
    check_count("batch_size", batch_size)
    utterances = read_transcripts(audio_dir, limit)
    device = resolve_device(device)
    asr = asr if asr is not None else whisper_asr(device=device)
    settings = {"utterances": [u.id for u in utterances], "audio_dir": str(Path(audio_dir).resolve()),
                "transcripts": digest([(u.id, u.text) for u in utterances]),
                "audio": digest([(str(u.path), file_state(u.path)) for u in utterances]), "asr": asr_identity(asr),
                "weights": checkpoints.weights_mode(), "exact_search": exact_search, "temperature": temperature,
                "top_p": top_p, "seed": seed, "batch_size": batch_size}  # fmt: skip
    settings["columns"] = list(RESULT_COLUMNS)  # rows kept by a version with other columns are measured again
    vocoder = shared_vocoder(device, checkpoints.weights_mode())

    def measure(name: str, speak: Callable[[list[Utterance]], list[tuple[torch.Tensor, int]]], **row) -> dict:
        """Speak every utterance (``batch_size`` at a time), transcribe, score: the row for one system."""
        hypotheses = {}
        with tqdm(total=len(utterances), desc=name, disable=not progress) as bar:
            for begin in range(0, len(utterances), batch_size):
                batch = utterances[begin : begin + batch_size]
                for utterance, (wav, sr) in zip(batch, speak(batch)):
                    if save_audio is not None:
                        save_wav(Path(save_audio) / name / f"{utterance.id}.wav", wav, sr)
                    hypotheses[utterance.id] = normalize_text(asr(wav, sr))
                bar.update(len(batch))
        errors = word_error_rate([u.text for u in utterances], list(hypotheses.values()))
        return {"system": name, **dict.fromkeys(RESULT_COLUMNS[1:7]), **row, "wer": errors.wer,
                "median_wer": errors.median_wer, "substitutions": errors.substitutions, "deletions": errors.deletions,
                "insertions": errors.insertions, "reference_words": errors.reference_words,
                "utterances": len(utterances), "hypotheses": hypotheses}  # fmt: skip

    def original(batch: list[Utterance]) -> list[tuple[torch.Tensor, int]]:
        return [(wav[0], sr) for wav, sr in (load_mono(u.path) for u in batch)]

    def copy_synthesis(batch: list[Utterance]) -> list[tuple[torch.Tensor, int]]:
        return [(vocoder.decode(vocoder.encode(wav, sr)[None])[0].cpu(), vocoder.sample_rate) for wav, sr in original(batch)]

    def codec_row() -> dict:
        rate, bits = vocoder.frame_rate, math.log2(vocoder.num_codes)
        return measure("codec", copy_synthesis, units_per_second=rate, entropy_bits=bits, bits_per_second=rate * bits)

    def units_name(k: int, lmbda: int) -> str:
        return f"k{k}_lmbda{lmbda}" + ("_exact" if exact_search else "")

    def units_row(k: int, lmbda: int) -> dict:
        num_neighbors = None if exact_search else registry.PAPER_NUM_NEIGHBORS[k]
        encoder = UnitEncoder.from_pretrained(k, lmbda, device, num_neighbors)
        ellav = ELLAV.from_pretrained(k, lmbda, device=device)
        frame_units = []

        def resynthesize(batch: list[Utterance]) -> list[tuple[torch.Tensor, int]]:
            encoded = [encoder.encode(wav, sr) for wav, sr in original(batch)]
            frame_units.extend(e.frame_units for e in encoded)
            speech = synthesize_batch(ellav, vocoder, [e.units for e in encoded], temperature, top_p, seed)
            return [(s.wav, s.sample_rate) for s in speech]

        row = measure(units_name(k, lmbda), resynthesize, k=k, lmbda=lmbda, num_neighbors=num_neighbors)
        rate = bitrate(frame_units)
        return {**row, "system": "units", "units_per_second": rate.units_per_second,
                "entropy_bits": rate.entropy_bits, "bits_per_second": rate.bits_per_second}  # fmt: skip

    systems = [("original", lambda: measure("original", original)), ("codec", codec_row)] if references else []
    systems += [(units_name(k, lmbda), functools.partial(units_row, k, lmbda)) for k, lmbda in pairs]
    return [_kept(results_dir, name, settings, compute) for name, compute in systems]


def _kept(folder: str | os.PathLike | None, name: str, settings: dict, compute: Callable[[], dict]) -> dict:
    """``compute()``, or the row stored in ``folder/<name>.json`` by an earlier call with the same ``settings``."""
    if folder is None:
        return compute()
    path = Path(folder) / f"{name}.json"
    try:
        stored = json.loads(path.read_text()) if path.is_file() else None
    except ValueError:  # a damaged file is measured again
        stored = None
    if stored is not None and stored.get("settings") == settings:
        return stored["row"]
    row = compute()
    checkpoints.write_atomically(path, lambda tmp: tmp.write_text(json.dumps({"settings": settings, "row": row})))
    return row


def write_results(rows: list[dict], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``wer.csv`` (one line per row, :data:`RESULT_COLUMNS`) and ``wer.json`` (with the hypotheses) in ``out_dir``."""
    out_dir = Path(out_dir)
    csv_path, json_path = out_dir / "wer.csv", out_dir / "wer.json"

    def write_csv(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, RESULT_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    checkpoints.write_atomically(csv_path, write_csv)
    checkpoints.write_atomically(json_path, lambda tmp: tmp.write_text(json.dumps(rows, indent=1) + "\n"))
    return csv_path, json_path
