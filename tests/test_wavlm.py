"""WavLM encoder: equal to the original WavLM-codebooks extraction on the reference checkpoints,
strict loading of Microsoft's format, batching, input checks, and the random-tiny model."""

import copy
import re
import time
import warnings

import pytest
import torch

from conftest import FIXTURES, load_fixture
from dpslm_utils.checkpoints import CheckpointError
from dpslm_utils.random_tiny import WAVLM_CONFIG, write_wavlm
from dpslm_utils.wavlm import WavLMEncoder, num_frames

CHECKPOINTS = {  # checkpoint file -> its config's name in wavlm_fixture.pt
    "wavlm_large_tiny.pt": "large",
    "wavlm_large_tiny_weight_g_v.pt": "large",
    "wavlm_base_tiny.pt": "base",
}
ATOL = 1e-4


@pytest.fixture(scope="module")
def reference():
    return load_fixture("wavlm_fixture.pt")


@pytest.fixture(scope="module")
def encoders():
    return {name: WavLMEncoder.from_checkpoint(FIXTURES / name) for name in CHECKPOINTS}


@pytest.fixture(scope="module")
def large(encoders):
    return encoders["wavlm_large_tiny.pt"]


def _chirp(seconds: float, sample_rate: int) -> torch.Tensor:
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    return 0.5 * torch.sin(2 * torch.pi * (150 + 400 * t) * t)


def _saved(tmp_path, checkpoint) -> str:
    path = tmp_path / "wavlm.pt"
    torch.save(checkpoint, path)
    return path


# -- equal to the original ----------------------------------------------------------------------


@pytest.mark.parametrize("layer", [1, 2, 3, None])
@pytest.mark.parametrize("rate", [16000, 22050])
@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_features_match_original(encoders, reference, checkpoint, rate, layer):
    expected = reference["expected"][CHECKPOINTS[checkpoint]][f"sr_{rate}"]
    features = encoders[checkpoint](reference["inputs"][f"wav_{rate}"], rate, layer=layer)
    target = expected["layer_none" if layer is None else f"layer_{layer}"]
    assert features.shape == target.shape == (80, 64)
    torch.testing.assert_close(features, target, atol=ATOL, rtol=0)


@pytest.mark.parametrize("rate", [16000, 22050])
@pytest.mark.parametrize("checkpoint", ["wavlm_large_tiny.pt", "wavlm_base_tiny.pt"])
def test_model_input_and_conv_features_match_original(encoders, reference, checkpoint, rate):
    """The resampled, padded waveform the conv stack receives, and the conv stack's output."""
    encoder = encoders[checkpoint]
    expected = reference["expected"][CHECKPOINTS[checkpoint]][f"sr_{rate}"]
    model_input = encoder.preprocess(reference["inputs"][f"wav_{rate}"], rate)
    torch.testing.assert_close(model_input, expected["model_input"][0], atol=1e-6, rtol=0)
    with torch.inference_mode():
        conv_features, _ = encoder.model.feature_extractor(model_input[None], None)
    torch.testing.assert_close(conv_features.transpose(1, 2), expected["conv_features"], atol=ATOL, rtol=0)


def test_both_weight_norm_layouts_give_identical_features(encoders, reference):
    wav = reference["inputs"]["wav_16000"]
    parametrized = encoders["wavlm_large_tiny.pt"](wav, 16000, layer=3)
    legacy = encoders["wavlm_large_tiny_weight_g_v.pt"](wav, 16000, layer=3)
    assert torch.equal(parametrized, legacy)


def test_layer_is_one_based_and_checked(large):
    wav = _chirp(0.5, 16000)
    assert large.num_layers == 3 and large.dim == 64
    for bad in [0, 4, -1, True, 2.0, "3"]:
        with pytest.raises(ValueError, match="layer must be an integer from 1 to 3"):
            large(wav, 16000, layer=bad)


# -- batches ------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [1, 3, None])
@pytest.mark.parametrize("checkpoint", ["wavlm_large_tiny.pt", "wavlm_base_tiny.pt"])
def test_batch_equals_unbatched(encoders, reference, checkpoint, layer):
    encoder = encoders[checkpoint]
    wav = reference["inputs"]["wav_16000"][0]
    wavs = [wav[:7000], wav, wav[3000:15000], wav[:320]]  # 21, 80, 37 and 1 frames
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batched = encoder.batch(wavs, 16000, layer=layer)
    assert [len(f) for f in batched] == [num_frames(len(w)) for w in wavs] == [21, 80, 37, 1]
    for features, single in zip(batched, wavs):
        torch.testing.assert_close(features, encoder(single, 16000, layer=layer), atol=ATOL, rtol=0)
    expected = reference["expected"][CHECKPOINTS[checkpoint]]["sr_16000"]
    target = expected["layer_none" if layer is None else f"layer_{layer}"]
    torch.testing.assert_close(batched[1], target, atol=ATOL, rtol=0)


