"""WavTokenizer: equal to the original implementation on the reference fixture, strict checkpoint
reading, the random-tiny file, the ISTFT's perfect reconstruction, and clear errors for bad input."""

import math

import pytest
import torch
from conftest import FIXTURES, load_fixture

from dpslm_utils import CheckpointError, WavTokenizer
from dpslm_utils.wavtokenizer import (
    InverseSTFT,
    ISTFTHead,
    _reflect_pad,
)
from dpslm_utils.random_tiny import WAVTOKENIZER_CONFIGS, write_wavtokenizer

WAVEFORM_ATOL = 1e-5
FEATURE_ATOL = 1e-4
MODEL_PREFIXES = ("feature_extractor.", "backbone.", "head.")
DECODER_PREFIX = "feature_extractor.encodec.decoder."
CODEBOOK = "feature_extractor.encodec.quantizer.vq.layers.0._codebook."


@pytest.fixture(scope="module")
def reference():
    return load_fixture("wavtokenizer_fixture.pt")


@pytest.fixture(scope="module")
def vocoder():
    return WavTokenizer.from_checkpoint(FIXTURES / "wavtokenizer_small_600_tiny.ckpt")


@pytest.fixture(scope="module")
def tiny_state(tmp_path_factory):
    """The random-tiny small_600 checkpoint's state dict (written once per module)."""
    path = tmp_path_factory.mktemp("wavtokenizer") / "tiny.ckpt"
    write_wavtokenizer(path)
    return torch.load(path, weights_only=True)["state_dict"]


def _save(state: dict, path):
    torch.save({"state_dict": state}, path)
    return path


# ---------------------------------------------------------------------------------------------
# Equality with the original implementation
# ---------------------------------------------------------------------------------------------


def test_sizes_are_read_from_the_weights(vocoder, reference):
    tiny_args = reference["meta"]["tiny_args"]
    backbone = tiny_args["backbone"]
    config = vocoder.config
    assert (config.dim, config.intermediate_dim, config.num_layers, config.adanorm_num_embeddings) == (
        backbone["dim"], backbone["intermediate_dim"], backbone["num_layers"], backbone["adanorm_num_embeddings"]
    )  # fmt: skip
    assert list(config.downsamples) == tiny_args["feature_extractor"]["downsamples"]
    assert config.n_fft == tiny_args["head"]["n_fft"]
    assert (config.dimension, vocoder.num_codes) == (backbone["input_channels"], 4096)
    assert (vocoder.sample_rate, vocoder.hop_length, vocoder.frame_rate) == (24000, 600, 40)
    assert vocoder.sample_rate == reference["expected"]["hub_decode_sr"]
    assert vocoder.random_weights is False and "RANDOM" not in repr(vocoder)


def test_codes_to_features(vocoder, reference):
    codes, expected = reference["inputs"]["codes"][0], reference["expected"]
    assert torch.equal(vocoder.codes_to_features(codes), expected["codes_to_features"])
    assert torch.equal(vocoder.codes_to_features(codes[0]), expected["codes_to_features_2d"])
    assert torch.equal(vocoder.codes_to_features(codes.tolist()), expected["codes_to_features"])
    batch = reference["inputs"]["codes_batch2"][0]
    assert torch.equal(vocoder.codes_to_features(batch), expected["codes_to_features_batch2"])


def test_decode_matches_original(vocoder, reference):
    codes = reference["inputs"]["codes"][0]  # [1, 50]
    expected = reference["expected"]["decoded_wav"]  # [1, 30000]
    torch.testing.assert_close(vocoder.decode(codes), expected, atol=WAVEFORM_ATOL, rtol=0)
    torch.testing.assert_close(vocoder.decode(codes[0].tolist()), expected, atol=WAVEFORM_ATOL, rtol=0)


def test_decode_batch_matches_original(vocoder, reference):
    codes = reference["inputs"]["codes_batch2"][0]  # [2, 50]
    expected = reference["expected"]["decoded_wav_batch2"]
    torch.testing.assert_close(vocoder.decode(codes), expected, atol=WAVEFORM_ATOL, rtol=0)


