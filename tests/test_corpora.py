"""Corpus download: verified, resumable, atomic, unpacked; a clear message without network."""

import hashlib
import io
import tarfile
import zipfile

import pytest

from dpslm_utils import cli, corpora
from dpslm_utils.corpora import Corpus, DownloadError, download_corpus


def make_tar(path, files):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def archive(tmp_path):
    (tmp_path / "src").mkdir()
    path = make_tar(tmp_path / "src" / "set.tar.gz", {"LibriSpeech/dev-clean/1/1/1-1-0000.flac": b"audio" * 1000, "LibriSpeech/README.TXT": b"hi"})
    return path, hashlib.md5(path.read_bytes()).hexdigest()


def test_download_verifies_and_unpacks_from_a_file_url(archive, tmp_path):
    path, md5 = archive
    corpus = Corpus(path.as_uri(), md5, "test set")
    got = download_corpus(corpus, tmp_path / "data", progress=False)
    assert got == tmp_path / "data" / "set.tar.gz" and got.read_bytes() == path.read_bytes()
    assert (tmp_path / "data" / "LibriSpeech" / "README.TXT").read_bytes() == b"hi"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [".set.tar.gz.unpacked", "LibriSpeech", "set.tar.gz"]


def test_a_corrupt_download_is_deleted_and_reported(archive, tmp_path):
    path, _ = archive
    with pytest.raises(DownloadError, match="does not have the published MD5 0{32}; it was deleted"):
        download_corpus(Corpus(path.as_uri(), "0" * 32, "x"), tmp_path / "data", progress=False)
    assert list((tmp_path / "data").iterdir()) == []


class RangeServer:
    """A fake urlopen that serves ``data``, honouring ``Range: bytes=N-`` with status 206."""

    def __init__(self, data):
        self.data, self.ranges = data, []

    def __call__(self, request, timeout=None):
        header = request.get_header("Range")
        self.ranges.append(header)
        start = int(header.split("=")[1].rstrip("-")) if header else 0
        response = io.BytesIO(self.data[start:])
        response.status = 206 if header else 200
        response.headers = {"Content-Length": str(len(self.data) - start)}
        return response


def test_an_interrupted_download_resumes_from_its_part_file(archive, tmp_path):
    path, md5 = archive
    data = path.read_bytes()
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "set.tar.gz.part").write_bytes(data[:100])  # what an interrupted run left
    server = RangeServer(data)
    download_corpus(Corpus("https://example.org/set.tar.gz", md5, "x"), folder, progress=False, urlopen=server)
    assert server.ranges == ["bytes=100-"]
    assert (folder / "set.tar.gz").read_bytes() == data and not (folder / "set.tar.gz.part").exists()


def test_without_network_the_message_names_the_url_and_where_to_put_the_file(tmp_path):
    missing = (tmp_path / "nowhere" / "sLM21.dataset.zip").as_uri()
    with pytest.raises(DownloadError) as error:
        download_corpus(Corpus(missing, None, "x"), tmp_path / "data", progress=False)
    message = str(error.value)
    assert missing in message and str(tmp_path / "data" / "sLM21.dataset.zip") in message
    assert not (tmp_path / "data" / "sLM21.dataset.zip").exists()


def test_a_failure_to_write_is_reported_as_such_not_as_no_network(archive, tmp_path):
    path, md5 = archive
    folder = tmp_path / "data"
    (folder / "set.tar.gz.part").mkdir(parents=True)  # the partial download cannot be written
    with pytest.raises(DownloadError, match=r"could not save set.tar.gz.part in .*data") as error:
        download_corpus(Corpus(path.as_uri(), md5, "x"), folder, progress=False)
    assert "network" not in str(error.value) and not (folder / "set.tar.gz").exists()


