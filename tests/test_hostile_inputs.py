"""Inputs a library should survive: very long audio, device aliases that must share one model, and training
data, checkpoints and saves gone wrong (junk, truncated, crafted to run code, a full disk): errors that name the file."""

import errno
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import dpslm_utils
from dpslm_utils import pipeline, wavlm

from conftest import RunsCode

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


def test_wavlm_checks_a_waveform_once_mono_before_length(encoder):
    with pytest.warns(UserWarning, match="peak amplitude") as caught:  # checked once: one warning, not two
        encoder(torch.full((1, 16000), 12000.0), 16000)
    assert len(caught) == 1
    with pytest.raises(ValueError, match="expected mono audio, got 2 channels"):  # not "the audio is 61.0 s long"
        encoder(torch.zeros(2, 16000 * 61), 16000)


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


# -- training data, checkpoints and saves: errors that name the file -------------------------------


def _npy(path, array):
    np.save(path, array, allow_pickle=True)


def _unit_file_cases(tmp):
    """``(file, what the error must say after naming it)``: every way a unit file can be wrong."""
    table = lambda rows, dtype=np.int64: np.array(rows, dtype=dtype)  # noqa: E731
    cases = {
        "minus_one.npy": (table([[3, 2], [-1, 4]]), r"unit -1 \(at position 1\) is negative"),
        "minus_five.npy": (table([[-5, 2], [3, 4]]), r"unit -5 \(at position 0\) is negative"),
        "wraps_in_int32.npy": (table([[3, 2], [2**32 + 3, 4]]), r"unit 4294967299 \(at position 1\) is beyond k - 1 = 15"),
        "huge_unsigned.npy": (np.array([3, 2**64 - 1], dtype=np.uint64), r"unit 18446744073709551615 .* beyond k - 1 = 15"),
        "k.npy": (table([[3, 2], [16, 4]]), r"unit 16 \(at position 1\) is beyond k - 1 = 15: is k right\?"),
        "negative_duration.npy": (table([[3, 2], [4, -2]]), r"duration -2 \(row 1\) is below one frame"),
        "zero_duration.npy": (table([[3, 0]]), r"duration 0 \(row 0\) is below one frame"),
        "huge_duration.npy": (table([[3, 2], [4, 10**12]]), r"its durations reach 1000000000000 frames .* are the durations corrupt"),
        "overflowing_durations.npy": (table([[3, 2**62], [4, 2**62], [5, 2**62]]), "its durations reach 4611686018427387904 frames"),
        "floats.npy": (np.array([1.0, 2.0]), "units must be integers, found float64"),
        "objects.npy": (np.array([1, "u2"], dtype=object), "is not a readable .npy array: Object arrays cannot be loaded"),
    }
    for name, (array, _) in cases.items():
        _npy(tmp / name, array)
    (tmp / "junk.npy").write_bytes(b"these are not the units you are looking for")
    (tmp / "empty.npy").write_bytes(b"")
    np.save(tmp / "whole.npy", np.arange(100))
    (tmp / "truncated.npy").write_bytes((tmp / "whole.npy").read_bytes()[:200])
    (tmp / "huge_name.txt").write_text("u1 u1 u99999999999999999999999 u2")
    (tmp / "deduplicated.txt").write_text(" ".join(f"u{i % 7}" for i in range(60)))  # as `dpslm encode` writes .txt
    return [(name, message) for name, (_, message) in cases.items()] + [
        ("junk.npy", "is not a .npy file"), ("empty.npy", "is not a .npy file"),
        ("truncated.npy", "is not a readable .npy array: Failed to read all data"),
        ("huge_name.txt", r"unit 99999999999999999999999 \(at position 2\) is beyond k - 1 = 15"),
        ("deduplicated.txt", r"holds deduplicated units \(no unit repeats in 60 units\).*--format npy"),
    ]  # fmt: skip


def test_unit_files_are_checked_as_they_are_read_naming_the_file_and_the_value(tmp_path):
    from dpslm_utils import datasets

    for name, message in _unit_file_cases(tmp_path):
        with pytest.raises(ValueError, match=f"^{re.escape(str(tmp_path / name))}:? {message}"):
            datasets.load_frame_units(tmp_path / name, k=16)
    framewise = " ".join(f"u{u}" for u in [3, 3, 7] * 20)  # 60 framewise units with repeats: read as they are
    (tmp_path / "framewise.txt").write_text(framewise)
    assert datasets.load_frame_units(tmp_path / "framewise.txt", k=16).tolist() == [3, 3, 7] * 20
    with pytest.raises(ValueError, match=r"unit 2000000 .* beyond the largest unit id allowed \(1048575\)"):
        _npy(tmp_path / "big.npy", np.array([2_000_000]))
        datasets.load_frame_units(tmp_path / "big.npy")  # without k


