"""The shared storage under the cluster's job files: a directory, and S3 against a real S3 API server
on 127.0.0.1 (moto's server mode, boto3 talking HTTP to it). What the job files do on top of it (a
job written, replayed, resumed by a fresh worker, removed) is the files contract in
tests/contracts/test_job_files.py, run on both storages and on the embedded backend."""
from __future__ import annotations

import pytest

from sana_serve.server.cluster.storage import DirStorage, open_storage
from tests.cluster.conftest import s3_bucket


@pytest.fixture(params=["dir", "s3"])
def storage(request, tmp_path, monkeypatch):
    if request.param == "dir":
        return open_storage(str(tmp_path / "shared"))
    endpoint = request.getfixturevalue("s3_server")
    return open_storage(s3_bucket(endpoint, monkeypatch) + "/cluster/a", endpoint_url=endpoint)


def test_put_get_list_delete(storage):
    storage.put("video_x/segments/a.m4s", b"one")
    storage.put("video_x/segments/a.m4s", b"two")  # replaced whole
    storage.put("video_x/stream.json", b"{}")
    assert storage.get("video_x/segments/a.m4s") == b"two"
    assert sorted(storage.list("video_x/")) == ["segments/a.m4s", "stream.json"]
    assert storage.exists("video_x/stream.json") and not storage.exists("video_x/nothing")
    with pytest.raises(FileNotFoundError):
        storage.get("video_x/nothing")
    storage.delete("video_x/stream.json")
    storage.delete("video_x/stream.json")  # no error twice
    storage.delete_prefix("video_x/")
    assert storage.list("video_x/") == [] and storage.list("never/") == []
    if isinstance(storage, DirStorage):
        with pytest.raises(ValueError):
            storage.put("../escape", b"x")
