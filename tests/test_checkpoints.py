"""Download cache: hash checks, atomic writes, corrupt-cache recovery, offline errors, random-tiny switch.

Downloads use ``file://`` URLs (urllib serves them like http), so no network is needed.
"""

import hashlib
from pathlib import Path

import pytest

from dpslm_utils import checkpoints
from dpslm_utils.registry import RemoteFile


def _published(tmp_path: Path, payload: bytes, name: str = "model-x.pt", prefix_len: int = 8):
    src = tmp_path / "server" / name
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(payload)
    return RemoteFile(src.as_uri(), hashlib.sha256(payload).hexdigest()[:prefix_len])


def _cache_listing():
    return sorted(p.name for p in checkpoints.cache_dir().iterdir())


def test_download_verifies_and_caches(tmp_path):
    remote = _published(tmp_path, b"weights" * 1000)
    path = checkpoints.download(remote, progress=False)
    assert path == checkpoints.cache_dir() / "model-x.pt"
    assert path.read_bytes() == b"weights" * 1000
    assert _cache_listing() == ["model-x.pt"]  # no temporary file left behind
    # A second call uses the cache: it works even when the source is gone.
    Path(remote.url.removeprefix("file://")).unlink()
    assert checkpoints.download(remote, progress=False) == path


def test_hash_mismatch_leaves_no_file(tmp_path):
    good = _published(tmp_path, b"real release")
    wrong = RemoteFile(good.url, "00000000")
    with pytest.raises(checkpoints.CheckpointError, match="does not start with 00000000"):
        checkpoints.download(wrong, progress=False)
    assert _cache_listing() == []


def test_corrupt_cached_file_is_fetched_again(tmp_path, capsys):
    remote = _published(tmp_path, b"A" * 5000)
    path = checkpoints.download(remote, progress=False)
    path.write_bytes(b"A" * 100)  # e.g. truncated by a crash in an older tool
    assert checkpoints.download(remote, progress=False).read_bytes() == b"A" * 5000
    assert "corrupt" in capsys.readouterr().err


def test_unreachable_url_names_url_and_manual_path(tmp_path):
    remote = RemoteFile((tmp_path / "missing" / "m-12345678.pt").as_uri(), "12345678")
    with pytest.raises(checkpoints.CheckpointError) as info:
        checkpoints.download(remote, progress=False)
    message = str(info.value)
    assert remote.url in message
    assert str(checkpoints.cache_dir() / "m-12345678.pt") in message
    assert "DPSLM_WEIGHTS=random-tiny" in message
    assert _cache_listing() == []


def test_file_placed_by_hand_is_accepted_without_network(tmp_path):
    payload = b"downloaded elsewhere"
    remote = RemoteFile("https://unreachable.invalid/m.pt", hashlib.sha256(payload).hexdigest()[:8])
    checkpoints.cache_dir().mkdir(parents=True, exist_ok=True)
    (checkpoints.cache_dir() / "m.pt").write_bytes(payload)
    assert checkpoints.download(remote, progress=False).read_bytes() == payload


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DPSLM_CACHE", str(tmp_path / "c"))
    assert checkpoints.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("DPSLM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert checkpoints.cache_dir() == tmp_path / "xdg" / "dpslm"


def test_weights_mode(monkeypatch):
    monkeypatch.delenv("DPSLM_WEIGHTS", raising=False)
    assert checkpoints.weights_mode() == "pretrained" and not checkpoints.using_random_weights()
    monkeypatch.setenv("DPSLM_WEIGHTS", "random-tiny")
    assert checkpoints.using_random_weights()
    monkeypatch.setenv("DPSLM_WEIGHTS", "random")
    with pytest.raises(ValueError, match="DPSLM_WEIGHTS='random' is not understood"):
        checkpoints.weights_mode()


def test_pretrained_path_in_random_tiny_mode_writes_then_removes(random_tiny, capsys):
    remote = RemoteFile("https://unreachable.invalid/model-abcdef12.pt", "abcdef12")
    seen = []

    with checkpoints.pretrained_path(remote, "unit_lm", k=3) as path:  # random_tiny.write_unit_lm
        seen.append(path)
        assert path.name == "model-abcdef12.pt"
        assert checkpoints.load_checkpoint(path)["model_args"]["vocab_size"] == 3 + 1
    assert not seen[0].exists()
    assert checkpoints.RANDOM_WEIGHTS_MESSAGE in capsys.readouterr().out


def test_save_atomically_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out" / "ckpt.pt"
    with pytest.raises(Exception):
        checkpoints.save_atomically({"f": lambda: None}, target)  # lambdas cannot be pickled
    assert list(target.parent.iterdir()) == []


def test_load_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        checkpoints.load_checkpoint(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip")
    with pytest.raises(checkpoints.CheckpointError, match="junk.pt is not a readable"):
        checkpoints.load_checkpoint(junk)


def test_require_keys_reports_the_family():
    with pytest.raises(checkpoints.CheckpointError, match=r"not a unit LM checkpoint.*\['cfg', 'model'\]"):
        checkpoints.require_keys({"cfg": {}, "model": {}}, ("model_args", "model_state_dict"), "x.pt", "unit LM")
