import hashlib
import warnings

import numpy as np
import pytest
import soundfile
import torch

import dpslm_utils
from dpslm_utils import audio


def _tone(sr=16000, seconds=0.5, channels=1):
    t = np.arange(int(sr * seconds)) / sr
    return np.stack([0.5 * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)], axis=1)


@pytest.mark.parametrize("fmt, subtype", [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("FLAC", "PCM_24"), ("OGG", "VORBIS")])
def test_load_audio_round_trips_formats(tmp_path, fmt, subtype):
    data = _tone(channels=2)
    path = tmp_path / f"x.{fmt.lower()}"
    soundfile.write(path, data, 16000, format=fmt, subtype=subtype)
    wav, sr = dpslm_utils.load_audio(path)
    assert sr == 16000 and wav.dtype == torch.float32 and wav.shape == (2, 8000)
    atol = 0.05 if fmt == "OGG" else 1e-4  # vorbis is lossy
    np.testing.assert_allclose(wav.numpy().T, data, atol=atol)


def test_load_audio_integer_pcm_is_scaled_to_unit_range(tmp_path):
    path = tmp_path / "int.wav"
    soundfile.write(path, np.array([0, 16384, -32768], dtype=np.int16), 8000, subtype="PCM_16")
    wav, sr = dpslm_utils.load_audio(path)
    assert sr == 8000
    assert wav.tolist() == [[0.0, 0.5, -1.0]]


def test_load_audio_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        dpslm_utils.load_audio(tmp_path / "missing.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....not audio")
    with pytest.raises(ValueError, match="cannot read audio file .*bad.wav"):
        dpslm_utils.load_audio(bad)


def test_as_waveform_scales_integer_pcm_tensors():
    assert dpslm_utils.as_waveform(torch.tensor([16384, -32768], dtype=torch.int16)).tolist() == [[0.5, -1.0]]
    assert dpslm_utils.as_waveform(np.array([2**30], dtype=np.int32)).tolist() == [[0.5]]
    assert dpslm_utils.as_waveform(torch.tensor([128, 0], dtype=torch.uint8)).tolist() == [[0.0, -1.0]]


@pytest.mark.parametrize(
    "wav, match",
    [
        (torch.zeros(0), "empty"),
        (torch.zeros(1, 0), "empty"),
        (torch.tensor([0.0, float("nan")]), "NaN or infinite"),
        (torch.tensor([float("inf")]), "NaN or infinite"),
        (torch.zeros(1, 2, 3), r"\[samples\] or \[channels, samples\]"),
    ],
)
def test_as_waveform_rejects_bad_input(wav, match):
    with pytest.raises(ValueError, match=match):
        dpslm_utils.as_waveform(wav)


def test_as_waveform_rejects_other_types():
    with pytest.raises(TypeError):
        dpslm_utils.as_waveform([0.0, 1.0])
    with pytest.raises(TypeError, match="unsupported waveform dtype"):
        dpslm_utils.as_waveform(torch.tensor([True]))


def test_to_mono_averages_channels():
    stereo = torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.0, 1.0]])
    assert dpslm_utils.to_mono(stereo).tolist() == [[0.5, 0.0, 0.0]]


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
def test_resample_preserves_duration_and_pitch(sr):
    wav = torch.from_numpy(_tone(sr=sr, seconds=1.0).T).float()
    out = dpslm_utils.resample(wav, sr, 16000)
    assert out.shape == (1, 16000)
    spectrum = torch.fft.rfft(out[0, 1000:-1000]).abs()
    peak_hz = spectrum.argmax().item() * 16000 / (out.shape[-1] - 2000)
    assert abs(peak_hz - 220) < 2


def test_resample_accepts_only_the_documented_sample_rates():
    assert dpslm_utils.resample(torch.ones(1, 5), 16000, 16000).shape == (1, 5)
    assert dpslm_utils.resample(torch.ones(1, 40), np.int64(4000), 16000).shape == (1, 160)
    for bad in (0, -16000, 1, 3999, 384001):  # sr = 1 would upsample 16000 times
        with pytest.raises(ValueError, match="sample_rate must be an integer from 4000 to 384000"):
            dpslm_utils.resample(torch.ones(1, 5), bad, 16000)
    with pytest.raises(TypeError, match="sample_rate must be an integer"):
        dpslm_utils.resample(torch.ones(1, 5), 16000.5, 16000)


