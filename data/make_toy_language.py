"""Re-create the toy-language corpus with espeak-ng (Debian: apt-get install espeak-ng).

    python data/make_toy_language.py [--out DIR]     # recordings, corpus.csv, both gold.csv, phones.csv
    python data/make_toy_language.py --phones-only   # phones.csv for the recordings already in DIR

DIR defaults to the package data folder ``dpslm_utils/data/toy_language``. Everything is seeded: the same
espeak-ng version gives the same recordings. The grammar, lexicon, voices and rates are in
``dpslm_utils/toy_language.py``. Each utterance is synthesised at espeak-ng's native 22.05 kHz, resampled
to 16 kHz and stored as mono Ogg Opus (about 25 kbit/s: the whole corpus fits in a few MB, and the
codec's loss is far below the differences between voices).

Phones (``phones.csv``): ``data/espeak_events.py`` speaks each text again through espeak-ng's library,
with the same voice, rate and flags, in a fresh process, and reports every phoneme and the sample at
which espeak-ng starts it. Its samples are checked to be the ``espeak-ng`` command's (SHA-256), so these
are the phones that spoke the recording. Times are ``sample / 22050`` seconds: resampling keeps time
(torchaudio's filter is symmetric) and libsndfile's Opus decoding removes the encoder's delay, so the
16 kHz file has ``ceil(samples * 16000 / 22050)`` samples and the same time axis.

``--phones-only`` writes no audio: it synthesises every recording again in memory, checks that its
decoded samples equal the file's (the file bytes differ only in the Ogg stream serial number, which
libsndfile draws at random, and the page checksums that cover it), then writes ``phones.csv``.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import hashlib
import io
import json
import math
import os
import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from dpslm_utils.audio import resample  # noqa: E402
from dpslm_utils.toy_language import (  # noqa: E402
    LEXICON, PHONES, RATES, SAMPLE_RATE, SYNTACTIC_ERRORS, TEST_RATE, TOY_LANGUAGE_DIR, VOICES, all_words,
    break_word_order, non_words, sample_sentence, sample_utterance,
)

SEED = 2025
NUM_TRAIN = 400
NUM_VALIDATION = 40
NON_WORDS_PER_WORD = 3
SYNTACTIC_PAIRS_PER_ERROR = 30
OPUS_COMPRESSION = 0.95  # soundfile's compression_level for Opus: higher = smaller file
ESPEAK_EVENTS = Path(__file__).resolve().parent / "espeak_events.py"
WAV_HEADER = 44  # bytes before the samples in espeak-ng's --stdout WAV


@dataclass(frozen=True)
class Recording:
    file: str  # path relative to the corpus folder
    text: str
    voice: str
    rate: int


# ---------------------------------------------------------------------------------------------
# What is said: the tables (seeded)
# ---------------------------------------------------------------------------------------------


def corpus_rows(rng: random.Random, held_out: set[str]) -> list[dict]:
    """Training and validation utterances (none of them a syntactic test sentence), random voice and rate."""
    rows = []
    for split, count in (("train", NUM_TRAIN), ("validation", NUM_VALIDATION)):
        for n in range(count):
            words = sample_utterance(rng)
            while " ".join(words) in held_out:
                words = sample_utterance(rng)
            rows.append({"split": split, "filename": f"{split}_{n:04d}.ogg", "voice": rng.choice(VOICES),
                         "rate": rng.choice(RATES), "text": " ".join(words)})
    return rows


def lexical_rows(rng: random.Random, train_text: list[str]) -> list[dict]:
    """Every word against NON_WORDS_PER_WORD non-words, each pair in every voice (ZeroSpeech 2021 columns).

    ``phones`` and ``length`` are the spelling's letters (the official files put phones there; the
    phones espeak-ng spoke are in ``phones.csv``)."""
    counts = {word: sum(sentence.split().count(word) for sentence in train_text) for word in all_words()}
    items = []
    pairs = [(word, non_word) for word in all_words() for non_word in rng.sample(non_words(word), NON_WORDS_PER_WORD)]
    for pair, (word, non_word) in enumerate(pairs):
        for voice in VOICES:
            items += [(pair, word, 1, counts[word], voice), (pair, non_word, 0, 0, voice)]
    names = rng.sample(range(len(items)), len(items))  # file names do not give the answer away
    return [{"id": pair, "filename": f"lex_{name:04d}", "correct": correct, "frequency": frequency, "word": text,
             "phones": " ".join(text), "length": len(text), "voice": voice}
            for (pair, text, correct, frequency, voice), name in zip(items, names)]


def syntactic_sentences(rng: random.Random) -> list[tuple[str, list[str]]]:
    """(error, grammatical sentence) for the syntactic test; adjective_position ones have an adjective."""
    sentences = []
    for error in SYNTACTIC_ERRORS:
        while sum(e == error for e, _ in sentences) < SYNTACTIC_PAIRS_PER_ERROR:
            words = sample_sentence(rng)
            needs_adjective = error == "adjective_position"
            if needs_adjective and not any(word in LEXICON["adjective"] for word in words):
                continue
            if all(words != other for _, other in sentences):
                sentences.append((error, words))
    return sentences


def syntactic_rows(rng: random.Random, sentences: list[tuple[str, list[str]]]) -> list[dict]:
    """Each grammatical sentence and its broken twin, in one voice (voices in turn)."""
    items = []
    for pair, (error, words) in enumerate(sentences):
        voice = VOICES[pair % len(VOICES)]
        broken = break_word_order(words, error)
        items += [(pair, error, 1, words, voice), (pair, error, 0, broken, voice)]
    names = rng.sample(range(len(items)), len(items))
    return [{"id": pair, "filename": f"syn_{name:04d}", "type": error, "subtype": error, "correct": correct,
             "transcription": " ".join(words), "voice": voice}
            for (pair, error, correct, words, voice), name in zip(items, names)]


def make_tables() -> dict[str, list[dict]]:
    """The three tables, from SEED: {"corpus.csv" | "lexical/dev/gold.csv" | "syntactic/dev/gold.csv": rows}."""
    rng = random.Random(SEED)
    test_sentences = syntactic_sentences(rng)
    rows = corpus_rows(rng, {" ".join(words) for _, words in test_sentences})
    lexical = lexical_rows(rng, [row["text"] for row in rows if row["split"] == "train"])
    return {"corpus.csv": rows, "lexical/dev/gold.csv": lexical,
            "syntactic/dev/gold.csv": syntactic_rows(rng, test_sentences)}


def recordings(tables: dict[str, list[dict]]) -> list[Recording]:
    """Every recording the tables name, with what it says and how."""
    corpus = [Recording(f"{r['split']}/{r['filename']}", r["text"], r["voice"], int(r["rate"]))
              for r in tables["corpus.csv"]]
    lexical = [Recording(f"lexical/dev/{r['filename']}.ogg", r["word"], r["voice"], TEST_RATE)
               for r in tables["lexical/dev/gold.csv"]]
    syntactic = [Recording(f"syntactic/dev/{r['filename']}.ogg", r["transcription"], r["voice"], TEST_RATE)
                 for r in tables["syntactic/dev/gold.csv"]]
    return corpus + lexical + syntactic


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


# ---------------------------------------------------------------------------------------------
# How it sounds: espeak-ng, and its phoneme events
# ---------------------------------------------------------------------------------------------


def espeak_events(recording: Recording, ipa: bool = False) -> dict:
    """data/espeak_events.py's report for one recording (see its docstring), in a fresh process."""
    command = [sys.executable, ESPEAK_EVENTS, recording.voice, str(recording.rate), recording.text]
    return json.loads(subprocess.run(command + (["--ipa"] if ipa else []), check=True, capture_output=True).stdout)


