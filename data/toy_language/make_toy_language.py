"""Re-create the toy-language corpus in this folder with espeak-ng (Debian: apt-get install espeak-ng).

    python data/toy_language/make_toy_language.py [--out DIR]

Everything is seeded: the same espeak-ng version gives the same files. The grammar, lexicon, voices
and rates are in ``dpslm_utils/toy_language.py``. Each utterance is synthesised at espeak-ng's native
22.05 kHz, resampled to 16 kHz and stored as mono Ogg Opus (about 25 kbit/s: the whole corpus
fits in a few MB, and the codec's loss is far below the differences between voices).
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import shutil
import subprocess
import sys
from pathlib import Path

import soundfile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing
from dpslm_utils.audio import resample  # noqa: E402
from dpslm_utils.toy_language import (  # noqa: E402
    LEXICON, RATES, SYNTACTIC_ERRORS, TEST_RATE, VOICES, all_words, break_word_order, non_words, sample_sentence,
    sample_utterance,
)

SEED = 2025
NUM_TRAIN = 400
NUM_VALIDATION = 40
NON_WORDS_PER_WORD = 3
SYNTACTIC_PAIRS_PER_ERROR = 30
OPUS_COMPRESSION = 0.95  # soundfile's compression_level for Opus: higher = smaller file


def synthesize(text: str, voice: str, rate: int, path: Path) -> None:
    """espeak-ng -> 16 kHz mono Ogg Opus at ``path``."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "--stdout", text],
                         check=True, capture_output=True).stdout
    samples, sample_rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    samples = resample(torch.from_numpy(samples)[None], sample_rate, 16000)[0].numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, samples, 16000, format="OGG", subtype="OPUS", compression_level=OPUS_COMPRESSION)


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def make_corpus(out: Path, rng: random.Random, held_out: set[str]) -> list[dict]:
    """Training and validation utterances (none of them a syntactic test sentence), random voice and rate."""
    rows = []
    for split, count in (("train", NUM_TRAIN), ("validation", NUM_VALIDATION)):
        for n in range(count):
            words = sample_utterance(rng)
            while " ".join(words) in held_out:
                words = sample_utterance(rng)
            row = {"split": split, "filename": f"{split}_{n:04d}.ogg", "voice": rng.choice(VOICES),
                   "rate": rng.choice(RATES), "text": " ".join(words)}
            synthesize(row["text"], row["voice"], row["rate"], out / split / row["filename"])
            rows.append(row)
    return rows


def make_lexical(out: Path, rng: random.Random, train_text: list[str]) -> None:
    """Every word against NON_WORDS_PER_WORD non-words, each pair in every voice (ZeroSpeech 2021 columns)."""
    counts = {word: sum(sentence.split().count(word) for sentence in train_text) for word in all_words()}
    items = []
    pairs = [(word, non_word) for word in all_words() for non_word in rng.sample(non_words(word), NON_WORDS_PER_WORD)]
    for pair, (word, non_word) in enumerate(pairs):
        for voice in VOICES:
            items += [(pair, word, 1, counts[word], voice), (pair, non_word, 0, 0, voice)]
    names = rng.sample(range(len(items)), len(items))  # file names do not give the answer away
    rows = []
    for (pair, text, correct, frequency, voice), name in zip(items, names):
        filename = f"lex_{name:04d}"
        rows.append({"id": pair, "filename": filename, "correct": correct, "frequency": frequency, "word": text,
                     "phones": " ".join(text), "length": len(text), "voice": voice})
        synthesize(text, voice, TEST_RATE, out / "lexical" / "dev" / f"{filename}.ogg")
    write_csv(out / "lexical" / "dev" / "gold.csv", rows)


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


def make_syntactic(out: Path, rng: random.Random, sentences: list[tuple[str, list[str]]]) -> None:
    """Each grammatical sentence and its broken twin, in one voice (voices in turn)."""
    items = []
    for pair, (error, words) in enumerate(sentences):
        voice = VOICES[pair % len(VOICES)]
        broken = break_word_order(words, error)
        items += [(pair, error, 1, words, voice), (pair, error, 0, broken, voice)]
    names = rng.sample(range(len(items)), len(items))
    rows = []
    for (pair, error, correct, words, voice), name in zip(items, names):
        filename = f"syn_{name:04d}"
        rows.append({"id": pair, "filename": filename, "type": error, "subtype": error, "correct": correct,
                     "transcription": " ".join(words), "voice": voice})
        synthesize(" ".join(words), voice, TEST_RATE, out / "syntactic" / "dev" / f"{filename}.ogg")
    write_csv(out / "syntactic" / "dev" / "gold.csv", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng not found: install it (Debian/Ubuntu: apt-get install espeak-ng)")
    for folder in ("train", "validation", "lexical", "syntactic"):
        shutil.rmtree(args.out / folder, ignore_errors=True)
    rng = random.Random(SEED)
    test_sentences = syntactic_sentences(rng)
    held_out = {" ".join(words) for _, words in test_sentences}
    rows = make_corpus(args.out, rng, held_out)
    write_csv(args.out / "corpus.csv", rows)
    make_lexical(args.out, rng, [row["text"] for row in rows if row["split"] == "train"])
    make_syntactic(args.out, rng, test_sentences)
    size = sum(f.stat().st_size for f in args.out.rglob("*.ogg"))
    print(f"wrote {len(rows)} corpus utterances and the test sets to {args.out} ({size / 1e6:.1f} MB of audio)")


if __name__ == "__main__":
    main()
