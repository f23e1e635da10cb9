import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Fixtures that start processes (a `sana-serve` server or cluster, redis-server). A test that uses
# one is marked `processes`, as are tests marked so by hand (they start processes themselves);
# `make test-fast` runs the rest: `pytest -m "not processes"`.
PROCESS_FIXTURES = frozenset({"server", "server_client", "deployment", "cluster_deployment", "servers", "redis_server",
                              "contract_redis", "cluster"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.processes)


@pytest.fixture(scope="session")
def engine():
    """The default config's engine (built-in model), loaded once for the whole run."""
    from sana_serve.engine import load_engine

    return load_engine("shapes-tiny", device="cpu")


@pytest.fixture(scope="session")
def tiny_sana_video(tmp_path_factory):
    """A tiny random diffusers SanaVideoPipeline saved with save_pretrained: {"root", "pipe"} (built once)."""
    from tests import tiny_sana_video as tiny

    root = tmp_path_factory.mktemp("tiny-sana-video") / "SANA-Video_tiny_diffusers"
    pipe = tiny.build(root)
    return {"root": root, "pipe": pipe}


@pytest.fixture(scope="session")
def tiny_sana_video_configs(tiny_sana_video, tmp_path_factory):
    """Model configs serving the tiny checkpoint in both modes: {"full_sequence": path, "block_causal": path}.
    The release configs' settings, at the tiny checkpoint's size and with short limits."""
    import yaml

    d = tmp_path_factory.mktemp("tiny-configs")
    base = {"checkpoint": str(tiny_sana_video["root"]), "text_encoder": "checkpoint", "text_max_length": 300,
            "video": {"width": 64, "height": 32, "fps": 16},
            "limits": {"max_seconds": 20, "max_steps": 50, "min_guidance": 1.0, "max_guidance": 15.0}}
    modes = {
        "full_sequence": {"mode": "full_sequence", "chunk_frames": 2, "steps": 4, "sampler": "dpmpp_2m",
                          "flow_shift": 8.0, "guidance_scale": 6.0},
        "block_causal": {"mode": "block_causal", "chunk_frames": 2, "merge_remainder": True,
                         "timesteps": [1000, 960, 889, 727], "snap_timesteps": True, "sampler": "renoise",
                         "flow_shift": 7.0, "guidance_scale": 1.0},
    }
    paths = {}
    for mode, sampling in modes.items():
        paths[mode] = d / f"tiny-{mode.replace('_', '-')}.yaml"
        paths[mode].write_text(yaml.safe_dump({"name": f"tiny-{mode.replace('_', '-')}", **base, "sampling": sampling}))
    return paths