def test_a_file_placed_by_hand_is_used_and_unsafe_archives_are_refused(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    with zipfile.ZipFile(folder / "evil.zip", "w") as z:
        z.writestr("../outside.txt", "x")
    with pytest.raises(DownloadError, match="unsafe path '../outside.txt'"):
        download_corpus(Corpus("https://unreachable.invalid/evil.zip", None, "x"), folder, progress=False)
    assert not (tmp_path / "outside.txt").exists() and not (folder / ".evil.zip.unpacked").exists()


def test_download_command(archive, tmp_path, monkeypatch, capsys):
    path, md5 = archive
    monkeypatch.setitem(corpora.CORPORA, "librispeech-dev-clean", Corpus(path.as_uri(), md5, "x"))
    monkeypatch.setenv("DPSLM_DATA", str(tmp_path / "env"))
    assert cli.main(["download", "librispeech-dev-clean", "--quiet"]) == 0
    assert (tmp_path / "env" / "LibriSpeech" / "README.TXT").is_file()
    assert "unpacked into" in capsys.readouterr().out
    monkeypatch.setitem(corpora.CORPORA, "abx-items", Corpus((tmp_path / "no.tgz").as_uri(), None, "x"))
    assert cli.main(["download", "abx-items", "--dir", str(tmp_path / "d"), "--quiet"]) == 1
    assert "place it at" in capsys.readouterr().err


def test_two_subsets_unpack_into_one_folder_and_keep_what_was_there(tmp_path):
    """dev-clean then test-clean (both unpack to LibriSpeech/) into a folder that already holds another subset."""
    folder = tmp_path / "data"
    (folder / "LibriSpeech" / "train-clean-100" / "1").mkdir(parents=True)
    (folder / "LibriSpeech" / "train-clean-100" / "1" / "1-1-0000.flac").write_bytes(b"mine")
    (folder / "LibriSpeech" / "notes.txt").write_text("the user's own file")
    shared = {"LibriSpeech/README.TXT": b"the same in every subset"}
    for subset in ("dev-clean", "test-clean"):
        archive = make_tar(tmp_path / f"{subset}.tar.gz", {**shared, f"LibriSpeech/{subset}/2/2/2-2-0000.flac": subset.encode()})
        download_corpus(Corpus(archive.as_uri(), None, subset), folder, progress=False)
    root = folder / "LibriSpeech"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == [
        "README.TXT", "dev-clean/2/2/2-2-0000.flac", "notes.txt", "test-clean/2/2/2-2-0000.flac",
        "train-clean-100/1/1-1-0000.flac"]
    assert (root / "dev-clean/2/2/2-2-0000.flac").read_bytes() == b"dev-clean"
    assert (root / "train-clean-100/1/1-1-0000.flac").read_bytes() == b"mine"
    assert not [p for p in folder.iterdir() if p.name.endswith(".unpacking")]


def test_a_file_with_other_content_refuses_the_whole_extraction(tmp_path):
    folder = tmp_path / "data"
    (folder / "LibriSpeech").mkdir(parents=True)
    (folder / "LibriSpeech" / "README.TXT").write_text("edited by the user")
    archive = make_tar(tmp_path / "dev-clean.tar.gz", {"LibriSpeech/README.TXT": b"original",
                                                       "LibriSpeech/dev-clean/1.flac": b"audio"})
    with pytest.raises(DownloadError, match=r"README.TXT exists with other content.*Nothing in .*data was changed"):
        download_corpus(Corpus(archive.as_uri(), None, "x"), folder, progress=False)
    assert (folder / "LibriSpeech" / "README.TXT").read_text() == "edited by the user"
    assert sorted(p.name for p in folder.iterdir()) == ["LibriSpeech", "dev-clean.tar.gz"]  # no subset, no marker
    assert sorted(p.name for p in (folder / "LibriSpeech").iterdir()) == ["README.TXT"]
    (folder / "LibriSpeech" / "README.TXT").unlink()
    (folder / "LibriSpeech" / "dev-clean").write_text("a file where the archive has a folder")
    with pytest.raises(DownloadError, match="dev-clean exists and is not a folder"):
        download_corpus(Corpus(archive.as_uri(), None, "x"), folder, progress=False)