def test_encoder_and_quantizer_match_original(vocoder, reference):
    wav, expected = reference["inputs"]["wav_24000"], reference["expected"]
    with torch.inference_mode():
        embeddings = vocoder.encoder(wav.unsqueeze(1))
    torch.testing.assert_close(embeddings, expected["encoder_output"], atol=FEATURE_ATOL, rtol=0)
    codes = vocoder.quantize(embeddings)
    assert torch.equal(codes, expected["encode_codes"][0])
    assert torch.equal(vocoder.codes_to_features(codes), expected["encode_features"])


def test_encode_matches_original_at_24k_and_16k(vocoder, reference):
    inputs, expected = reference["inputs"], reference["expected"]
    codes = vocoder.encode(inputs["wav_24000"], 24000)
    assert codes.dtype == torch.long and torch.equal(codes, expected["encode_codes"][0, 0])
    assert torch.equal(vocoder.encode(inputs["wav_24000"][0], 24000), codes)  # [samples] works too
    # 16 kHz input is resampled to 24 kHz first, as the original hub encode() does
    assert torch.equal(vocoder.encode(inputs["wav_16000"], 16000), expected["hub_encode_16k_codes"][0, 0])


# ---------------------------------------------------------------------------------------------
# Closed-form properties
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_codes", [1, 2, 7])
def test_decode_gives_hop_samples_per_code(vocoder, num_codes):
    wav = vocoder.decode(torch.arange(num_codes) * 97)
    assert wav.shape == (1, 600 * num_codes) and torch.isfinite(wav).all()


@pytest.mark.parametrize("num_samples", [1, 599, 600, 601, 1500])
def test_encode_gives_one_code_per_started_hop(vocoder, num_samples):
    wav = torch.sin(torch.arange(num_samples) * 0.05)
    assert vocoder.encode(wav, 24000).shape == (math.ceil(num_samples / 600),)


@pytest.mark.parametrize(("n_fft", "hop_length"), [(16, 4), (12, 6), (2400, 600)])
def test_inverse_stft_reconstructs_windowed_frames(n_fft, hop_length):
    """Frames cut from a signal s (Hann-windowed, rfft) come back as s, minus the "same" trim."""
    num_frames = 9
    signal = torch.randn(2, (num_frames - 1) * hop_length + n_fft, generator=torch.Generator().manual_seed(0))
    frames = signal.unfold(-1, n_fft, hop_length) * torch.hann_window(n_fft)  # [2, L, n_fft]
    spectrum = torch.fft.rfft(frames, dim=-1).transpose(1, 2)  # [2, n_fft // 2 + 1, L]
    trim = (n_fft - hop_length) // 2
    expected = signal[:, trim : trim + num_frames * hop_length]
    torch.testing.assert_close(InverseSTFT(n_fft, hop_length)(spectrum), expected, atol=1e-5, rtol=0)


def test_head_clips_magnitudes_at_100():
    """The ISTFT is linear in the spectrum, so a clipped magnitude (e^10 -> 100) gives 100x the e^0 waveform."""
    head = ISTFTHead(dim=4, n_fft=16, hop_length=4)
    with torch.no_grad():
        head.out.weight.zero_()
        head.out.bias[9:] = torch.randn(9, generator=torch.Generator().manual_seed(0))  # phases

    def waveform(log_magnitude: float) -> torch.Tensor:
        with torch.no_grad():
            head.out.bias[:9] = log_magnitude
            return head(torch.zeros(1, 5, 4))

    torch.testing.assert_close(waveform(10.0), 100 * waveform(0.0))
    assert waveform(0.0).abs().max() > 0.1


