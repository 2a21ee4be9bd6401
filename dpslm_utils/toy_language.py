"""A toy spoken language, small enough to train a unit LM on in minutes: lexicon, grammar, test pairs.

The language has 13 two-syllable words and one sentence pattern, ``NOUN [ADJ] VERB NOUN [ADJ]``
("bado pilu ripa kemi": the bado, pilu, ripa-s the kemi); a quarter of the utterances are a single
word, as when naming a thing (and as the lexical test items are spoken). Its recordings (espeak-ng, three voices,
three speaking rates, 16 kHz Ogg Opus) ship inside the package, in ``dpslm_utils/data/toy_language/``
(:data:`TOY_LANGUAGE_DIR`); ``data/make_toy_language.py`` in the repository made them:

    toy_language/
      corpus.csv                  split, filename, voice, rate, text (train and validation)
      phones.csv                  espeak-ng's phones of every recording, and when it spoke them
      train/*.ogg  validation/*.ogg
      lexical/dev/*.ogg   + gold.csv   word vs non-word (one sound changed), ZeroSpeech 2021 columns
      syntactic/dev/*.ogg + gold.csv   grammatical vs word order broken, ZeroSpeech 2021 columns

The phones are espeak-ng's own (its segmentation, to the sample, stored to 0.1 ms; see data/README.md),
enough to train a phone LM from scratch and to label frames::

    corpus = load_toy_language()
    corpus.train[0].phones                      # ('s', 'a', 'n', 'i', 'n', 'e', 'l', 'o', ...)
    ids = [corpus.phone_inventory.index(p) for p in corpus.train[0].phones]  # phone tokens, 0..21
    corpus.train[0].alignment.frame_labels()    # the phone of each 20 ms frame ('_' = silence)
    corpus.test_alignments("lexical")["lex_0000"].phones   # a test item's phones, by gold.csv filename
"""

from __future__ import annotations

import bisect
import csv
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

TOY_LANGUAGE_DIR = Path(__file__).resolve().parent / "data" / "toy_language"
"""The corpus, package data (2.6 MB of audio): there in a checkout and in a pip install alike."""

LEXICON: dict[str, tuple[str, ...]] = {
    "noun": ("bado", "kemi", "lupo", "sani", "tegu", "moka"),
    "verb": ("ripa", "dosu", "nelo", "fika"),
    "adjective": ("pilu", "gosa", "neba"),
}
"""Every word is consonant-vowel-consonant-vowel, and any two words differ in at least two sounds,
so that a non-word made by changing one sound of a word is never one sound away from another word."""

CONSONANTS = "bdfgklmnprst"
VOWELS = "aeiou"
ADJECTIVE_PROBABILITY = 0.35
LONE_WORD_PROBABILITY = 0.25

VOICES: tuple[str, ...] = ("es+m3", "es+f2", "es+m1")
"""espeak-ng voices (Spanish letter-to-sound rules, which read these spellings regularly) with
three voice variants: different pitch and formants, i.e. three synthetic speakers."""
RATES: tuple[int, ...] = (140, 170, 200)
"""espeak-ng speaking rates in words per minute of the training and validation utterances."""
TEST_RATE = 155
"""The rate of every test item: one never heard in training, so no test recording is a copy of a
training recording (espeak-ng is deterministic: same text, voice and rate give the same samples)."""

SYNTACTIC_ERRORS = ("verb_position", "adjective_position")
"""The two ways a test sentence is broken: the verb moved to the end (NOUN VERB NOUN → NOUN NOUN
VERB), or an adjective moved before its noun (NOUN ADJ → ADJ NOUN). The words stay the same."""

PHONES: dict[str, str] = {
    "a": "a", "e": "e", "i": "i", "o": "o", "u": "u",
    "p": "p", "t": "t", "k": "k", "b": "b", "d": "d", "g": "ɡ", "B": "β", "D": "ð", "Q": "ɣ",
    "f": "f", "s": "s", "x": "x", "m": "m", "n": "n", "l": "l", "R2": "r", "**": "ɾ",
}
"""The phone inventory: espeak-ng's Spanish phonemes that speak the corpus (its mnemonics, as
``espeak-ng -x`` prints them) -> their IPA. The order gives phone ids (``list(PHONES).index(phone)``).
Spelling is not sound: ``b d g`` are stops only utterance-initially and become ``β ð ɣ`` after a vowel
(so a word has two forms, e.g. ``b a D o`` / ``B a D o``); ``g`` before ``i`` is ``x`` (the non-word
``kegi``); a word-initial ``r`` is trilled (``R2``), one between vowels tapped (``**``)."""
SILENCE = "_"
"""espeak-ng's pause phoneme: the label of frames outside every phone."""
SAMPLE_RATE = 16000
"""Of every recording."""


