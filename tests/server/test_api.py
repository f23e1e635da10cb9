"""The HTTP API against both deployments (`serve`, and `api` + `worker`): the official openai SDK end to end,
validation, paging, Range."""
import warnings

import numpy as np
import openai
import pytest

from sana_serve.engine.video import decode_video
from tests.server.conftest import API_KEY, LIMITS, PROMPT, finished, wait_for

warnings.filterwarnings("ignore", category=DeprecationWarning)  # the SDK marks the Videos API deprecated


@pytest.fixture
def sdk(deployment, client):  # `client` cleans up the jobs afterwards
    return openai.OpenAI(base_url=deployment.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


def test_openai_sdk_end_to_end(sdk, deployment):
    video = sdk.videos.create(prompt=PROMPT, seconds="2", size="64x64", model="shapes-tiny",
                              extra_body={"seed": 7, "num_inference_steps": 1})  # the SDK sends multipart
    assert video.object == "video" and video.id.startswith("video_")
    assert video.status in ("queued", "in_progress") and video.size == "64x64" and video.seconds == "2"
    assert video.model == "shapes-tiny" and video.prompt == PROMPT
    assert video.to_dict()["seed"] == 7  # extensions travel as extra form fields
    done = sdk.videos.poll(video.id, poll_interval_ms=100)
    assert done.status == "completed", done
    assert done.progress == 100 and done.completed_at >= done.created_at and done.expires_at > done.completed_at
    assert done.error is None

    frames = decode_video(sdk.videos.download_content(video.id).content)
    assert frames.shape == (2 * 16, 64, 64, 3)  # exactly seconds x fps
    thumbnail = sdk.videos.download_content(video.id, variant="thumbnail").content
    assert thumbnail.startswith(b"\x89PNG")

    # The stored raw frames are the engine's output; the MP4 is their (lossy, yuv420p) encoding:
    # per-pixel noise from untrained weights does not survive chroma subsampling, the averages do.
    raw = np.concatenate([np.load(p) for p in sorted((deployment.job_dir(video.id) / "frames").glob("*.npy"))])
    assert raw.shape == frames.shape
    assert np.abs(raw.mean(axis=(1, 2)) - frames.mean(axis=(1, 2))).max() < 4

    listed = [v.id for v in sdk.videos.list(limit=1)]  # auto-pagination follows last_id / has_more
    assert video.id in listed

    deleted = sdk.videos.delete(video.id)
    assert deleted.id == video.id and deleted.deleted and deleted.object == "video.deleted"
    with pytest.raises(openai.NotFoundError):
        sdk.videos.retrieve(video.id)
    assert not deployment.job_dir(video.id).exists()


def test_sdk_defaults_model_and_number_seconds(client):
    r = client.post("/v1/videos", json={"prompt": PROMPT, "seconds": 1, "num_inference_steps": 1, "seed": 1})
    assert r.status_code == 200, r.text
    v = r.json()
    assert v["model"] == "shapes-tiny" and v["seconds"] == "1" and v["num_blocks"] == 1 and v["seed"] == 1
    v = wait_for(client, v["id"], finished)
    assert v["status"] == "completed" and v["progress"] == 100


def test_list_paging_and_order(client):
    ids = []
    for i in range(3):
        r = client.post("/v1/videos", json={"prompt": PROMPT, "seconds": 0.25, "num_inference_steps": 1, "seed": i})
        assert r.status_code == 200, r.text
        ids.append(r.json()["id"])
    page = client.get("/v1/videos", params={"limit": 2, "order": "asc"}).json()
    assert page["object"] == "list" and [v["id"] for v in page["data"]] == ids[:2]
    assert page["has_more"] and page["first_id"] == ids[0] and page["last_id"] == ids[1]
    rest = client.get("/v1/videos", params={"limit": 2, "order": "asc", "after": page["last_id"]}).json()
    assert [v["id"] for v in rest["data"]] == ids[2:] and not rest["has_more"]
    desc = client.get("/v1/videos").json()
    assert [v["id"] for v in desc["data"]] == ids[::-1]
    for bad in ({"limit": 0}, {"limit": 101}, {"order": "sideways"}, {"after": "nope"}):
        r = client.get("/v1/videos", params=bad)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["param"] == next(iter(bad))


def test_content_not_ready_then_range(client):
    r = client.post("/v1/videos", json={"prompt": PROMPT, "seconds": 4, "num_inference_steps": 2, "seed": 3})
    vid = r.json()["id"]
    early = client.get(f"/v1/videos/{vid}/content")
    if early.status_code == 404:  # (the job may, rarely, already be done on a fast machine)
        err = early.json()["error"]
        assert err["code"] == "video_not_ready" and "not ready" in err["message"]
    wait_for(client, vid, finished)
    whole = client.get(f"/v1/videos/{vid}/content")
    assert whole.status_code == 200 and whole.headers["content-type"] == "video/mp4"
    assert whole.headers.get("accept-ranges") == "bytes"
    part = client.get(f"/v1/videos/{vid}/content", headers={"Range": "bytes=100-299"})
    assert part.status_code == 206 and part.content == whole.content[100:300]
    assert part.headers["content-range"] == f"bytes 100-299/{len(whole.content)}"
    tail = client.get(f"/v1/videos/{vid}/content", headers={"Range": "bytes=-50"})
    assert tail.status_code == 206 and tail.content == whole.content[-50:]
    assert client.get(f"/v1/videos/{vid}/content", params={"variant": "spritesheet"}).json()["error"]["param"] == "variant"
    assert client.get(f"/v1/videos/{vid}/content", params={"variant": "poster"}).status_code == 400


@pytest.mark.parametrize("body, param", [
    ({"prompt": PROMPT, "size": "128x128"}, "size"),
    ({"prompt": PROMPT, "size": "wide"}, "size"),
    ({"prompt": PROMPT, "seconds": "7"}, "seconds"),  # above the config's max_seconds
    ({"prompt": PROMPT, "seconds": 0}, "seconds"),
    ({"prompt": PROMPT, "seconds": -1}, "seconds"),
    ({"prompt": PROMPT, "seconds": "four"}, "seconds"),
    ({"prompt": PROMPT, "seconds": "nan"}, "seconds"),
    ({"prompt": PROMPT, "seconds": 0.01}, "seconds"),  # shorter than one frame
    ({"prompt": PROMPT, "num_inference_steps": 0}, "num_inference_steps"),
    ({"prompt": PROMPT, "num_inference_steps": LIMITS["max_steps"] + 1}, "num_inference_steps"),
    ({"prompt": PROMPT, "num_inference_steps": "many"}, "num_inference_steps"),
    ({"prompt": PROMPT, "guidance_scale": 0.5}, "guidance_scale"),
    ({"prompt": PROMPT, "guidance_scale": 100}, "guidance_scale"),
    ({"prompt": "x" * (LIMITS["max_prompt_chars"] + 1)}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": 42}, "prompt"),
    ({"seconds": 2}, "prompt"),
    ({"prompt": PROMPT, "fps": 30}, "fps"),
    ({"prompt": PROMPT, "seed": -1}, "seed"),
    ({"prompt": PROMPT, "model": "sora-2"}, "model"),
    ({"prompt": PROMPT, "priority": 1000}, "priority"),
])
def test_validation_names_the_field(client, body, param):
    r = client.post("/v1/videos", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]
    if not isinstance(body.get("prompt", ""), str):
        return  # in a form every value is a string, so prompt=42 is the valid prompt "42"
    # The same through multipart (what the SDK sends): every value is a string there.
    r = client.post("/v1/videos", files={k: (None, str(v)) for k, v in body.items()})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_malformed_bodies_are_4xx(client):
    assert client.post("/v1/videos", content=b"{not json", headers={"content-type": "application/json"}).status_code == 400
    assert client.post("/v1/videos", json=[1, 2]).status_code == 400
    assert client.post("/v1/videos", content=b"prompt", headers={"content-type": "text/plain"}).status_code == 415
    r = client.post("/v1/videos", content=b"x" * 70_000, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    r = client.post("/v1/videos", data={"prompt": PROMPT}, files={"input_reference": ("a.png", b"\x89PNG", "image/png")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input_reference"
    for path in ("/v1/videos/video_0123", "/v1/videos/../../etc/passwd", "/v1/videos/video_" + "0" * 32):
        assert client.get(path).status_code == 404
        assert client.delete(path).status_code in (404, 405)
    assert client.get("/v1/videos/video_" + "0" * 32 + "/content").json()["error"]["code"] == "not_found"


def test_health_readiness_metrics(deployment, client):
    import httpx

    assert httpx.get(deployment.url + "/healthz").json()["status"] == "ok"
    assert httpx.get(deployment.url + "/readyz").status_code == 200
    text = deployment.metrics()
    for name in ("sana_queue_depth", "sana_jobs{", "sana_block_seconds_bucket", "sana_frames_per_second",
                 "sana_model_loaded 1.0"):
        assert name in text, name
    assert client.get("/openapi.json").json()["paths"]["/v1/videos"]["post"]["requestBody"]["content"].keys() \
        >= {"application/json", "multipart/form-data"}
