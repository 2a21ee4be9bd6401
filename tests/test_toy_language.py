"""The toy language (notebook 09): grammar properties, and the committed corpus agrees with its grammar."""

import csv
import random
from collections import Counter

import pytest
import soundfile

from dpslm_utils.toy_language import (
    LEXICON,
    RATES,
    TEST_RATE,
    SYNTACTIC_ERRORS,
    VOICES,
    all_words,
    break_word_order,
    is_grammatical,
    load_toy_language,
    non_words,
    sample_sentence,
    sound_distance,
)


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_words_are_at_least_two_sounds_apart():
    words = all_words()
    assert len(set(words)) == len(words)
    assert min(sound_distance(a, b) for i, a in enumerate(words) for b in words[i + 1:]) >= 2


def test_non_words_change_exactly_one_sound_and_are_no_word():
    for word in all_words():
        candidates = non_words(word)
        assert candidates, word
        for candidate in candidates:
            assert sound_distance(candidate, word) == 1
            assert candidate not in all_words()
            assert all(sound_distance(candidate, other) >= 2 for other in all_words() if other != word)


def test_sampled_sentences_are_grammatical_and_broken_ones_are_not():
    rng = random.Random(0)
    for _ in range(200):
        words = sample_sentence(rng)
        assert is_grammatical(words)
        for error in SYNTACTIC_ERRORS:
            if error == "adjective_position" and not any(w in LEXICON["adjective"] for w in words):
                with pytest.raises(ValueError, match="adjective"):
                    break_word_order(words, error)
                continue
            broken = break_word_order(words, error)
            assert Counter(broken) == Counter(words)
            assert not is_grammatical(broken)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="not a word"):
        non_words("xyzzy")
    with pytest.raises(ValueError, match="not a grammatical"):
        break_word_order(["ripa", "bado", "kemi"], "verb_position")
    with pytest.raises(ValueError, match="unknown error"):
        break_word_order(["bado", "ripa", "kemi"], "shuffle")
    with pytest.raises(ValueError, match="max_train"):
        load_toy_language(max_train=0)


def test_committed_corpus_follows_the_grammar():
    corpus = load_toy_language()
    assert len(corpus.train) == 400 and len(corpus.validation) == 40
    assert len(load_toy_language(max_train=50).train) == 50
    for utterance in corpus.train + corpus.validation:
        assert utterance.path.is_file()
        words = utterance.text.split()
        assert is_grammatical(words) or (len(words) == 1 and words[0] in all_words())
        assert utterance.voice in VOICES and utterance.rate in RATES and utterance.rate != TEST_RATE
    assert soundfile.info(corpus.train[0].path).samplerate == 16000
    assert {u.voice for u in corpus.train} == set(VOICES)
    lone_words = {u.text for u in corpus.train if " " not in u.text}
    assert lone_words == set(all_words())  # every word is also heard on its own


def test_committed_lexical_pairs():
    corpus = load_toy_language()
    rows = read_rows(corpus.lexical_dir / "gold.csv")
    files = {p.stem for p in corpus.lexical_dir.glob("*.ogg")}
    assert {row["filename"] for row in rows} == files
    pairs = {}
    for row in rows:
        pairs.setdefault((row["id"], row["voice"]), {})[row["correct"]] = row["word"]
    assert len(pairs) * 2 == len(rows)
    for pair in pairs.values():
        assert pair["1"] in all_words() and pair["0"] in non_words(pair["1"])


def test_committed_syntactic_pairs_are_held_out_from_training():
    corpus = load_toy_language()
    rows = read_rows(corpus.syntactic_dir / "gold.csv")
    assert {row["filename"] for row in rows} == {p.stem for p in corpus.syntactic_dir.glob("*.ogg")}
    good = [row for row in rows if row["correct"] == "1"]
    bad = [row for row in rows if row["correct"] == "0"]
    assert len(good) == len(bad) == len(rows) // 2
    training_text = {u.text for u in corpus.train + corpus.validation}
    for g, b in zip(good, bad):  # the i-th correct row pairs with the i-th incorrect row (ZeroSpeech 2021)
        assert (g["id"], g["voice"], g["subtype"]) == (b["id"], b["voice"], b["subtype"])
        assert break_word_order(g["transcription"].split(), g["subtype"]) == b["transcription"].split()
        assert g["transcription"] not in training_text
    assert Counter(g["subtype"] for g in good) == {error: len(good) // 2 for error in SYNTACTIC_ERRORS}


def test_word_abx_items_pair_every_word_with_one_non_word_in_every_voice(tmp_path):
    from dpslm_utils.toy_language import write_word_abx_items

    lines = write_word_abx_items(tmp_path / "words.item").read_text().splitlines()
    assert lines[0].startswith("#file onset offset #phone")
    items = [line.split() for line in lines[1:]]
    assert len(items) == len(all_words()) * 2 * len(VOICES)
    corpus = load_toy_language()
    for filename, onset, offset, label, previous, following, voice in items:
        assert float(onset) == 0.0
        assert abs(float(offset) - soundfile.info(corpus.lexical_dir / f"{filename}.ogg").duration) < 1e-3
        assert (previous, following) == ("#", "#") and voice in VOICES
    labels = Counter(item[3] for item in items)
    assert set(labels.values()) == {len(VOICES)}  # each word and non-word once per voice
    assert sum(label in all_words() for label in labels) == len(all_words())