@pytest.mark.parametrize("name, seconds", [("librispeech", 5.77), ("manufacture", 1.30), ("manufelture", 1.35)])
def test_example_audio_falls_back_to_bundled_recordings(name, seconds, caplog):
    caplog.set_level("INFO", "dpslm_utils")
    wav, sr = dpslm_utils.example_audio(name)  # the official files cannot be fetched in tests
    assert sr == 16000 and wav.shape[0] == 1
    assert wav.shape[1] / sr == pytest.approx(seconds, abs=0.01)
    assert 0.05 < wav.abs().max() <= 1.0
    assert "bundled espeak-ng recording" in caplog.text


@pytest.fixture(autouse=True)
def _forget_unreachable(monkeypatch):
    monkeypatch.setattr(audio, "_UNREACHABLE", set())


def test_example_audio_does_not_retry_an_unreachable_download_in_one_process(monkeypatch):
    calls = []

    def offline(remote, progress=True):
        calls.append(remote)
        raise dpslm_utils.CheckpointError("offline")

    monkeypatch.setattr("dpslm_utils.checkpoints.download", offline)
    for _ in range(3):
        dpslm_utils.example_audio("manufacture")
    assert len(calls) == 1


def test_example_audio_prefers_the_official_recording(tmp_path, monkeypatch, caplog):
    caplog.set_level("INFO", "dpslm_utils")
    served = tmp_path / "manufacture.wav"
    soundfile.write(served, _tone(sr=16000, seconds=0.25), 16000)
    remote = audio.OFFICIAL_EXAMPLES["manufacture"].__class__(served.as_uri(), hashlib.sha256(served.read_bytes()).hexdigest())
    monkeypatch.setitem(audio.OFFICIAL_EXAMPLES, "manufacture", remote)
    wav, sr = dpslm_utils.example_audio("manufacture")
    assert wav.shape == (1, 4000) and "official recording manufacture.wav" in caplog.text
    caplog.clear()
    wav, sr = dpslm_utils.example_audio("manufacture", official=False)
    assert wav.shape[1] == 20753 and "bundled" in caplog.text


def test_example_audio_rejects_a_corrupt_cached_official_file(caplog):
    caplog.set_level("INFO", "dpslm_utils")
    official = audio.OFFICIAL_EXAMPLES["manufacture"]
    cache = dpslm_utils.cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    (cache / official.filename).write_bytes(b"not the official recording")
    dpslm_utils.example_audio("manufacture")
    assert "corrupt" in caplog.text and "bundled" in caplog.text
    assert not (cache / official.filename).exists()


def test_example_audio_unknown_name():
    with pytest.raises(ValueError, match="choose from"):
        dpslm_utils.example_audio("nope")


def test_example_audio_works_with_an_unwritable_cache(monkeypatch, random_tiny):
    def no_permission(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("dpslm_utils.checkpoints._new_temporary", no_permission)
    wav, sr = dpslm_utils.example_audio("manufacture")  # the bundled recording, no PermissionError
    assert sr == 16000 and wav.shape[1] == 20753


def test_a_directory_is_reported_as_a_directory(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory, not a file"):
        dpslm_utils.load_audio(tmp_path)


def test_samples_by_channels_arrays_are_explained_exactly():
    soundfile_layout = np.zeros((8000, 2), dtype=np.float32)  # what soundfile.read returns
    with pytest.raises(ValueError, match=r"\[8000, 2\].*wav.T, of shape \[2, 8000\]"):
        dpslm_utils.to_mono(soundfile_layout)
    assert dpslm_utils.to_mono(soundfile_layout.T).shape == (1, 8000)


def test_float_audio_far_outside_unit_range_warns():
    int16_as_float = torch.tensor([0.0, 12000.0, -9000.0])
    with pytest.warns(UserWarning, match="peak amplitude is 12000.*int16: divide by 32768"):
        dpslm_utils.as_waveform(int16_as_float)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dpslm_utils.as_waveform(torch.tensor([0.0, 1.2, -1.0]))  # mild clipping: no warning
