"""Resynthesis WER: normalisation, WER counts, the LibriSpeech layout, resynthesis_wer rows, the default ASR's errors."""

import csv
import json
import shutil
import sys
import types
import urllib.error
from pathlib import Path

import pytest
import soundfile

from dpslm_utils import PAPER_NUM_NEIGHBORS, bitrate, cli, wer
from dpslm_utils.audio import load_audio, to_mono
from dpslm_utils.pipeline import UnitEncoder

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


def test_word_error_rate_counts_edits_over_all_references():
    same = wer.word_error_rate(["the cat sat"], ["The cat, sat."])
    assert float(same) == 0.0 and same.reference_words == 3
    errors = wer.word_error_rate(["the cat sat on the mat", "a dog"], ["the cat sit on mat", "a big dog"])
    assert (errors.substitutions, errors.deletions, errors.insertions, errors.reference_words) == (1, 1, 1, 8)
    assert errors.wer == pytest.approx(3 / 8)
    assert wer.word_error_rate(["a b"], [""]).wer == 1.0


def test_word_error_rate_refuses_mismatched_or_empty_input():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        wer.word_error_rate(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no words"):
        wer.word_error_rate(["?!"], ["a"])
    with pytest.raises(TypeError, match="lists of texts"):
        wer.word_error_rate("a b", "a b")


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
    with pytest.raises(wer.ASRUnavailable, match=r"pip install openai-whisper"):
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


def test_cli_wer_writes_the_table(random_tiny, librispeech, tmp_path, monkeypatch, capsys):
    def hearing(wav, sr):
        return "manufacture"

    hearing.identity = "one fake recogniser"
    monkeypatch.setattr(wer, "whisper_asr", lambda name, device: hearing)
    out = tmp_path / "out"
    arguments = ["wer", str(librispeech), str(out), "--pairs", "100:3000", "--no-references", "--device", "cpu"]
    assert cli.main(arguments) == 0
    rows = list(csv.DictReader((out / "wer.csv").open()))
    assert [(r["system"], r["k"], r["lmbda"], r["num_neighbors"], r["wer"]) for r in rows] == [
        ("units", "100", "3000", "5", "0.5")]
    assert cli.main([*arguments, "--exact-search"]) == 0  # every code allowed: no neighbour count
    assert list(csv.DictReader((out / "wer.csv").open()))[0]["num_neighbors"] == ""
    assert "k=100 λ=3000" in capsys.readouterr().out

    def deaf(wav, sr):
        raise AssertionError("a finished system is not measured again")

    deaf.identity = hearing.identity  # said to be the same ASR: the stored row is reused
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
    assert cli.main(["wer", str(librispeech), str(tmp_path / "out")]) == 1
    assert "dpslm: error: the default ASR is OpenAI Whisper, which is not installed" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_say_writes_24_khz_speech(random_tiny, tmp_path, capsys):
    out = tmp_path / "hello.wav"
    assert cli.main(["say", "Hello, world.", str(out), "--seed", "0", "--device", "cpu"]) == 0
    assert "SIL HH AH0 L OW1 SIL W ER1 L D SIL" in capsys.readouterr().out
    info = soundfile.info(out)
    assert info.samplerate == 24000 and info.frames > 0 and info.frames % 600 == 0
    assert cli.main(["say", "SIL HH AH0 L OW1 SIL", str(tmp_path / "p.wav"), "--phones", "--device", "cpu"]) == 0


def test_cli_say_rejects_unknown_words_before_loading_models(tmp_path, capsys):
    assert cli.main(["say", "hello xyzzyq", str(tmp_path / "x.wav")]) == 2
    assert "dpslm: error: not in the CMU Pronouncing Dictionary: 'xyzzyq'" in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()


def test_cli_say_names_an_unknown_phone(random_tiny, tmp_path, capsys):
    assert cli.main(["say", "SIL ZZZ SIL", str(tmp_path / "x.wav"), "--phones", "--device", "cpu"]) == 1
    assert "dpslm: error: 'ZZZ' is not a phone of this model" in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()