def espeak(recording: Recording) -> tuple[bytes, np.ndarray]:
    """(the espeak-ng command's WAV output, its samples resampled to 16 kHz ``[N]``) of one recording."""
    wav = subprocess.run(["espeak-ng", "-v", recording.voice, "-s", str(recording.rate), "--stdout", recording.text],
                         check=True, capture_output=True).stdout
    samples, sample_rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    return wav, resample(torch.from_numpy(samples)[None], sample_rate, SAMPLE_RATE)[0].numpy()


def synthesize(recording: Recording) -> tuple[bytes, dict]:
    """(16 kHz mono Ogg Opus file bytes, its phones.csv row) of one recording."""
    wav, samples = espeak(recording)
    opus = io.BytesIO()
    soundfile.write(opus, samples, SAMPLE_RATE, format="OGG", subtype="OPUS", compression_level=OPUS_COMPRESSION)
    events = espeak_events(recording)
    if events["sha256"] != hashlib.sha256(wav[WAV_HEADER:]).hexdigest():
        sys.exit(f"{recording}: espeak-ng's library spoke other samples than its command; phones would not fit")
    return opus.getvalue(), phones_row(recording, events, espeak_events(recording, ipa=True), len(samples))


def phones_row(recording: Recording, events: dict, ipa_events: dict, num_samples: int) -> dict:
    """The phones.csv row: the phonemes of each word, when each starts, when the last ends."""
    *spoken, (pause, pause_at), (end, end_at) = events["phonemes"]
    sample_rate = events["sample_rate"]
    words = recording.text.split()
    word_starts = [sample for _, sample in events["words"]]
    problems = []
    if (pause, end, end_at) != ("_:", "_", events["num_samples"]):
        problems.append(f"ends with {events['phonemes'][-2:]}, not the final pause and the end of the audio")
    if num_samples != math.ceil(events["num_samples"] * SAMPLE_RATE / sample_rate):
        problems.append(f"{num_samples} samples at 16 kHz for {events['num_samples']} at {sample_rate} Hz")
    if len(word_starts) != len(words):
        problems.append(f"{len(word_starts)} word events for {len(words)} words")
    unknown = {name for name, _ in spoken} - set(PHONES)
    if unknown:
        problems.append(f"phonemes {sorted(unknown)} are not in toy_language.PHONES (a pause inside?)")
    disagreements = {(name, symbol) for (name, at), (symbol, ipa_at) in zip(spoken, ipa_events["phonemes"])
                     if PHONES.get(name) != symbol or at != ipa_at}
    if disagreements or len(ipa_events["phonemes"]) != len(events["phonemes"]):
        problems.append(f"espeak-ng's IPA disagrees with toy_language.PHONES: {sorted(disagreements)}")
    phones_of_words = [[] for _ in words]
    for name, sample in spoken:
        phones_of_words[max(0, bisect.bisect_right(word_starts, sample) - 1)].append(name)
    if not all(phones_of_words):
        problems.append(f"a word without phones: {phones_of_words}")
    if problems:
        sys.exit(f"{recording}: " + "; ".join(problems))
    return {"file": recording.file, "phones": " | ".join(" ".join(phones) for phones in phones_of_words),
            "starts": " ".join(f"{sample / sample_rate:.4f}" for _, sample in spoken),
            "end": f"{pause_at / sample_rate:.4f}", "samples": num_samples}


