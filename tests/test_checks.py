"""One definition of an integer argument, a seed and sampling settings, used by every public entry point."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import dpslm_utils
from dpslm_utils import checks, ellav, transformer
from dpslm_utils.checks import check_count, check_file, check_int, check_real, check_sampling, check_seed


def test_check_int_accepts_python_and_numpy_integers_only():
    for value in (3, np.int64(3), np.int32(3), np.uint8(3)):
        result = check_int("n", value, minimum=1)
        assert result == 3 and type(result) is int
    for value in (True, 2.0, np.float64(2.0), "2", torch.tensor(2), None):
        with pytest.raises(TypeError, match="n must be an integer"):
            check_int("n", value)
    with pytest.raises(ValueError, match="n must be an integer from 1 to 5, got 6"):
        check_int("n", 6, 1, 5)
    with pytest.raises(ValueError, match="must be an integer >= 1, got 0"):
        check_count("max_tokens", 0)


def test_check_real_and_sampling_name_the_argument():
    assert check_real("x", np.float32(0.5), 0.0, 1.0) == 0.5
    for value, error, message in [("1", TypeError, "temperature must be a number"), (math.inf, ValueError, "temperature must be finite"),
                                  (math.nan, ValueError, "temperature must be finite"), (-0.5, ValueError, "temperature must be >= 0")]:  # fmt: skip
        with pytest.raises(error, match=message):
            check_sampling(value, 1.0)
    with pytest.raises(ValueError, match="top_p must be from 0 to 1, got 1.5"):
        check_sampling(1.0, 1.5)
    with pytest.raises(TypeError, match="top_k must be an integer"):
        check_sampling(1.0, 1.0, 2.5)
    check_sampling(np.float64(0.7), np.float32(0.9), np.int64(5))


def test_check_seed():
    assert check_seed(None) is None and check_seed(np.int64(7)) == 7 and check_seed(checks.MAX_SEED) == checks.MAX_SEED
    with pytest.raises(TypeError, match="seed must be an integer, got '0'"):
        check_seed("0")
    for bad in (-1, 2**70):
        with pytest.raises(ValueError, match="seed must be an integer from 0 to 9223372036854775807"):
            check_seed(bad)


def test_check_file_tells_a_directory_from_a_missing_file(tmp_path):
    with pytest.raises(IsADirectoryError, match="checkpoint .* is a directory, not a file"):
        check_file(tmp_path, "checkpoint")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_file(tmp_path / "x.pt", "checkpoint")
    (tmp_path / "x.pt").write_bytes(b"")
    assert check_file(str(tmp_path / "x.pt")) == tmp_path / "x.pt"


def test_the_checks_live_in_one_module():
    assert ellav.as_units is checks.as_units and ellav.check_count is checks.check_count
    assert not hasattr(transformer, "check_count") and not hasattr(transformer, "check_sampling")
    assert "from .ulm" not in Path(ellav.__file__).read_text()  # ELLA-V no longer reaches into the unit LM
    assert checks.as_units([np.int64(3), 1], k=5).tolist() == [3, 1]


@pytest.fixture(scope="module")
def ulm():
    with pytest.MonkeyPatch.context() as m:
        m.setenv("DPSLM_WEIGHTS", "random-tiny")
        return dpslm_utils.UnitLM.from_pretrained(100, 600)


def test_generation_accepts_numpy_integers(ulm):
    expected = ulm.generate([1, 2], 5, n=2, top_k=3, seed=4)
    got = ulm.generate(np.array([1, 2]), np.int64(5), n=np.int64(2), top_k=np.int32(3), seed=np.int64(4))
    assert all(torch.equal(a, b) for a, b in zip(expected, got))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [({"n": 2.0}, TypeError, "n must be an integer"), ({"seed": "0"}, TypeError, "seed must be an integer"),
     ({"seed": 2**70}, ValueError, "seed must be an integer from 0"), ({"temperature": "1"}, TypeError, "temperature"),
     ({"temperature": math.inf}, ValueError, "temperature must be finite"),
     ({"max_new_units": 10**9}, ValueError, "max_new_units must be an integer from 1 to 65536")],
)  # fmt: skip
def test_bad_generation_arguments_name_the_argument(ulm, kwargs, error, message):
    with pytest.raises(error, match=message):
        ulm.generate([1, 2], **{"max_new_units": 3, **kwargs})


@pytest.mark.parametrize(
    "method, kwargs, error, message",
    [("synthesize", {"units": [1, 2], "n": 2.0}, TypeError, "n must be an integer"),
     ("synthesize", {"units": [1, 2], "seed": 2**70}, ValueError, "seed must be"),
     ("synthesize", {"units": [1, 2], "max_codec_tokens_per_phone": -1}, ValueError, "max_codec_tokens_per_phone"),
     ("resynthesize", {"wav": None, "sample_rate": 16000, "n": 0}, ValueError, "n must be an integer >= 1"),
     ("continue_speech", {"wav": None, "sample_rate": 16000, "max_new_units": 10**9}, ValueError, "max_new_units"),
     ("continue_speech", {"wav": None, "sample_rate": 16000, "vocoder_top_p": 2}, ValueError, "vocoder_top_p")],
)  # fmt: skip
def test_the_pipeline_checks_its_arguments_before_any_work(method, kwargs, error, message):
    model = dpslm_utils.DPSLM.__new__(dpslm_utils.DPSLM)  # no stages: a check that came late would crash differently
    with pytest.raises(error, match=message):
        getattr(model, method)(**kwargs)
