"""A job's files, one contract for both backends (a local data directory; the cluster's shared storage
as a directory and as S3 on a real S3 API server): segments written block by block, the replay reader
an API node streams from, checkpoints saved / loaded / dropped, a job resumed by a fresh worker from
what is stored (fetch), the final MP4 and thumbnail as local files, and removal of everything.

`side.writer` is the worker's view, `side.reader` an API node's, `side.fresh()` another worker with
an empty scratch directory (in the embedded server all three are the one data directory)."""
import numpy as np
import pytest

from sana_serve.engine.rollout import Block
from sana_serve.engine.video import decode_video
from tests.contracts.backends import FRAMES_PER_BLOCK, HEIGHT, WIDTH, new_job_id, replay_reader

BAD_IDS = ("../x", "video_../../etc", "video_" + "g" * 32, "video_" + "0" * 31, "video_" + "0" * 32 + "/..", "",
           None)


def blocks(n: int):
    rng = np.random.default_rng(0)
    return [Block(index=i, frame_start=i * FRAMES_PER_BLOCK, num_blocks=n, seconds=0.1,
                  frames=rng.integers(0, 255, (FRAMES_PER_BLOCK, HEIGHT, WIDTH, 3), np.uint8)) for i in range(n)]


def test_unsafe_ids_are_refused_by_every_method(files_side):
    f = files_side.writer
    calls = [f.dir, f.load_checkpoint, f.drop_checkpoint, f.remove, f.fetch,
             lambda i: f.save_checkpoint(i, {"x": 1}), lambda i: f.local_file(i, "video.mp4"),
             lambda i: replay_reader(f, i)]
    for bad in BAD_IDS:
        for call in calls:
            with pytest.raises(ValueError):
                call(bad)


def test_checkpoints_save_load_replace_and_drop(files_side):
    job_id, other = new_job_id(), new_job_id()
    w = files_side.writer
    assert w.load_checkpoint(job_id) is None
    w.save_checkpoint(job_id, {"next_index": 1, "state": np.arange(3)})
    w.save_checkpoint(job_id, {"next_index": 3})  # replaced whole
    assert w.load_checkpoint(job_id) == {"next_index": 3}
    assert files_side.fresh().load_checkpoint(job_id) == {"next_index": 3}  # what another worker resumes from
    assert w.load_checkpoint(other) is None
    w.drop_checkpoint(job_id)
    w.drop_checkpoint(job_id)  # twice is fine
    assert w.load_checkpoint(job_id) is None and files_side.fresh().load_checkpoint(job_id) is None
    assert files_side.stored(job_id) == []


def test_a_job_written_read_resumed_by_a_fresh_worker_and_finished(files_side):
    job_id = new_job_id()
    made = blocks(3)
    assert replay_reader(files_side.reader, job_id) is None  # nothing stored yet
    assert files_side.reader.local_file(job_id, "video.mp4") is None

    first = files_side.output(files_side.writer, job_id)
    first.add_block(made[0])
    files_side.writer.save_checkpoint(job_id, {"next_index": 1})  # write order: segment, then checkpoint
    first.close()  # the worker dies here

    # An API node sees block 0, through what is stored.
    reader = replay_reader(files_side.reader, job_id)
    assert reader.refresh() == 1
    assert reader.event(0) == {"type": "video.block", "index": 0, "frame_start": 0, "frame_count": FRAMES_PER_BLOCK,
                               "num_blocks": 3, "progress": 33}
    assert decode_video(reader.init_segment() + reader.segment(0)).shape == (FRAMES_PER_BLOCK, HEIGHT, WIDTH, 3)

    # Another worker (an empty scratch directory in the cluster) resumes from what is stored.
    second = files_side.fresh()
    assert second.load_checkpoint(job_id) == {"next_index": 1}
    second.fetch(job_id)
    resumed = files_side.output(second, job_id)
    assert resumed.blocks_written == 1
    for b in made[1:]:
        resumed.add_block(b)
    resumed.finalize()
    second.drop_checkpoint(job_id)
    assert second.load_checkpoint(job_id) is None and files_side.writer.load_checkpoint(job_id) is None

    reader = replay_reader(files_side.reader, job_id)
    assert reader.refresh() == 3
    assert [reader.event(i)["frame_start"] for i in range(3)] == [0, FRAMES_PER_BLOCK, 2 * FRAMES_PER_BLOCK]
    stream = reader.init_segment() + b"".join(reader.segment(i) for i in range(3))
    video = files_side.reader.local_file(job_id, "video.mp4")
    assert video is not None and video.is_file()
    assert files_side.reader.local_file(job_id, "missing.png") is None
    decoded = decode_video(video.read_bytes())
    assert decoded.shape == (3 * FRAMES_PER_BLOCK, HEIGHT, WIDTH, 3)
    assert np.array_equal(decode_video(stream), decoded)  # the MP4 is frame for frame what viewers saw
    assert files_side.reader.local_file(job_id, "thumbnail.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_remove_takes_everything_of_one_job(files_side):
    job_id, kept = new_job_id(), new_job_id()
    for j in (job_id, kept):
        out = files_side.output(files_side.writer, j)
        for b in blocks(1):
            out.add_block(b)
        out.finalize()
        files_side.writer.save_checkpoint(j, {"next_index": 1})
    assert files_side.reader.local_file(job_id, "video.mp4") is not None
    assert {"video.mp4", "thumbnail.png", "rollout.ckpt"} <= set(files_side.stored(job_id))

    files_side.reader.remove(job_id)  # the API node deletes it
    assert files_side.stored(job_id) == []
    assert replay_reader(files_side.reader, job_id) is None
    assert files_side.reader.local_file(job_id, "video.mp4") is None
    assert files_side.fresh().load_checkpoint(job_id) is None
    files_side.reader.remove(job_id)  # twice is fine

    assert files_side.fresh().load_checkpoint(kept) == {"next_index": 1}  # the other job is untouched
    assert replay_reader(files_side.reader, kept).refresh() == 1
    assert files_side.reader.local_file(kept, "video.mp4") is not None