def word_class(word: str) -> str:
    """The class ("noun", "verb" or "adjective") of a word of the lexicon."""
    for name, words in LEXICON.items():
        if word in words:
            return name
    raise ValueError(f"{word!r} is not a word of the toy language; its words are {all_words()}")


def all_words() -> list[str]:
    return [word for words in LEXICON.values() for word in words]


def sample_sentence(rng: random.Random) -> list[str]:
    """One grammatical sentence: NOUN [ADJ] VERB NOUN [ADJ], each adjective present with
    probability :data:`ADJECTIVE_PROBABILITY`."""

    def noun_phrase() -> list[str]:
        phrase = [rng.choice(LEXICON["noun"])]
        if rng.random() < ADJECTIVE_PROBABILITY:
            phrase.append(rng.choice(LEXICON["adjective"]))
        return phrase

    return noun_phrase() + [rng.choice(LEXICON["verb"])] + noun_phrase()


def sample_utterance(rng: random.Random) -> list[str]:
    """A training utterance: a lone word with probability :data:`LONE_WORD_PROBABILITY`, else a sentence."""
    if rng.random() < LONE_WORD_PROBABILITY:
        return [rng.choice(all_words())]
    return sample_sentence(rng)


def is_grammatical(words: list[str]) -> bool:
    """True if ``words`` is a sentence NOUN [ADJ] VERB NOUN [ADJ] (a lone word is not a sentence)."""
    pattern = [word_class(word)[0] for word in words]  # "n", "v", "a"
    text = "".join(pattern)
    return text in {"nvn", "navn", "nvna", "navna"}


def break_word_order(words: list[str], error: str) -> list[str]:
    """The ungrammatical twin of a grammatical sentence: same words, one :data:`SYNTACTIC_ERRORS` order."""
    if not is_grammatical(words):
        raise ValueError(f"not a grammatical sentence of the toy language: {' '.join(words)!r}")
    if error == "verb_position":
        verb = next(i for i, word in enumerate(words) if word_class(word) == "verb")
        return words[:verb] + words[verb + 1:] + [words[verb]]
    if error == "adjective_position":
        adjective = next((i for i, word in enumerate(words) if word_class(word) == "adjective"), None)
        if adjective is None:
            raise ValueError(f"adjective_position needs a sentence with an adjective, got {' '.join(words)!r}")
        broken = list(words)
        broken[adjective - 1], broken[adjective] = words[adjective], words[adjective - 1]
        return broken
    raise ValueError(f"unknown error {error!r}; choose from {SYNTACTIC_ERRORS}")


def sound_distance(a: str, b: str) -> int:
    """Number of positions where two equally long spellings differ (letters are sounds here)."""
    if len(a) != len(b):
        return max(len(a), len(b))
    return sum(x != y for x, y in zip(a, b))


def non_words(word: str) -> list[str]:
    """Every non-word made by changing one sound of ``word`` (a consonant for a consonant, a vowel for
    a vowel) that stays at least two sounds away from every other word of the lexicon."""
    word_class(word)
    others = [other for other in all_words() if other != word]
    candidates = []
    for i, letter in enumerate(word):
        for replacement in CONSONANTS if letter in CONSONANTS else VOWELS:
            candidate = word[:i] + replacement + word[i + 1:]
            if replacement != letter and all(sound_distance(candidate, other) >= 2 for other in others):
                candidates.append(candidate)
    return candidates


