"""The shared storage: a directory, and S3 against a real S3 API server on 127.0.0.1 (moto's
server mode, boto3 talking HTTP to it). A job written block by block through StoredJobOutput
is read back by StoredOutputReader and resumed from the storage alone by a fresh "worker"."""
from __future__ import annotations

import numpy as np
import pytest

from sana_serve.engine.rollout import Block
from sana_serve.engine.video import decode_video
from sana_serve.server.cluster.storage import DirStorage, StorageFiles, StoredJobOutput, open_storage
from sana_serve.server.jobs import new_job_id
from tests.cluster.conftest import s3_bucket


@pytest.fixture(params=["dir", "s3"])
def storage(request, tmp_path, monkeypatch):
    if request.param == "dir":
        return open_storage(str(tmp_path / "shared"))
    endpoint = request.getfixturevalue("s3_server")
    return open_storage(s3_bucket(endpoint, monkeypatch) + "/cluster/a", endpoint_url=endpoint)


def blocks(n: int, frames: int = 32):
    rng = np.random.default_rng(0)
    for i in range(n):
        yield Block(index=i, frame_start=i * frames, frames=rng.integers(0, 255, (frames, 64, 64, 3), np.uint8),
                    num_blocks=n, seconds=0.1)


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


def test_job_written_read_and_resumed_from_storage(storage, tmp_path):
    job_id = new_job_id()
    first = StorageFiles(storage, tmp_path / "worker-a")
    made = list(blocks(3))
    out = StoredJobOutput(first.dir(job_id), 64, 64, 16, 32, storage=storage)
    out.add_block(made[0])
    first.save_checkpoint(job_id, {"next": 1})  # write order: segment, then checkpoint
    out.close()  # worker a dies here

    # An API node sees block 0 only, through the storage.
    reader = first.replay_reader(job_id)
    assert reader.refresh() == 1 and reader.event(0)["frame_count"] == 32
    assert decode_video(reader.init_segment() + reader.segment(0)).shape == (32, 64, 64, 3)

    # Worker b (its own empty scratch) resumes from what the storage holds.
    second = StorageFiles(storage, tmp_path / "worker-b")
    assert second.load_checkpoint(job_id) == {"next": 1}
    second.fetch(job_id)
    resumed = StoredJobOutput(second.dir(job_id), 64, 64, 16, 32, storage=storage)
    assert resumed.blocks_written == 1
    for b in made[1:]:
        resumed.add_block(b)
    resumed.finalize()
    second.drop_checkpoint(job_id)
    assert second.load_checkpoint(job_id) is None

    reader = first.replay_reader(job_id)
    assert reader.refresh() == 3
    stream = reader.init_segment() + b"".join(reader.segment(i) for i in range(3))
    video = first.local_file(job_id, "video.mp4")  # a cached download for S3, the file itself for a directory
    assert video is not None and first.local_file(job_id, "missing.png") is None
    assert np.array_equal(decode_video(stream), decode_video(video.read_bytes()))
    assert decode_video(video.read_bytes()).shape == (96, 64, 64, 3)
    assert first.local_file(job_id, "thumbnail.png").read_bytes()[:4] == b"\x89PNG"

    first.remove(job_id)
    assert storage.list(f"{job_id}/") == [] and first.replay_reader(job_id) is None
