"""The toy language (notebook 09): grammar properties, and the committed corpus agrees with its grammar."""

import csv
import ctypes.util
import functools
import importlib.util
import io
import random
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile

from dpslm_utils.toy_language import (
    LEXICON,
    PHONES,
    RATES,
    SILENCE,
    TEST_RATE,
    TOY_LANGUAGE_DIR,
    PhoneAlignment,
    SYNTACTIC_ERRORS,
    VOICES,
    all_words,
    break_word_order,
    is_grammatical,
    load_toy_language,
    non_words,
    read_phones,
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


# --- espeak-ng's phones of every recording (phones.csv) ------------------------------------------------

MAKE_SCRIPT = Path(__file__).resolve().parent.parent / "data" / "make_toy_language.py"
SPELLING = {"b": {"b", "B"}, "d": {"d", "D"}, "g": {"g", "Q", "x"}, "r": {"R2", "**"}}
"""Spanish letter-to-sound for the toy's letters: b d g are stops or (after a vowel) fricatives, g before
i is x, r is trilled or tapped; every other letter is its own phone."""
SPIRANT = {"b": "B", "d": "D", "g": "Q"}


@pytest.fixture(scope="module")
def corpus():
    return load_toy_language()


def spoken_texts(corpus) -> dict[str, str]:
    """Path relative to the corpus root -> the text its recording says (corpus.csv and both gold.csv)."""
    texts = {u.path.relative_to(corpus.root).as_posix(): u.text for u in corpus.train + corpus.validation}
    for row in read_rows(corpus.lexical_dir / "gold.csv"):
        texts[f"lexical/dev/{row['filename']}.ogg"] = row["word"]
    for row in read_rows(corpus.syntactic_dir / "gold.csv"):
        texts[f"syntactic/dev/{row['filename']}.ogg"] = row["transcription"]
    return texts


def test_every_toy_recording_has_its_phones(corpus):
    recordings = {p.relative_to(corpus.root).as_posix() for p in corpus.root.rglob("*.ogg")}
    assert len(recordings) == 794 and set(corpus.alignments) == recordings == set(spoken_texts(corpus))
    for name, text in spoken_texts(corpus).items():
        alignment = corpus.alignments[name]
        assert len(alignment.words) == len(text.split()) and all(alignment.words), name
        assert alignment.num_samples == soundfile.info(corpus.root / name).frames, name
    assert all(u.phones == corpus.alignments[u.path.relative_to(corpus.root).as_posix()].phones
               for u in corpus.train + corpus.validation)
    lexical = corpus.test_alignments("lexical")
    assert set(lexical) == {row["filename"] for row in read_rows(corpus.lexical_dir / "gold.csv")}
    assert set(corpus.test_alignments("syntactic")) == {p.stem for p in corpus.syntactic_dir.glob("*.ogg")}
    with pytest.raises(ValueError, match="task must be"):
        corpus.test_alignments("test")


def test_phones_spell_the_text_and_each_word_always_sounds_the_same(corpus):
    forms = {}  # (word, utterance-initial?) -> phone strings heard
    for name, text in spoken_texts(corpus).items():
        for position, (word, phones) in enumerate(zip(text.split(), corpus.alignments[name].words)):
            assert len(phones) == len(word), (name, word, phones)
            for letter, phone in zip(word, phones):
                assert phone in SPELLING.get(letter, {letter}), (name, word, phones)
            forms.setdefault((word, position == 0), set()).add(phones)
    assert all(len(heard) == 1 for heard in forms.values()), {k: v for k, v in forms.items() if len(v) > 1}
    for (word, initial), ((first, *rest),) in forms.items():
        if not initial and (word, True) in forms:  # after a vowel, only a first b, d or g changes: to β, ð, ɣ
            ((alone_first, *alone_rest),) = forms[word, True]
            assert rest == alone_rest and first == SPIRANT.get(alone_first, alone_first), word
    heard = {phone for alignment in corpus.alignments.values() for phone in alignment.phones}
    assert heard == set(PHONES) == set(corpus.phone_inventory)  # no phone missing from the inventory, none unused


def test_alignments_cover_the_audio_and_fit_its_sound(corpus):
    """Phones from ``starts[0]`` to ``end``, then espeak-ng's final pause to the end of the file. The times
    are espeak-ng's (0.1 ms steps); the sound must agree: the pause is quiet, the last phone is not."""
    for name, alignment in corpus.alignments.items():
        wav, sample_rate = soundfile.read(corpus.root / name, dtype="float32")
        duration = len(wav) / sample_rate
        assert 0 <= alignment.starts[0] < 0.06, name  # espeak-ng's lead-in before a voiceless stop: <= 58 ms
        assert all(a < b for a, b in zip(alignment.starts, alignment.ends)), name
        assert 0.2 < duration - alignment.end < 0.45, name  # the final pause: 235-431 ms
        start, end = round(alignment.starts[0] * sample_rate), round(alignment.end * sample_rate)
        speech = np.sqrt(np.mean(wav[start:end] ** 2))
        assert np.sqrt(np.mean(wav[end + 160:] ** 2)) < 0.05 * speech, name  # measured: at most 2 %
        assert np.sqrt(np.mean(wav[end - 320:end] ** 2)) > 0.1 * speech, name  # measured: at least 24 %


def test_frame_labels_take_the_phone_at_each_frame_centre_on_wavlms_grid(corpus):
    from dpslm_utils.wavlm import num_frames

    alignment = PhoneAlignment(words=(("a",), ("b",)), starts=(0.01, 0.05), end=0.09, num_samples=1600)
    # 5 frames centred on 10, 30, 50, 70, 90 ms; a phone holds from its start up to (not including) its end
    assert alignment.frame_labels() == ["a", "a", "b", "b", SILENCE]
    assert alignment.frame_labels(num_frames=7) == ["a", "a", "b", "b", SILENCE, SILENCE, SILENCE]
    assert alignment.frame_labels(frame_rate=100) == [SILENCE, "a", "a", "a", "a", "b", "b", "b", "b", SILENCE]
    for utterance in corpus.validation:
        labels = utterance.alignment.frame_labels()
        assert len(labels) == num_frames(utterance.alignment.num_samples)  # one label per WavLM frame
        spoken = [label for i, label in enumerate(labels) if label != SILENCE and (i == 0 or labels[i - 1] != label)]
        assert len(spoken) <= len(utterance.phones) and set(spoken) <= set(utterance.phones)


def test_bad_phone_tables_are_refused_with_the_file_and_line(tmp_path):
    header = "file,phones,starts,end,samples\n"
    for row, problem in (("a.ogg,s a | n i,0.1 0.2 0.3,0.5,16000", "one start per phone"),
                         ("a.ogg,s a | z i,0.1 0.2 0.3 0.4,0.5,16000", "known phones"),
                         ("a.ogg,s a |,0.1 0.2,0.5,16000", "known phones")):
        (tmp_path / "phones.csv").write_text(header + row + "\n")
        with pytest.raises(ValueError, match=f"phones.csv, line 2: .*{problem}"):
            read_phones(tmp_path / "phones.csv")
    shutil.copy(TOY_LANGUAGE_DIR / "corpus.csv", tmp_path / "corpus.csv")
    (tmp_path / "phones.csv").write_text(header + "validation/validation_0000.ogg,s a,0.1 0.2,0.3,16000\n")
    with pytest.raises(ValueError, match="has no phones for train/train_0000.ogg.*--phones-only"):
        load_toy_language(tmp_path)
    (tmp_path / "phones.csv").unlink()
    with pytest.raises(FileNotFoundError, match="phones.csv not found.*make_toy_language.py"):
        load_toy_language(tmp_path)


@functools.cache
def make_script():
    """data/make_toy_language.py as a module (its dataclass needs it in sys.modules)."""
    spec = importlib.util.spec_from_file_location("make_toy_language", MAKE_SCRIPT)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_make_script_plans_exactly_the_committed_tables(corpus):
    script = make_script()
    tables = script.make_tables()
    for name, rows in tables.items():
        assert [{k: str(v) for k, v in row.items()} for row in rows] == read_rows(corpus.root / name), name
    assert [r.file for r in script.recordings(tables)] == [row["file"] for row in read_rows(corpus.root / "phones.csv")]


ESPEAK = shutil.which("espeak-ng") and ctypes.util.find_library("espeak-ng")


@pytest.mark.skipif(not ESPEAK, reason="espeak-ng (command and libespeak-ng) not installed")
def test_espeak_ng_speaks_the_committed_recordings_and_their_phones_again(corpus):
    """What the make script does for every recording (--phones-only), for one of each folder: same
    decoded samples, same file bytes but for the Ogg serial number, same phones.csv row; and Opus
    coding did not shift the audio against espeak-ng's time axis (so neither the phones)."""
    script = make_script()
    rows = {row["file"]: row for row in read_rows(corpus.root / "phones.csv")}
    for recording in script.recordings(script.make_tables())[::200]:  # train, validation, lexical, syntactic
        opus, row = script.synthesize(recording)
        committed = corpus.root / recording.file
        decoded = soundfile.read(committed, dtype="float32")[0]
        assert np.array_equal(soundfile.read(io.BytesIO(opus), dtype="float32")[0], decoded), recording
        assert script.without_ogg_serial(opus) == script.without_ogg_serial(committed.read_bytes())
        assert {k: str(v) for k, v in row.items()} == rows[recording.file]
        before_opus = script.espeak(recording)[1]
        assert len(before_opus) == len(decoded)
        lags = range(-40, 41)  # ±2.5 ms
        similarity = [np.dot(before_opus[max(0, lag):len(decoded) + min(0, lag)],
                             decoded[max(0, -lag):len(decoded) - max(0, lag)]) for lag in lags]
        assert lags[int(np.argmax(similarity))] == 0, recording
