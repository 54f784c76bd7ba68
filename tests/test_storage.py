"""The one filesystem layer: the same calls on a local path and on a real S3 server (moto)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from facefuse import storage
from facefuse.errors import StorageError


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_bucket") + "/prefix"


def test_write_read_list_size_delete_round_trip(root: str) -> None:
    uri = storage.join(root, "a", "x.bin")
    assert not storage.exists(uri) and storage.size(uri) is None
    storage.write_bytes(uri, b"hello")
    storage.write_bytes(storage.join(root, "a", "y.bin"), b"hi")
    assert storage.read_bytes(uri) == b"hello" and storage.size(uri) == 5
    storage.write_bytes(uri, b"replaced")  # overwrite in place: whole new content
    assert storage.read_bytes(uri) == b"replaced"
    names = [(e.name, e.size) for e in storage.listing(storage.join(root, "a"))]
    assert names == [("x.bin", 8), ("y.bin", 2)]
    assert [e.name for e in storage.listing(root, recursive=True)] == ["a/x.bin", "a/y.bin"]
    assert storage.listing(storage.join(root, "nothing")) == []
    assert storage.delete(uri) and not storage.delete(uri) and not storage.exists(uri)
    storage.check_writable(root)


def test_local_write_goes_through_atomic_write_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "d" / "f.bin"
    storage.write_bytes(target, b"old")
    with pytest.raises(TypeError):
        storage.write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]
    assert storage.free_bytes(tmp_path / "not" / "yet") > 0


def test_endpoint_from_env_is_passed_to_pyarrow(s3_bucket: str, monkeypatch: pytest.MonkeyPatch,
                                                s3_server: str) -> None:
    _fs, path = storage.resolve(f"{s3_bucket}/k")
    assert path == f"{s3_bucket[5:]}/k"
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)
    storage.write_bytes(f"{s3_bucket}/k", b"1")  # found through the S3-specific variable too
    assert storage.read_bytes(f"{s3_bucket}/k") == b"1"


def test_missing_bucket_is_one_line_naming_uri_and_fix(s3_bucket: str) -> None:
    uri = s3_bucket + "-gone/p/x.bin"
    for call in (lambda: storage.write_bytes(uri, b"x"), lambda: storage.read_bytes(uri)):
        with pytest.raises(StorageError) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(uri) and "does not exist" in msg
        assert "create the bucket" in msg


def test_missing_credentials_is_one_line(s3_bucket: str, monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    with pytest.raises(StorageError) as err:
        storage.write_bytes(f"{s3_bucket}/x", b"x")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{s3_bucket}/x") and "AWS_ACCESS_KEY_ID" in msg


def test_unreachable_store_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(StorageError) as err:
        storage.check_writable("s3://bucket/prefix")
    msg = str(err.value)
    assert "\n" not in msg and "unreachable" in msg and "AWS_ENDPOINT_URL" in msg
    assert msg.startswith("s3://bucket/prefix")


def test_folders_download_and_uri_of_a_ray_filesystem(root: str, tmp_path: Path) -> None:
    storage.write_bytes(storage.join(root, "run", "checkpoint_2", "best", "model.pt"), b"w2")
    storage.write_bytes(storage.join(root, "run", "checkpoint_1", "best", "model.pt"), b"w1")
    storage.write_bytes(storage.join(root, "run", "snapshot.json"), b"{}")
    run = storage.join(root, "run")
    assert storage.folders(run) == [storage.join(run, "checkpoint_1"),
                                    storage.join(run, "checkpoint_2")]
    assert storage.folders(storage.join(root, "none")) == []
    # a folder and a file of the store, copied into a local folder (a local path is not copied)
    got = storage.download(storage.join(run, "checkpoint_2", "best"), tmp_path / "dl")
    assert (got / "model.pt").read_bytes() == b"w2"
    # what Ray hands back (filesystem, path inside it) names the same object
    path, fs = storage.ray_storage(run)
    assert (fs is None) == (not storage.is_remote(root))
    assert storage.exists(storage.uri_of(fs, f"{path}/snapshot.json"))


def test_mirrored_dir_pushes_changes_and_appended_bytes_only(root: str, tmp_path: Path) -> None:
    remote = storage.join(root, "state")
    first = storage.MirroredDir(remote, tmp_path / "a", append_only=("journal.jsonl",))
    first.pull()
    (tmp_path / "a" / "map.json").write_text('{"v": 1}')
    (tmp_path / "a" / "journal.jsonl").write_text("one\n")
    first.push(force=True)
    with open(tmp_path / "a" / "journal.jsonl", "a") as f:
        f.write("two\n")
    (tmp_path / "a" / "backlog.json").write_text("[]")
    first.push(force=True)
    parts = [e.name for e in storage.listing(storage.join(remote, "journal.jsonl.parts"))]
    assert parts == [f"{0:016d}", f"{4:016d}"]  # the appended bytes, not the whole file again
    (tmp_path / "a" / "backlog.json").unlink()  # an emptied backlog must not come back
    first.push(force=True)

    second = storage.MirroredDir(remote, tmp_path / "b", append_only=("journal.jsonl",))
    second.pull()
    assert (tmp_path / "b" / "journal.jsonl").read_text() == "one\ntwo\n"
    assert (tmp_path / "b" / "map.json").read_text() == '{"v": 1}'
    assert not (tmp_path / "b" / "backlog.json").exists()
    with open(tmp_path / "b" / "journal.jsonl", "a") as f:
        f.write("three\n")
    second.push(force=True)
    third = storage.MirroredDir(remote, tmp_path / "c", append_only=("journal.jsonl",))
    third.pull()
    assert (tmp_path / "c" / "journal.jsonl").read_text() == "one\ntwo\nthree\n"