@pytest.mark.parametrize(
    ("signal", "left", "right", "expected"),
    [
        ([1.0, 2.0, 3.0, 4.0], 2, 1, [3.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0]),  # plain reflection
        # shorter than the padding: zero-extend to max(left, right) + 1 = 4 samples, reflect, drop the extension
        ([1.0, 2.0], 3, 3, [0.0, 0.0, 2.0, 1.0, 2.0, 0.0, 0.0, 0.0]),
        ([1.0, 2.0, 3.0], 1, 4, [2.0, 1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 3.0]),
    ],
)
def test_reflect_padding_of_short_inputs(signal, left, right, expected):
    assert _reflect_pad(torch.tensor([[signal]]), left, right)[0, 0].tolist() == expected


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("codes", "error", "message"),
    [
        ([1, 4096, 2], ValueError, r"\[0, 4096\), found 4096"),
        (torch.tensor([3, -1]), ValueError, r"\[0, 4096\), found -1"),
        ([], ValueError, "empty"),
        (torch.zeros(2, 0, dtype=torch.long), ValueError, "empty"),
        ([1.0, 2.0], TypeError, "integers, got dtype torch.float32"),
        (torch.tensor([True, False]), TypeError, "integers, got dtype torch.bool"),
        (torch.zeros(1, 1, 5, dtype=torch.long), ValueError, r"\[L\] or \[B, L\], got \[1, 1, 5\]"),
        (torch.tensor(5), ValueError, r"\[L\] or \[B, L\], got \[\]"),
        ([[1, 2], [3]], ValueError, "rectangular"),
        ("12", ValueError, "tensor or a .* list of ints"),
    ],
)
def test_bad_codes_are_rejected(vocoder, codes, error, message):
    with pytest.raises(error, match=message):
        vocoder.decode(codes)


def test_bad_features_are_rejected(vocoder):
    with pytest.raises(ValueError, match=r"\[B, 512, L>0\], got \[1, 64, 3\]"):
        vocoder.decode_features(torch.zeros(1, 64, 3))


@pytest.mark.parametrize(
    ("wav", "message"),
    [
        (torch.zeros(0), "empty"),
        (torch.tensor([0.1, float("nan"), 0.2]), "NaN"),
        (torch.zeros(2, 2400), "mono.*2 channels.*to_mono"),
    ],
)
def test_bad_audio_is_rejected(vocoder, wav, message):
    with pytest.raises(ValueError, match=message):
        vocoder.encode(wav, 24000)


def test_bad_sample_rate_is_rejected(vocoder):
    with pytest.raises(ValueError, match="sample_rate must be an integer from 4000 to 384000"):
        vocoder.encode(torch.zeros(2400), 0)


# ---------------------------------------------------------------------------------------------
# Checkpoint reading
# ---------------------------------------------------------------------------------------------


def test_unknown_config_lists_the_valid_ones():
    with pytest.raises(ValueError, match="small_320_24k_4096.*small_600_24k_4096"):
        WavTokenizer.from_checkpoint(FIXTURES / "wavtokenizer_small_600_tiny.ckpt", config="large")
    with pytest.raises(ValueError, match="small_320_24k_4096"):
        WavTokenizer.from_pretrained("small_600_24k_1024")


def test_config_must_agree_with_the_weights(tiny_state, tmp_path):
    path = _save(tiny_state, tmp_path / "small_600.ckpt")
    message = r"strides \[6, 5, 5, 4\] and n_fft 2400.*pass config='small_600_24k_4096'"
    with pytest.raises(CheckpointError, match=message):
        WavTokenizer.from_checkpoint(path, config="small_320_24k_4096")


def test_checkpoint_of_another_family_is_rejected():
    with pytest.raises(CheckpointError, match="not a WavTokenizer"):
        WavTokenizer.from_checkpoint(FIXTURES / "ulm_tiny.pt")