def test_codec_files_are_checked_and_never_run_code(tmp_path):
    from dpslm_utils import datasets

    _npy(tmp_path / "beyond.npy", np.array([5, 4096], dtype=np.int16))
    _npy(tmp_path / "negative.npy", np.array([5, -1], dtype=np.int16))
    torch.save(torch.tensor([1.0, 2.0]), tmp_path / "floats.pt")
    torch.save({"codes": RunsCode(tmp_path / "ran")}, tmp_path / "code.pt")
    torch.save(torch.arange(100), tmp_path / "whole.pt")
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:300])
    (tmp_path / "empty.pt").write_bytes(b"")
    cases = [("beyond.npy", r"codec token 4096 \(at position 1\) is beyond the last WavTokenizer code \(4095\)"),
             ("negative.npy", r"codec token -1 \(at position 1\) is negative"),
             ("floats.pt", "codec tokens must be an integer array, found torch.float32"),
             ("code.pt", "holds Python objects besides tensors and plain values: refused, as loading them could run code"),
             ("truncated.pt", "is not a readable PyTorch checkpoint"), ("empty.pt", "is empty")]  # fmt: skip
    for name, message in cases:
        with pytest.raises(ValueError, match=f"^{re.escape(str(tmp_path / name))}:? {message}"):
            datasets.load_codes(tmp_path / name)
    assert not (tmp_path / "ran").exists()
    assert datasets.load_codes(tmp_path / "whole.pt").tolist() == list(range(100))


def test_ellav_training_refuses_units_and_codes_it_would_turn_into_unk(tmp_path):
    from dpslm_utils import datasets

    (tmp_path / "units").mkdir()
    (tmp_path / "codes").mkdir()
    for i in range(4):
        datasets.save_units(tmp_path / "units" / f"u{i}.npy", [1, 2], [5, 5])
        np.save(tmp_path / "codes" / f"u{i}.npy", np.arange(8))
    datasets.save_units(tmp_path / "units" / "u3.npy", [1, 6], [5, 5])  # k = 6: unit 6 does not exist
    with pytest.raises(ValueError, match=r"u3.npy: unit 6 \(at position 1\) is beyond k - 1 = 5"):
        dpslm_utils.train_ellav(tmp_path / "units", tmp_path / "codes", tmp_path / "run", k=6, max_steps=1, progress=False)
    datasets.save_units(tmp_path / "units" / "u3.npy", [1, 2], [5, 5])
    np.save(tmp_path / "codes" / "u2.npy", np.array([0, 1, 2, 3, 4, 5, 6, 5000]))
    with pytest.raises(ValueError, match=r"u2.npy: codec token 5000 \(at position 7\) is beyond"):
        dpslm_utils.train_ellav(tmp_path / "units", tmp_path / "codes", tmp_path / "run", k=6, max_steps=1, progress=False)
    assert not (tmp_path / "run").exists()


def test_checkpoints_that_are_empty_truncated_or_run_code_are_named(tmp_path):
    from dpslm_utils.checkpoints import CheckpointError

    official = Path(__file__).parent / "fixtures" / "ulm_tiny.pt"
    data = official.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save({"model_args": RunsCode(tmp_path / "ran")}, tmp_path / "code.pt")
    for name, message in (("truncated.pt", "is not a readable PyTorch checkpoint"), ("empty.pt", "is empty"),
                          ("code.pt", "holds Python objects besides tensors and plain values: refused")):  # fmt: skip
        with pytest.raises(CheckpointError, match=f"^{re.escape(str(tmp_path / name))} {message}"):
            dpslm_utils.UnitLM.from_checkpoint(tmp_path / name)
    assert not (tmp_path / "ran").exists()


def test_a_full_disk_while_saving_names_the_file_and_leaves_no_half_file(tmp_path, monkeypatch):
    from dpslm_utils import checkpoints, datasets

    def full_disk(f, *args, **kwargs):
        f.write(b"\x93NUMPY half an array")
        raise OSError(errno.ENOSPC, "No space left on device")

    datasets.save_units(tmp_path / "u.npy", [1, 2], [3, 4])
    before = (tmp_path / "u.npy").read_bytes()
    monkeypatch.setattr(np, "save", full_disk)
    with pytest.raises(OSError, match=f"could not write {re.escape(str(tmp_path / 'u.npy'))}: No space left") as error:
        datasets.save_units(tmp_path / "u.npy", [5, 6], [7, 8])
    assert error.value.errno == errno.ENOSPC
    assert (tmp_path / "u.npy").read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["u.npy"]
    monkeypatch.setattr(torch, "save", lambda obj, f: full_disk(f))
    with pytest.raises(OSError, match=f"could not write {re.escape(str(tmp_path / 'm.pt'))}: No space left"):
        checkpoints.save_atomically({"x": torch.zeros(3)}, tmp_path / "m.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.npy"]
