"""API keys: every route but the health probes answers 401 (OpenAI error shape) without the key (both deployments)."""
import httpx
import pytest

from tests.server.conftest import API_KEY, PROMPT

SAMPLE_ID = "video_" + "0" * 32


def routes(deployment):
    spec = httpx.get(deployment.url + "/openapi.json", headers=deployment.headers).json()
    for path, methods in spec["paths"].items():
        for method in methods:
            yield method.upper(), path.replace("{video_id}", SAMPLE_ID)
    yield "GET", "/openapi.json"
    yield "GET", "/docs"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEY}"},
                                     {"Authorization": "Bearer " + API_KEY[:-1]}], ids=["none", "wrong", "basic", "prefix"])
def test_missing_or_wrong_key_is_401_everywhere_but_health(deployment, headers):
    checked = 0
    for method, path in routes(deployment):
        r = httpx.request(method, deployment.url + path, headers=headers, json={"prompt": PROMPT} if method == "POST" else None)
        if path in ("/healthz", "/readyz"):
            assert r.status_code == 200, (method, path)
            continue
        assert r.status_code == 401, (method, path, r.status_code)
        assert r.json()["error"]["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
        checked += 1
    assert checked >= 8


def test_right_key_passes(deployment, client):
    assert client.get("/v1/videos").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert httpx.get(deployment.url + "/v1/videos/" + SAMPLE_ID, headers=deployment.headers).status_code == 404


def test_websocket_needs_the_key(deployment):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    spec = httpx.get(deployment.url + "/openapi.json", headers=deployment.headers).json()
    ws = "ws://127.0.0.1:%d/v1/realtime" % deployment.port
    with pytest.raises(InvalidStatus) as e:
        connect(ws, open_timeout=10).close()
    assert e.value.response.status_code in (401, 403)
    with pytest.raises(InvalidStatus):
        connect(ws + "?api_key=wrong", open_timeout=10).close()
    del spec
