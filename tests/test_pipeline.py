"""The composed pipeline with random-tiny weights: stages agree with each other and with the parts."""

import pytest
import torch

import dpslm_utils
from dpslm_utils import pipeline


@pytest.fixture(scope="module")
def model():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DPSLM_WEIGHTS", "random-tiny")
        yield dpslm_utils.DPSLM.from_pretrained(100, 600, device="cpu")


@pytest.fixture(scope="module")
def speech():
    return dpslm_utils.example_audio("librispeech", official=False)


def test_random_weights_are_announced(model):
    assert model.random_weights and "RANDOM WEIGHTS" in repr(model)
    assert (model.k, model.lmbda) == (100, 600)


def test_encode_equals_the_stages_run_by_hand(model, speech):
    wav, sr = speech
    encoded = model.encode(wav, sr)
    features = model.units.encoder(wav, sr, layer=11)
    frame_units = dpslm_utils.dpdp(features, model.units.quantizer.codebook, 600)
    assert torch.equal(encoded.frame_units, frame_units)
    units, durations = dpslm_utils.deduplicate(frame_units)
    assert torch.equal(encoded.units, units) and torch.equal(encoded.durations, durations)
    assert int(encoded.durations.sum()) == len(encoded.frame_units) == dpslm_utils.WavLMEncoder.num_frames(wav.shape[-1])


def test_encode_batch_equals_encode(model, speech):
    wav, sr = speech
    parts = [wav[:, :40000], wav, wav[:, 10000:30000]]
    for batched, part in zip(model.units.encode_batch(parts, sr), parts):
        single = model.encode(part, sr)
        assert torch.equal(batched.frame_units, single.frame_units)


def test_loglikelihood_is_the_unit_lm_score_of_the_units(model, speech):
    wav, sr = speech
    units = model.encode(wav, sr).units
    assert model.loglikelihood(wav, sr) == pytest.approx(model.ulm.loglikelihood(units), rel=1e-6)


def test_synthesize_voices_every_unit_with_the_vocoder(model, speech):
    units = model.encode(*speech).units
    results = model.synthesize(units, n=2, temperature=0.0, top_p=0.0)
    assert len(results) == 2
    for s in results:
        assert s.finished and s.sample_rate == 24000
        assert torch.equal(s.alignment.units, units)
        assert int(s.alignment.codec_counts.sum()) == len(s.codes)
        assert s.wav.shape == (len(s.codes) * model.vocoder.hop_length,)
        assert torch.allclose(s.wav, model.vocoder.decode(s.codes)[0], atol=1e-6)
    assert torch.equal(results[0].codes, results[1].codes)  # greedy: both renditions agree


def test_resynthesize_is_seeded(model, speech):
    wav, sr = speech
    a = model.resynthesize(wav, sr, n=2, seed=3)
    b = model.resynthesize(wav, sr, n=2, seed=3)
    assert len(a) == 2 and all(torch.equal(x, y) for x, y in zip(a, b))


def test_continue_speech_starts_with_the_prompt(model, speech):
    wav, sr = speech
    (cont,) = model.continue_speech(wav, sr, max_new_units=8, seed=1, temperature=0.0)
    prompt = model.encode(wav, sr).units
    assert torch.equal(cont.prompt_units, prompt)
    assert 1 <= len(cont.new_units) <= 8 and cont.new_units[0] != prompt[-1]
    assert torch.equal(cont.speech.alignment.units, torch.cat([prompt, cont.new_units]))
    greedy = model.ulm.generate(prompt, 8, temperature=0.0)[0]
    assert torch.equal(cont.new_units, torch.unique_consecutive(torch.cat([prompt[-1:], greedy]))[1:])


def test_wavlm_and_vocoder_are_shared_between_pipelines(model, random_tiny):
    other = dpslm_utils.DPSLM.from_pretrained(200, 700, device="cpu")
    assert other.units.encoder is model.units.encoder and other.vocoder is model.vocoder
    assert other.ulm is not model.ulm and other.k == 200


def test_unit_encoder_takes_any_released_codebook_and_lambda(random_tiny, speech):
    enc = pipeline.UnitEncoder.from_pretrained(2000, 123.0, device="cpu")
    assert enc.quantizer.k == 2000 and enc.encode(*speech).units.max() < 2000


@pytest.mark.parametrize("k, lmbda", [(500, 5000), (2000, 0), (50, 0)])
def test_invalid_combinations_are_refused(k, lmbda, random_tiny):
    with pytest.raises(ValueError, match="valid"):
        dpslm_utils.DPSLM.from_pretrained(k, lmbda)


def test_synthesize_caps_codes_per_unit_as_ella_v_counts_them(model, speech):
    units = model.encode(*speech).units
    (s,) = model.synthesize(units, max_codec_tokens_per_phone=2, seed=0)
    counts = s.alignment.codec_counts
    assert s.finished and counts[0] <= 4 and (counts[1:] <= 3).all()


def test_paper_num_neighbors_are_five_percent_of_k():
    assert all(n == k // 20 for k, n in dpslm_utils.PAPER_NUM_NEIGHBORS.items())
    assert set(dpslm_utils.PAPER_NUM_NEIGHBORS) == set(dpslm_utils.CODEBOOK_SIZES)
