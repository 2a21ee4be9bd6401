"""feature_encoder: WavLM, MFCC and log-mel on one 50 Hz frame grid; log-mel inversion; the shipped codebook."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torchaudio

import dpslm_utils
from dpslm_utils import features
from dpslm_utils.features import feature_encoder

REPO = Path(__file__).resolve().parent.parent
WEIGHT_FREE = ("mfcc", "fbank")


@pytest.fixture(scope="module")
def example():
    wav, sr = dpslm_utils.example_audio("librispeech", official=False)
    return wav, sr


def _noise(samples: int, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(samples, generator=torch.Generator().manual_seed(seed))


# -- one frame grid ---------------------------------------------------------------------------


@pytest.mark.parametrize("samples, sample_rate", [
    (320, 16000), (399, 16000), (400, 16000), (639, 16000), (640, 16000), (959, 16000), (960, 16000),
    (12345, 16000), (16000, 16000), (16001, 16000), (441, 22050), (22050, 22050), (30001, 44100), (8000, 8000),
])  # fmt: skip
def test_every_encoder_gives_wavlms_frame_count(samples, sample_rate, random_tiny):
    wav = _noise(samples)
    wavlm = feature_encoder("wavlm")(wav, sample_rate)
    expected = dpslm_utils.WavLMEncoder.num_frames(samples, sample_rate)
    assert wavlm.shape[0] == expected >= 1
    for name in WEIGHT_FREE:
        encoder = feature_encoder(name)
        assert encoder(wav, sample_rate).shape == (expected, encoder.dim)
        assert encoder.num_frames(samples, sample_rate) == expected


@pytest.mark.parametrize("name", ["wavlm", *WEIGHT_FREE])
def test_audio_shorter_than_one_frame_is_refused_by_every_encoder(name, random_tiny):
    with pytest.raises(ValueError, match="too short: 319 samples at 16 kHz.*at least 320 samples"):
        feature_encoder(name)(_noise(319), 16000)


def test_frame_t_reads_the_same_25_ms_as_wavlm():
    """An impulse at the centre of frame 5's window [320·5 − 40, 320·5 + 360) shows in frame 5 alone."""
    wav = torch.zeros(16000)
    wav[320 * 5 - 40 + 200] = 0.5
    fbank = feature_encoder("fbank")(wav, 16000)
    silent = fbank.amax(dim=1) < math.log(2 * features.LOG_FLOOR)
    assert silent.tolist() == [t != 5 for t in range(50)]
    mfcc = feature_encoder("mfcc", normalize=False, deltas=False)(wav, 16000)
    assert not torch.equal(mfcc[5], mfcc[4]) and (mfcc[torch.arange(50) != 5] == mfcc[0]).all()


# -- what each encoder computes ---------------------------------------------------------------


def test_fbank_is_the_log_mel_spectrum_of_torchaudio(example):
    """An independent implementation: torchaudio's MelSpectrogram (HTK mel, 20 Hz - 8 kHz, Hann 400 in 512)."""
    wav, sr = example
    padded = torch.nn.functional.pad(wav[0], (40, 40))
    # torch.stft centres the 400-sample window in its 512-sample frame: 56 more zeros put it at 320 t
    mel = torchaudio.transforms.MelSpectrogram(sr, n_fft=512, win_length=400, hop_length=320, f_min=20.0,
                                               f_max=8000.0, n_mels=80, center=False, mel_scale="htk")  # fmt: skip
    expected = (mel(torch.nn.functional.pad(padded, (56, 56))).T + features.LOG_FLOOR).log()
    torch.testing.assert_close(feature_encoder("fbank")(wav, sr), expected, atol=2e-4, rtol=1e-4)