def without_ogg_serial(data: bytes) -> bytes:
    """Ogg file bytes with every page's stream serial number and checksum zeroed (libsndfile draws the
    serial number at random, so two writes of the same samples differ there and only there)."""
    data = bytearray(data)
    page = data.find(b"OggS")
    while page >= 0:
        data[page + 14:page + 18] = data[page + 22:page + 26] = bytes(4)
        page = data.find(b"OggS", page + 27)
    return bytes(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=TOY_LANGUAGE_DIR)
    parser.add_argument("--phones-only", action="store_true",
                        help="write phones.csv for the recordings in --out, checking each against espeak-ng")
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng not found: install it (Debian/Ubuntu: apt-get install espeak-ng)")
    torch.set_num_threads(1)  # one recording per thread instead
    if args.phones_only:
        tables = {name: read_csv(args.out / name) for name in make_tables()}
    else:
        tables = make_tables()
        for folder in ("train", "validation", "lexical", "syntactic"):
            shutil.rmtree(args.out / folder, ignore_errors=True)
        for name, rows in tables.items():
            write_csv(args.out / name, rows)
    todo = recordings(tables)
    phones = []
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        for recording, (opus, row) in zip(todo, pool.map(synthesize, todo)):
            path = args.out / recording.file
            if not args.phones_only:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(opus)
            elif not np.array_equal(soundfile.read(io.BytesIO(opus))[0], soundfile.read(path)[0]) or (
                    without_ogg_serial(opus) != without_ogg_serial(path.read_bytes())):
                sys.exit(f"{path} is not what this espeak-ng speaks for {recording}: its phones would not fit")
            phones.append(row)
    write_csv(args.out / "phones.csv", phones)
    size = sum(f.stat().st_size for f in args.out.rglob("*.ogg"))
    print(f"{'checked' if args.phones_only else 'wrote'} {len(todo)} recordings ({size / 1e6:.1f} MB of audio) and "
          f"wrote their phones to {args.out / 'phones.csv'}")


if __name__ == "__main__":
    main()