def test_batch_needs_a_non_empty_list(large):
    for bad in [[], _chirp(1.0, 16000)]:
        with pytest.raises(ValueError, match="non-empty list"):
            large.batch(bad, 16000)


# -- strict loading of Microsoft's format ----------------------------------------------------------


@pytest.fixture
def large_checkpoint():
    return copy.deepcopy(load_fixture("wavlm_large_tiny.pt"))


def test_missing_parameter_is_named(tmp_path, large_checkpoint):
    del large_checkpoint["model"]["encoder.layers.1.self_attn.k_proj.bias"]
    with pytest.raises(CheckpointError, match=re.escape("missing ['encoder.layers.1.self_attn.k_proj.bias']")):
        WavLMEncoder.from_checkpoint(_saved(tmp_path, large_checkpoint))


def test_unexpected_parameter_is_named(tmp_path, large_checkpoint):
    large_checkpoint["model"]["encoder.layers.3.fc1.weight"] = torch.zeros(128, 64)
    with pytest.raises(CheckpointError, match=re.escape("unexpected ['encoder.layers.3.fc1.weight']")):
        WavLMEncoder.from_checkpoint(_saved(tmp_path, large_checkpoint))


def test_mask_emb_is_optional(tmp_path, large_checkpoint, reference):
    del large_checkpoint["model"]["mask_emb"]
    encoder = WavLMEncoder.from_checkpoint(_saved(tmp_path, large_checkpoint))
    features = encoder(reference["inputs"]["wav_16000"], 16000, layer=2)
    torch.testing.assert_close(features, reference["expected"]["large"]["sr_16000"]["layer_2"], atol=ATOL, rtol=0)


def test_both_weight_norm_layouts_at_once_is_an_error(tmp_path, large_checkpoint):
    legacy = load_fixture("wavlm_large_tiny_weight_g_v.pt")["model"]
    large_checkpoint["model"]["encoder.pos_conv.0.weight_g"] = legacy["encoder.pos_conv.0.weight_g"]
    with pytest.raises(CheckpointError, match="both encoder.pos_conv.0.weight_g and"):
        WavLMEncoder.from_checkpoint(_saved(tmp_path, large_checkpoint))


def test_cfg_that_does_not_fit_the_weights(tmp_path, large_checkpoint):
    large_checkpoint["cfg"]["encoder_ffn_embed_dim"] = 256
    with pytest.raises(CheckpointError, match="do not fit the architecture"):
        WavLMEncoder.from_checkpoint(_saved(tmp_path, large_checkpoint))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("activation_fn", "relu", "activation_fn='relu'"),
        ("extractor_mode", "conv2d", "extractor_mode='conv2d'"),
        ("gru_rel_pos", False, "gated relative position bias"),
        ("conv_feature_layers", "[(32,10,4)] + [(32,3,2)] * 6", "conv kernels/strides"),
        ("conv_feature_layers", "__import__('os').system('true')", "is not a list of"),
        ("conv_feature_layers", "[(32,10,5)] * 10**9", "is not a list of"),
        ("conv_feature_layers", "[(32,10,5)] * 4096 * 4096 * 4096", "is not a list of"),
    ],
)
def test_unsupported_cfg_is_rejected(tmp_path, large_checkpoint, field, value, message):
    large_checkpoint["cfg"][field] = value
    with pytest.raises(CheckpointError, match=re.escape(message)):
        WavLMEncoder.from_checkpoint(_saved(tmp_path, large_checkpoint))


def test_missing_cfg_fields_take_the_original_defaults(tmp_path, large_checkpoint):
    del large_checkpoint["cfg"]["max_distance"]  # WavLMConfig's default is 1280 (Large uses 800)
    assert WavLMEncoder.from_checkpoint(_saved(tmp_path, large_checkpoint)).config["max_distance"] == 1280


@pytest.mark.parametrize("family_file", ["ulm_tiny.pt", "ellav_tiny.pt", "dpdp_codebook_k50_d32.pt"])
def test_other_families_are_rejected(family_file):
    with pytest.raises(CheckpointError, match="is not a WavLM checkpoint"):
        WavLMEncoder.from_checkpoint(FIXTURES / family_file)


# -- input handling --------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_any_sample_rate_gives_50_frames_per_second(large, rate):
    for seconds in (1.0, 2.5):
        wav = _chirp(seconds, rate)
        assert len(large(wav, rate, layer=1)) == int(50 * seconds) == num_frames(len(wav), rate)


def test_shapes_dtypes_and_integer_pcm(large):
    wav = _chirp(1.0, 16000)
    features = large(wav, 16000, layer=3)
    assert features.dtype == torch.float32 and features.device.type == "cpu" and torch.is_inference(features)
    assert torch.equal(large(wav[None], 16000, layer=3), features)
    assert torch.equal(large(wav.numpy(), 16000, layer=3), features)
    pcm16 = torch.round(wav * 32767).to(torch.int16)
    from_pcm16 = large(pcm16, 16000, layer=3)
    assert torch.equal(from_pcm16, large(pcm16.float() / 32768, 16000, layer=3))
    assert torch.equal(large(pcm16.to(torch.int32) * 65536, 16000, layer=3), from_pcm16)