def test_mfcc_is_kaldi_mfcc_with_kaldis_deltas(example):
    wav, sr = example
    static = feature_encoder("mfcc", normalize=False, deltas=False)(wav, sr)
    mfcc = feature_encoder("mfcc", normalize=False)(wav, sr)
    assert static.shape[1] == 13 and mfcc.shape[1] == 39
    torch.testing.assert_close(mfcc[:, :13], static)
    # Kaldi's first-order deltas = torchaudio's compute_deltas with a window of 5 (edges replicated)
    torch.testing.assert_close(mfcc[:, 13:26], torchaudio.functional.compute_deltas(static.T, 5).T, atol=1e-4, rtol=1e-5)
    # Kaldi's delta-deltas: the delta filter convolved with itself, so deltas of deltas away from the edges
    twice = torchaudio.functional.compute_deltas(torchaudio.functional.compute_deltas(static.T, 5), 5).T
    torch.testing.assert_close(mfcc[4:-4, 26:], twice[4:-4], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("name, options", [("mfcc", {}), ("fbank", {"normalize": True})])
def test_per_utterance_normalisation_gives_zero_mean_unit_variance(name, options, example):
    x = feature_encoder(name, **options)(*example)
    torch.testing.assert_close(x.mean(dim=0), torch.zeros(x.shape[1]), atol=1e-4, rtol=0)
    torch.testing.assert_close(x.std(dim=0, unbiased=False), torch.ones(x.shape[1]), atol=1e-4, rtol=0)


def test_fbank_is_absolute_by_default_so_loudness_shifts_it_by_the_log_of_the_gain(example):
    wav, sr = example
    fbank = feature_encoder("fbank")
    loud, quiet = fbank(wav, sr), fbank(0.5 * wav, sr)
    strong = quiet > math.log(1e-2)  # band powers far above the floor, where log(p + floor) ≈ log p
    assert strong.float().mean() > 0.2
    torch.testing.assert_close((loud - quiet)[strong], torch.full((int(strong.sum()),), math.log(4.0)), atol=2e-3, rtol=0)


@pytest.mark.parametrize("name", ["wavlm", *WEIGHT_FREE])
def test_batch_equals_one_at_a_time(name, example, random_tiny):
    wav, sr = example
    wavs = [wav[0, :16000], wav[0, 16000:40001], wav[0, :4000]]
    encoder = feature_encoder(name)
    for batched, wav_i in zip(encoder.batch(wavs, sr), wavs, strict=True):
        single = encoder(wav_i, sr)
        assert batched.dtype == torch.float32 and batched.shape == (single.shape[0], encoder.dim)
        torch.testing.assert_close(batched, single, atol=1e-4 if name == "wavlm" else 0, rtol=1e-4 if name == "wavlm" else 0)


def test_batch_names_the_waveform_that_failed():
    with pytest.raises(ValueError, match=r"wavs\[1\]: the audio is too short"):
        feature_encoder("mfcc").batch([_noise(1000), _noise(100)], 16000)


def test_encoders_describe_themselves(random_tiny):
    mfcc, fbank, wavlm = (feature_encoder(n) for n in ("mfcc", "fbank", "wavlm"))
    assert (mfcc.name, mfcc.dim, mfcc.frame_rate, mfcc.sample_rate) == ("mfcc", 39, 50, 16000)
    assert (fbank.name, fbank.dim) == ("fbank", 80)
    assert (wavlm.name, wavlm.dim, wavlm.layer) == ("wavlm", 64, 11)  # the random-tiny WavLM
    assert mfcc.settings == {"features": "mfcc", "normalize": True, "deltas": True}
    assert fbank.settings == {"features": "fbank", "normalize": False}
    assert wavlm.settings == {"features": "wavlm", "layer": 11, "random_weights": True}
    assert not mfcc.random_weights and wavlm.random_weights
    assert feature_encoder("wavlm", layer=3).settings["layer"] == 3


def test_unknown_names_and_options_are_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown features 'hubert'; the known features are 'wavlm', 'mfcc', 'fbank'"):
        feature_encoder("hubert")
    with pytest.raises(TypeError, match="feature_encoder\\('mfcc'\\) has no option n_mels; its options are normalize, deltas, device"):
        feature_encoder("mfcc", n_mels=40)
    with pytest.raises(TypeError, match="normalize must be True or False"):
        feature_encoder("fbank", normalize="yes")


def test_the_cli_knows_every_feature_name():
    from dpslm_utils import cli

    assert cli.FEATURE_NAMES == tuple(features.ENCODERS)


# -- inversion ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, options", [("wavlm", {}), ("mfcc", {}), ("fbank", {"normalize": True})])
def test_features_that_cannot_be_inverted_say_so(name, options, random_tiny):
    encoder = feature_encoder(name, **options)
    x = encoder(_noise(8000), 16000)
    with pytest.raises(ValueError, match="cannot be inverted"):
        encoder.invert(x)


def test_invert_then_encode_again_stays_close(example):
    """Measured when written (64 iterations, seed 0): bundled example 1.03 mean squared log-mel error,
    correlation 0.981; toy utterances 0.23-0.64 and 0.987-0.995. The bounds leave a margin of about 1.5x."""
    fbank = feature_encoder("fbank")
    toy = dpslm_utils.load_toy_language()
    recordings = [example] + [dpslm_utils.load_audio(u.path) for u in toy.validation[:3]]
    for wav, sr in recordings:
        x = fbank(wav, sr)
        audio = fbank.invert(x)
        assert audio.shape == (320 * x.shape[0],) and audio.dtype == torch.float32
        again = fbank(audio, fbank.sample_rate)
        assert again.shape == x.shape
        error = (again - x).square().mean().item()
        correlation = torch.corrcoef(torch.stack([x.flatten(), again.flatten()]))[0, 1].item()
        assert error < 1.5 and correlation > 0.97, (error, correlation)
        # Without Griffin-Lim's iterations (a random phase) the spectrum is far worse: the iterations matter
        if wav is example[0]:
            assert (fbank(fbank.invert(x, iterations=0), 16000) - x).square().mean().item() > 2 * error


def test_invert_is_deterministic_for_a_seed(example):
    fbank = feature_encoder("fbank")
    x = fbank(example[0][:, :8000], example[1])
    assert torch.equal(fbank.invert(x, seed=3), fbank.invert(x, seed=3))
    assert not torch.equal(fbank.invert(x, seed=3), fbank.invert(x, seed=4))


def test_invert_checks_its_input():
    fbank = feature_encoder("fbank")
    with pytest.raises(ValueError, match=r"log-mel frames \[T, 80\]"):
        fbank.invert(torch.zeros(10, 39))
    assert fbank.invert(torch.zeros(0, 80)).shape == (0,)


def test_resynthesize_units_puts_each_frames_centroid_back_and_inverts(example):
    fbank, codebook = feature_encoder("fbank"), dpslm_utils.feature_codebook("fbank")
    frame_units = dpslm_utils.dpdp(fbank(*example), codebook, lmbda=1000.0)
    units, durations = dpslm_utils.deduplicate(frame_units)
    audio = dpslm_utils.resynthesize_units(units, durations, codebook, fbank)
    assert torch.equal(audio, fbank.invert(codebook[frame_units]))
    assert audio.shape == (320 * len(frame_units),)
    with pytest.raises(ValueError, match="equally long"):
        dpslm_utils.resynthesize_units(units, durations[:-1], codebook, fbank)


# -- the shipped codebook -------------------------------------------------------------------------


def test_the_shipped_log_mel_codebook_loads_offline_and_names_its_features():
    codebook = dpslm_utils.feature_codebook("fbank")
    assert codebook.shape == (100, 80) and codebook.dtype == torch.float32
    path = Path(dpslm_utils.__file__).parent / "feature_codebooks" / "fbank_k100.pt"
    stored, details = dpslm_utils.read_codebook(path)
    assert torch.equal(stored, codebook)
    assert details["features"] == feature_encoder("fbank").settings and details["seed"] == 0
    with pytest.raises(ValueError, match=r"no shipped codebook for 'mfcc' features with k=100; shipped: \('fbank', k=100\)"):
        dpslm_utils.feature_codebook("mfcc")


def test_the_script_that_made_the_shipped_codebook_makes_it_again():
    spec = importlib.util.spec_from_file_location("make_fbank_codebook", REPO / "data" / "make_fbank_codebook.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    codebook, details = script.make_codebook()
    torch.testing.assert_close(codebook, dpslm_utils.feature_codebook("fbank"), atol=1e-4, rtol=1e-5)
    assert details["frames"] == dpslm_utils.read_codebook(script.OUT)[1]["frames"]
