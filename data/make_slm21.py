"""Make dpslm_utils/data/slm21 (package data): a tiny synthetic stand-in for the ZeroSpeech 2021 sLM21
set, in its official layout.

    sudo apt-get install espeak-ng && python data/make_slm21.py

    slm21/lexical/dev/*.flac + gold.csv     word / non-word pairs (sWUGGY), two voices
    slm21/lexical/test/*.flac               as the official test split: audio without gold
    slm21/syntactic/dev/*.flac + gold.csv   grammatical / ungrammatical sentences (sBLIMP), two voices

Speech comes from espeak-ng (non-words are read by its spelling rules), resampled to 16 kHz mono
16-bit FLAC. The gold columns are the official ones, in the official order (the official evaluation
reads some of them by position); word frequencies are invented so that every
official frequency band is used. The words and sentences are the project's own.
"""

import csv
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dpslm_utils.audio import resample  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "dpslm_utils" / "data" / "slm21"
VOICES = {"us": "en-us", "gb": "en-gb"}

# (id, word, non-word, frequency in the invented "training corpus")
WORDS = [
    (1, "manufacture", "manufelture", 150),
    (2, "window", "wondow", 60),
    (3, "garden", "gorden", 12),
    (4, "basket", "bastek", 3),
    (5, "zeppelin", "zeppelon", 0),
]
TEST_WORDS = [(6, "yellow", "yollew", 40)]

# (id, type, subtype, grammatical, ungrammatical)
SENTENCES = [
    (1, "anaphor_agreement", "anaphor_gender_agreement", "the boy saw himself", "the boy saw herself"),
    (2, "determiner_noun_agreement", "determiner_noun_agreement_1", "these dogs run", "this dogs run"),
    (3, "subject_verb_agreement", "regular_plural_subject_verb_agreement_1", "the cats sleep", "the cats sleeps"),
    (4, "irregular_forms", "irregular_past_participle_verbs", "she has eaten", "she has ate"),
]


def speak(text: str, voice: str, path: Path) -> None:
    """espeak-ng at 22.05 kHz -> 16 kHz mono 16-bit FLAC."""
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", tmp.name, text], check=True)
        wav, sample_rate = soundfile.read(tmp.name, dtype="float32")
    wav = resample(torch.from_numpy(wav)[None], sample_rate, 16000)[0].numpy()
    soundfile.write(path, np.clip(wav, -1, 1), 16000, subtype="PCM_16", format="FLAC")


def phones(text: str, voice: str) -> list[str]:
    out = subprocess.run(["espeak-ng", "-q", "-x", "--sep= ", "-v", voice, text], check=True,
                         capture_output=True, text=True).stdout
    return [p.strip("',") for p in out.split() if p.strip("',")]


def lexical(split: str, words: list, with_gold: bool) -> None:
    folder = OUT / "lexical" / split
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for item, word, non_word, frequency in words:
        for voice_name, voice in VOICES.items():
            for text, correct in ((word, 1), (non_word, 0)):
                stem = f"lex{split}{item:02d}{voice_name}{'w' if correct else 'n'}"
                speak(text, voice, folder / f"{stem}.flac")
                sounds = phones(text, voice)
                rows.append({"id": item, "filename": stem, "voice": voice_name,
                             "frequency": frequency if correct else "", "word": text if correct else "",
                             "phones": " ".join(sounds), "length": len(sounds), "correct": correct})
    if with_gold:
        write_gold(folder / "gold.csv", rows)


def syntactic(split: str) -> None:
    folder = OUT / "syntactic" / split
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for item, kind, subtype, good, bad in SENTENCES:
        for voice_name, voice in VOICES.items():
            for text, correct in ((good, 1), (bad, 0)):  # the official pairing is by position: keep the order
                stem = f"syn{split}{item:02d}{voice_name}{'g' if correct else 'u'}"
                speak(text, voice, folder / f"{stem}.flac")
                rows.append({"id": item, "filename": stem, "voice": voice_name, "type": kind,
                             "subtype": subtype, "correct": correct, "transcription": text})
    write_gold(folder / "gold.csv", rows)


def write_gold(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    lexical("dev", WORDS, with_gold=True)
    lexical("test", TEST_WORDS, with_gold=False)
    syntactic("dev")
    print(f"wrote {sum(1 for _ in OUT.rglob('*.flac'))} FLAC files under {OUT}")