def test_lightning_file_without_wavtokenizer_keys_is_rejected(tmp_path):
    path = _save({"model.layers.0.weight": torch.zeros(2, 2)}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not a WavTokenizer checkpoint"):
        WavTokenizer.from_checkpoint(path)


def test_missing_and_unexpected_keys_are_named(tiny_state, tmp_path):
    state = {k: v for k, v in tiny_state.items() if k != "backbone.final_layer_norm.bias"}
    with pytest.raises(CheckpointError, match=r"missing keys \['backbone.final_layer_norm.bias'\]"):
        WavTokenizer.from_checkpoint(_save(state, tmp_path / "missing.ckpt"))
    state = {**tiny_state, "head.extra.weight": torch.zeros(3)}
    with pytest.raises(CheckpointError, match=r"unexpected keys \['head.extra.weight'\]"):
        WavTokenizer.from_checkpoint(_save(state, tmp_path / "unexpected.ckpt"))


def test_shape_mismatch_names_the_official_key(tiny_state, tmp_path):
    key = "feature_extractor.encodec.encoder.model.1.block.1.conv.conv.bias"
    state = {**tiny_state, key: torch.zeros(5)}
    with pytest.raises(CheckpointError, match=rf"inconsistent shapes: \['{key} \[5\] \(expected \[2\]\)'\]"):
        WavTokenizer.from_checkpoint(_save(state, tmp_path / "shape.ckpt"))


def test_training_only_keys_are_ignored(tiny_state, tmp_path):
    state = {
        **tiny_state,
        "multiperioddisc.fake.weight": torch.zeros(8, 4),
        "melspec_loss.x": torch.zeros(3),
        DECODER_PREFIX + "model.0.conv.conv.bias": torch.zeros(4),
    }
    model = WavTokenizer.from_checkpoint(_save(state, tmp_path / "extra.ckpt"))
    assert torch.equal(model.codebook, tiny_state[CODEBOOK + "embed"])


def test_uninitialised_codebook_is_rejected(tiny_state, tmp_path):
    state = {**tiny_state, CODEBOOK + "inited": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="untrained codebook"):
        WavTokenizer.from_checkpoint(_save(state, tmp_path / "uninited.ckpt"))


# ---------------------------------------------------------------------------------------------
# Random-tiny weights
# ---------------------------------------------------------------------------------------------


def test_random_tiny_file_has_the_official_layout(tiny_state, tmp_path):
    official = load_fixture("wavtokenizer_small_600_tiny.ckpt")["state_dict"]  # also 2 ConvNeXt layers
    model_keys = {k for k in official if k.startswith(MODEL_PREFIXES) and not k.startswith(DECODER_PREFIX)}
    assert set(tiny_state) == model_keys
    assert tiny_state[CODEBOOK + "embed"].shape == (4096, WAVTOKENIZER_CONFIGS["small_600_24k_4096"].dimension)
    path = tmp_path / "again.ckpt"
    write_wavtokenizer(path)
    assert path.stat().st_size < 5e6
    again = torch.load(path, weights_only=True)["state_dict"]
    assert all(torch.equal(again[k], v) for k, v in tiny_state.items())  # seeded


@pytest.mark.parametrize(
    ("name", "hop_length", "frame_rate"), [("small_600_24k_4096", 600, 40), ("small_320_24k_4096", 320, 75)]
)
def test_from_pretrained_random_tiny(random_tiny, name, hop_length, frame_rate):
    model = WavTokenizer.from_pretrained(name)
    assert model.random_weights is True and "RANDOM WEIGHTS" in repr(model)
    assert model.config == WAVTOKENIZER_CONFIGS[name]  # all sizes were read back from the weights
    assert (model.hop_length, model.frame_rate, model.num_codes) == (hop_length, frame_rate, 4096)
    codes = torch.randint(0, 4096, (2, 40), generator=torch.Generator().manual_seed(0))
    wav = model.decode(codes)
    assert wav.shape == (2, 40 * model.hop_length)
    assert wav.abs().max() < 1.0 and wav.std() > 1e-3  # bounded, not silent
    t = torch.arange(24000) / 16000
    chirp = 0.3 * torch.sin(2 * math.pi * (300 + 500 * t) * t)
    codes = model.encode(chirp, 16000)
    assert codes.shape == (math.ceil(36000 / model.hop_length),)
    assert codes.unique().numel() > 1  # the codebook is fitted to the random encoder
