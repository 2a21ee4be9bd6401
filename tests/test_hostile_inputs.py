"""Inputs a library should survive: very long audio, device aliases that must share one model."""

import pytest
import torch

import dpslm_utils
from dpslm_utils import pipeline, wavlm

pytestmark = pytest.mark.usefixtures("random_tiny")


@pytest.fixture(scope="module")
def encoder():
    with pytest.MonkeyPatch.context() as m:
        m.setenv("DPSLM_WEIGHTS", "random-tiny")
        return dpslm_utils.WavLMEncoder.from_pretrained()


def test_wavlm_refuses_audio_beyond_its_documented_maximum(encoder):
    assert wavlm.MAX_SECONDS == encoder.max_seconds == 60.0
    too_long = torch.zeros(1, 4000 * 121)  # 60.5 s at 8 kHz: refused before resampling or attention
    with pytest.raises(ValueError, match="the audio is 60.5 s long; WavLM accepts at most 60 s"):
        encoder(too_long, 8000)
    encoder.max_seconds = 0.5
    try:
        with pytest.raises(ValueError, match=r"^wavs\[1\]: the audio is 0.6 s long"):
            encoder.batch([torch.zeros(1, 8000), torch.zeros(1, 9600)], 16000)  # says which one, to skip it
    finally:
        encoder.max_seconds = wavlm.MAX_SECONDS


def test_device_names_are_normalised(monkeypatch):
    assert {pipeline.resolve_device(d) for d in ("cpu", "cpu:0", torch.device("cpu"))} == {"cpu"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        pipeline.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert {pipeline.resolve_device(d) for d in ("cuda", "cuda:1", torch.device("cuda", 1))} == {"cuda:1"}
    assert pipeline.resolve_device("cuda:0") == "cuda:0"


def test_one_shared_wavlm_per_device_whatever_its_spelling():
    first = dpslm_utils.UnitEncoder.from_pretrained(100, 600, device="cpu")
    second = dpslm_utils.UnitEncoder.from_pretrained(100, 600, device=torch.device("cpu:0"))
    assert first.encoder is second.encoder