def test_bad_audio_is_explained(large):
    cases = [
        (torch.zeros(0), "empty"),
        (torch.tensor([0.0, float("nan"), 0.0] * 200), "NaN or infinite"),
        (torch.tensor([0.0, float("inf"), 0.0] * 200), "NaN or infinite"),
        (torch.zeros(2, 16000), "to_mono"),
        (torch.zeros(1, 1, 16000), "shape"),
        (torch.zeros(319), "too short.*at least 320 samples \\(20 ms\\)"),
    ]
    for wav, message in cases:
        with pytest.raises(ValueError, match=message):
            large(wav, 16000, layer=1)
    with pytest.raises(ValueError, match="too short"):
        large(torch.zeros(159), 8000, layer=1)  # 318 samples after resampling to 16 kHz
    for rate in [0, -16000, 16000.0]:  # 16000.0: TypeError, not an integer
        with pytest.raises((ValueError, TypeError), match="sample_rate"):
            large(torch.zeros(16000), rate, layer=1)


def test_num_frames_edges(large):
    for n, frames in [(0, 0), (319, 0), (320, 1), (639, 1), (640, 2), (25600, 80)]:
        assert num_frames(n) == frames
        if frames:
            assert len(large(torch.zeros(n), 16000, layer=1)) == frames
    assert num_frames(159, 8000) == 0 and num_frames(160, 8000) == 1
    assert num_frames(35280, 22050) == 80  # the fixture's 1.6 s at 22.05 kHz
    assert WavLMEncoder.sample_rate == 16000 and WavLMEncoder.frame_rate == 50


# -- random tiny weights ---------------------------------------------------------------------------


def test_random_tiny_checkpoint_has_the_official_layout(tmp_path):
    """Same keys as an original-written checkpoint (the 3-layer fixture, extended to 12 layers)."""
    path = tmp_path / "tiny.pt"
    write_wavlm(path)
    written = torch.load(path, weights_only=True)
    assert set(written) == {"cfg", "model"}
    reference_keys = load_fixture("wavlm_large_tiny.pt")["model"].keys()
    expected = {key for key in reference_keys if not key.startswith("encoder.layers.")}
    expected |= {key for key in reference_keys if key.startswith("encoder.layers.0.")}
    expected |= {
        key.replace("encoder.layers.1.", f"encoder.layers.{i}.")
        for key in reference_keys
        if key.startswith("encoder.layers.1.")
        for i in range(1, 12)
    }
    assert set(written["model"]) == expected
    assert written["cfg"]["encoder_layers"] == 12 and written["cfg"]["encoder_embed_dim"] == 64


def test_random_tiny_from_pretrained(random_tiny):
    encoder = WavLMEncoder.from_pretrained()
    assert encoder.random_weights and "RANDOM WEIGHTS" in repr(encoder)
    assert encoder.num_layers == 12 and encoder.dim == WAVLM_CONFIG["encoder_embed_dim"] == 64
    wav = _chirp(2.0, 16000) + 0.05 * torch.randn(32000, generator=torch.Generator().manual_seed(0))
    features = [encoder(wav, 16000, layer=layer) for layer in range(1, 13)]
    assert all(f.shape == (100, 64) for f in features)
    # Seeded: a second model is identical.
    assert torch.equal(WavLMEncoder.from_pretrained()(wav, 16000), features[10])
    # Not degenerate: every layer's output varies over time, and every layer changes its input.
    for f in features:
        assert f.std(dim=0).mean() > 0.2 * f.std()
    for before, after in zip(features, features[1:]):
        assert (after - before).norm() > 0.05 * after.norm()


def test_random_tiny_is_fast(random_tiny):
    """6 s of audio in well under a second (~20-40 ms on one core)."""
    encoder = WavLMEncoder.from_pretrained()
    wav = _chirp(6.0, 16000)
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        encoder(wav, 16000)
        seconds.append(time.perf_counter() - start)
    assert min(seconds) < 0.5


def test_pretrained_repr_has_no_warning(large):
    assert "RANDOM" not in repr(large) and not large.random_weights


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_original(reference):
    encoder = WavLMEncoder.from_checkpoint(FIXTURES / "wavlm_large_tiny.pt", device="cuda")
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        features = encoder(reference["inputs"]["wav_22050"], 22050, layer=3)
    assert features.device.type == "cuda" and features.dtype == torch.float32
    torch.testing.assert_close(features.cpu(), reference["expected"]["large"]["sr_22050"]["layer_3"], atol=ATOL, rtol=0)