@dataclass(frozen=True)
class PhoneAlignment:
    """espeak-ng's own phones of one recording and when it spoke each (not a forced alignment: the
    synthesizer's segmentation, read from its phoneme events; times in seconds, to 0.1 ms)."""

    words: tuple[tuple[str, ...], ...]
    """The phones of each word, e.g. ``(("s", "a", "n", "i"), ("n", "e", "l", "o"))``."""
    starts: tuple[float, ...]
    """When each phone starts; each ends where the next starts."""
    end: float
    """When the last phone ends; from there to the end of the recording is espeak-ng's final pause."""
    num_samples: int
    """Length of the 16 kHz recording."""

    @property
    def phones(self) -> tuple[str, ...]:
        return tuple(phone for word in self.words for phone in word)

    @property
    def ends(self) -> tuple[float, ...]:
        return (*self.starts[1:], self.end)

    def frame_labels(self, frame_rate: int = 50, num_frames: int | None = None) -> list[str]:
        """The phone at the centre of each frame, :data:`SILENCE` outside every phone: ``[num_frames]``.

        Frame ``i`` is centred on ``(i + 0.5) / frame_rate`` seconds, as WavLM's 20 ms frames (and
        their count, ``num_samples // 320`` at 50 Hz, the default) are. Pass ``num_frames`` to match
        another encoder's output; frames past the recording are silence.
        """
        if num_frames is None:
            num_frames = self.num_samples * frame_rate // SAMPLE_RATE
        phones = self.phones
        labels = []
        for frame in range(num_frames):
            time = (frame + 0.5) / frame_rate
            index = bisect.bisect_right(self.starts, time) - 1
            labels.append(phones[index] if index >= 0 and time < self.end else SILENCE)
        return labels


@dataclass(frozen=True)
class Utterance:
    path: Path
    text: str
    voice: str
    rate: int
    alignment: PhoneAlignment

    @property
    def phones(self) -> tuple[str, ...]:
        """espeak-ng's phones of the recording (keys of :data:`PHONES`): what a phone LM trains on."""
        return self.alignment.phones


@dataclass(frozen=True)
class ToyLanguage:
    """The toy corpus on disk: training and validation utterances, and the two test sets."""

    root: Path
    train: list[Utterance]
    validation: list[Utterance]
    alignments: dict[str, PhoneAlignment] = field(repr=False)
    """Every recording's phones, by its path relative to ``root`` (``"lexical/dev/lex_0001.ogg"``)."""

    @property
    def lexical_dir(self) -> Path:
        return self.root / "lexical" / "dev"

    @property
    def syntactic_dir(self) -> Path:
        return self.root / "syntactic" / "dev"

    @property
    def phone_inventory(self) -> tuple[str, ...]:
        """The phones of the recordings (:data:`PHONES`); a phone's id is its position here."""
        return tuple(PHONES)

    def test_alignments(self, task: str) -> dict[str, PhoneAlignment]:
        """The phones of the ``"lexical"`` or ``"syntactic"`` test recordings, by file stem (the keys
        of the scores that :func:`~dpslm_utils.lexical_accuracy` and ``syntactic_accuracy`` take)."""
        if task not in ("lexical", "syntactic"):
            raise ValueError(f"task must be 'lexical' or 'syntactic', got {task!r}")
        prefix = f"{task}/dev/"
        return {Path(name).stem: a for name, a in self.alignments.items() if name.startswith(prefix)}

    def seconds(self, split: str = "train") -> float:
        """Total duration of a split in seconds (read from the file headers)."""
        import soundfile

        return sum(soundfile.info(u.path).duration for u in getattr(self, split))

    def __repr__(self) -> str:
        return (f"ToyLanguage({self.root}: {len(self.train)} train, {len(self.validation)} validation utterances, "
                f"{len(LEXICON['noun'])} nouns, {len(LEXICON['verb'])} verbs, {len(LEXICON['adjective'])} adjectives)")


