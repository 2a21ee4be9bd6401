"""Download cache: hash checks, atomic writes, corrupt-cache recovery, offline/disk errors, random-tiny switch.

Downloads use ``file://`` URLs (urllib serves them like http), so no network is needed.
"""

import errno
import hashlib
import os
import subprocess
import sys
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
    assert _cache_listing() == [".model-x.pt.verified", "model-x.pt"]  # no temporary file left behind
    # A second call uses the cache: it works even when the source is gone.
    Path(remote.url.removeprefix("file://")).unlink()
    assert checkpoints.download(remote, progress=False) == path


def test_hash_mismatch_leaves_no_file(tmp_path):
    good = _published(tmp_path, b"real release")
    wrong = RemoteFile(good.url, "00000000")
    with pytest.raises(checkpoints.CheckpointError, match="does not start with 00000000"):
        checkpoints.download(wrong, progress=False)
    assert _cache_listing() == []


def test_corrupt_cached_file_is_fetched_again(tmp_path, caplog):
    remote = _published(tmp_path, b"A" * 5000)
    path = checkpoints.download(remote, progress=False)
    path.write_bytes(b"A" * 100)  # e.g. truncated by a crash in an older tool
    assert checkpoints.download(remote, progress=False).read_bytes() == b"A" * 5000
    assert "corrupt" in caplog.text


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


def test_pretrained_path_in_random_tiny_mode_writes_then_removes(random_tiny, caplog, monkeypatch):
    monkeypatch.setattr(checkpoints, "_random_weights_announced", False)  # as in a new process
    remote = RemoteFile("https://unreachable.invalid/model-abcdef12.pt", "abcdef12")
    seen = []

    with checkpoints.pretrained_path(remote, "unit_lm", k=3) as path:  # random_tiny.write_unit_lm
        seen.append(path)
        assert path.name == "model-abcdef12.pt"
        assert checkpoints.load_checkpoint(path)["model_args"]["vocab_size"] == 3 + 1
    assert not seen[0].exists()
    assert checkpoints.RANDOM_WEIGHTS_MESSAGE in caplog.text


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


def test_sha256_is_checked_at_download_and_again_only_when_size_or_mtime_change(tmp_path, monkeypatch):
    hashed = []
    real_sha256 = checkpoints.sha256_of
    monkeypatch.setattr(checkpoints, "sha256_of", lambda path: hashed.append(path) or real_sha256(path))
    remote = _published(tmp_path, b"B" * 4000)
    path = checkpoints.download(remote, progress=False)  # hashed while streaming, not read back
    for _ in range(3):
        assert checkpoints.download(remote, progress=False) == path
    assert hashed == []
    path.write_bytes(b"C" * 4000)  # same size, new mtime: hashed again, found corrupt, fetched again
    assert checkpoints.download(remote, progress=False).read_bytes() == b"B" * 4000
    assert hashed == [path]
    (checkpoints.cache_dir() / ".model-x.pt.verified").unlink()  # no record (a file placed by hand): hashed once
    checkpoints.download(remote, progress=False)
    checkpoints.download(remote, progress=False)
    assert hashed == [path, path]


def test_two_processes_cleaning_one_corrupt_file_do_not_crash(tmp_path, monkeypatch):
    remote = _published(tmp_path, b"D" * 3000)
    path = checkpoints.download(remote, progress=False)
    path.write_bytes(b"corrupt")
    real_sha256 = checkpoints.sha256_of

    def hash_then_lose_the_race(p):  # the other process deletes the file right after we hashed it
        digest = real_sha256(p)
        Path(p).unlink()
        return digest

    monkeypatch.setattr(checkpoints, "sha256_of", hash_then_lose_the_race)
    assert checkpoints.download(remote, progress=False).read_bytes() == b"D" * 3000


def _failing_temporary(error):
    def create(path):
        raise error

    return create


def test_unwritable_cache_is_reported_as_such(tmp_path, monkeypatch):
    remote = _published(tmp_path, b"E" * 100)
    monkeypatch.setattr(checkpoints, "_new_temporary",
                        _failing_temporary(PermissionError(errno.EACCES, "Permission denied")))
    with pytest.raises(checkpoints.CheckpointError, match="cannot write to the cache directory .*Permission denied.*DPSLM_CACHE") as info:
        checkpoints.download(remote, progress=False)
    assert "network" not in str(info.value)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_disk_full_during_download_is_reported_as_such(tmp_path, monkeypatch):
    remote = _published(tmp_path, b"F" * 300_000)
    real_new_temporary = checkpoints._new_temporary

    def on_a_full_disk(path):  # the temporary file is a link to /dev/full: every write fails with ENOSPC
        tmp = real_new_temporary(path)
        tmp.unlink()
        tmp.symlink_to("/dev/full")
        return tmp

    monkeypatch.setattr(checkpoints, "_new_temporary", on_a_full_disk)
    with pytest.raises(checkpoints.CheckpointError, match="could not save model-x.pt in .*No space left on device") as info:
        checkpoints.download(remote, progress=False)
    assert "network" not in str(info.value)
    assert _cache_listing() == []


def test_written_files_get_the_umask_permissions_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        checkpoints.write_atomically(tmp_path / "a.txt", lambda tmp: tmp.write_text("x"))
        checkpoints.save_atomically({"x": 1}, tmp_path / "b.pt")
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {"a.txt": 0o644, "b.pt": 0o644}


def test_a_directory_is_not_reported_as_missing(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        checkpoints.load_checkpoint(tmp_path)


def test_random_weights_notice_is_one_line_once_per_process_and_can_be_silenced():
    load_three = "dp.UnitLM.from_pretrained(100, 600); dp.ELLAV.from_pretrained(100, 600); dp.load_codebook(100)\n"
    env = {**os.environ, "DPSLM_WEIGHTS": "random-tiny", "OMP_NUM_THREADS": "1"}
    shown, silenced = (
        subprocess.run([sys.executable, "-c", "import logging, dpslm_utils as dp\n" + setup + load_three + load_three],
                       env=env, capture_output=True, text=True, timeout=180)
        for setup in ("", "logging.getLogger('dpslm_utils').setLevel(logging.ERROR)\n"))
    assert shown.returncode == silenced.returncode == 0, shown.stderr + silenced.stderr
    notices = [line for line in shown.stderr.splitlines() if "RANDOM" in line]
    assert len(notices) == 1 and checkpoints.RANDOM_WEIGHTS_MESSAGE in notices[0] and shown.stdout == ""
    assert "RANDOM" not in silenced.stderr