def read_phones(path: str | os.PathLike) -> dict[str, PhoneAlignment]:
    """``phones.csv`` of the toy corpus -> {path relative to the corpus root: PhoneAlignment}.

    Columns: ``file``; ``phones`` (space-separated, words separated by ``|``); ``starts`` (one time
    per phone, seconds); ``end`` (when the last phone ends); ``samples`` (16 kHz samples of the file).
    """
    alignments = {}
    with open(path, newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            words = tuple(tuple(word.split()) for word in row["phones"].split("|"))
            alignment = PhoneAlignment(words, tuple(float(t) for t in row["starts"].split()), float(row["end"]),
                                       int(row["samples"]))
            unknown = sorted(set(alignment.phones) - set(PHONES))
            if unknown or not all(words) or len(alignment.starts) != len(alignment.phones):
                raise ValueError(f"{path}, line {line}: expected words of known phones ({' '.join(PHONES)}) and "
                                 f"one start per phone, got {row['phones']!r} with {len(alignment.starts)} starts")
            alignments[row["file"]] = alignment
    return alignments


def load_toy_language(root: str | os.PathLike | None = None, max_train: int | None = None) -> ToyLanguage:
    """Read ``corpus.csv`` and ``phones.csv`` of the toy corpus (default: the one shipped in the package).

    ``max_train`` keeps only the first that many training utterances (a smaller corpus).
    """
    root = TOY_LANGUAGE_DIR if root is None else Path(root)
    for table in (root / "corpus.csv", root / "phones.csv"):
        if not table.is_file():
            raise FileNotFoundError(f"{table} not found: make the corpus with python data/make_toy_language.py "
                                    "(in a checkout of the repository; needs espeak-ng)")
    if max_train is not None and (isinstance(max_train, bool) or not isinstance(max_train, int) or max_train < 1):
        raise ValueError(f"max_train must be a positive integer or None, got {max_train!r}")
    alignments = read_phones(root / "phones.csv")
    splits: dict[str, list[Utterance]] = {"train": [], "validation": []}
    with open(root / "corpus.csv", newline="") as f:
        for row in csv.DictReader(f):
            name = f"{row['split']}/{row['filename']}"
            if name not in alignments:
                raise ValueError(f"{root / 'phones.csv'} has no phones for {name}: re-create them with "
                                 "python data/make_toy_language.py --phones-only")
            splits[row["split"]].append(
                Utterance(root / name, row["text"], row["voice"], int(row["rate"]), alignments[name]))
    return ToyLanguage(root, splits["train"][:max_train], splits["validation"], alignments)


def write_word_abx_items(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """An ABX ``.item`` file over part of the lexical test set: every word and its first non-word, one
    recording each per voice (78 files). Each file is one token of what it says, its voice is the
    "speaker", the context is ``#`` on both sides.

    Across speakers, ABX then asks whether a representation puts two voices' ``bado`` closer together
    than ``bado`` and, e.g., ``dado`` said by A's voice: word discrimination on minimal pairs.
    """
    import soundfile

    lexical_dir = (TOY_LANGUAGE_DIR if root is None else Path(root)) / "lexical" / "dev"
    with open(lexical_dir / "gold.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    first_pairs = {}  # word -> id of its first (word, non-word) item
    for row in rows:
        if row["correct"] == "1":
            first_pairs.setdefault(row["word"], row["id"])
    chosen = [row for row in rows if row["id"] in set(first_pairs.values())]
    lines = ["#file onset offset #phone prev-phone next-phone speaker"]
    for row in sorted(chosen, key=lambda r: r["filename"]):
        duration = soundfile.info(lexical_dir / f"{row['filename']}.ogg").duration
        lines.append(f"{row['filename']} 0.0 {duration:.4f} {row['word']} # # {row['voice']}")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_phone_abx_items(path: str | os.PathLike, split: str = "validation", root: str | os.PathLike | None = None
                          ) -> Path:
    """An ABX ``.item`` file of every phone token of a split's recordings (``"train"`` or ``"validation"``),
    from espeak-ng's own segmentation (:class:`PhoneAlignment`): its onset and offset, the phones before
    and after it in the utterance (``#`` at either end) and its voice as the speaker.

    A real phone ABX: is a token of /d/ closer to another /d/ than to a /b/ (said by the same voice in the
    same context, with ``context_mode="within"``, or in any context with ``"any"``)?
    """
    corpus = load_toy_language(root)
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
    lines = ["#file onset offset #phone prev-phone next-phone speaker"]
    for utterance in getattr(corpus, split):
        alignment = utterance.alignment
        phones = ("#", *alignment.phones, "#")
        for i, (start, end) in enumerate(zip(alignment.starts, alignment.ends), start=1):
            lines.append(f"{utterance.path.stem} {start:.4f} {end:.4f} {phones[i]} {phones[i - 1]} {phones[i + 1]} "
                         f"{utterance.voice}")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path
