"""The release configs (configs/sana-video-2b-480p.yaml, configs/longsana-2b-480p.yaml) describe the real
2B models: built on the meta device (no memory, no download), the transformer has the release's 2.06 B
parameters, and LongSANA's per-request stream state at 480p is the same size at block 2 as at block 200."""
from __future__ import annotations

import pytest
import torch

from sana_serve.engine.config import load_config, resolution_bins
from sana_serve.engine.load import default_config_name
from sana_serve.engine.model.transformer import SanaVideoTransformer
from sana_serve.engine.model.vae import vae_classes


def build_on_meta(name: str, dtype=torch.bfloat16):
    cfg = load_config(name)
    spec = dict(cfg.random_init["vae"])
    with torch.device("meta"):
        transformer = SanaVideoTransformer(**cfg.random_init["transformer"]).to(dtype)
        vae = vae_classes()[spec.pop("_class_name")](**spec)
    return cfg, transformer, vae


@pytest.mark.parametrize("name", ["sana-video-2b-480p", "longsana-2b-480p"])
def test_release_config_builds_the_2b_model(name):
    cfg, transformer, vae = build_on_meta(name)
    params = sum(p.numel() for p in transformer.parameters())
    assert round(params / 1e9, 2) == 2.06
    assert (vae.latent_channels, vae.temporal_compression, vae.spatial_compression) == (16, 4, 8)
    assert cfg.checkpoint_repo.startswith("Efficient-Large-Model/SANA-Video_2B_480p")
    assert (cfg.video.width, cfg.video.height, cfg.video.fps) == (832, 480, 16)
    assert (832, 480) in resolution_bins(transformer.config["sample_size"])
    assert default_config_name(cfg.checkpoint_repo) == name  # a bare --checkpoint REPO picks this config


def test_release_modes():
    full, long = load_config("sana-video-2b-480p").sampling, load_config("longsana-2b-480p").sampling
    assert (full.mode, full.steps, full.guidance_scale, full.flow_shift) == ("full_sequence", 50, 6.0, 8.0)
    assert (long.mode, long.chunk_frames, long.timesteps, long.guidance_scale, long.flow_shift) == (
        "block_causal", 10, [1000, 960, 889, 727], 1.0, 7.0)
    assert long.merge_remainder and long.snap_timesteps and long.sampler == "renoise"


def test_longsana_state_bytes_per_request_are_constant_at_480p():
    """One request (no CFG: one row) at 832x480: each chunk of 10 latent frames folded into the state at
    t=0, as the rollout does. A meta-device forward of the 2B model still costs ~0.5 s of CPU here, so
    blocks 1-3 run, then the state jumps to block 198's absolute frame position and blocks 199-200 run."""
    cfg, transformer, _ = build_on_meta("longsana-2b-480p")
    with torch.device("meta"):
        text = transformer.encode_text(torch.empty(1, cfg.text_max_length, 2304),
                                       torch.ones(1, cfg.text_max_length, dtype=torch.long))
        state = transformer.new_state(1, cfg.sampling.window_chunks)
        chunk = torch.empty(1, 16, cfg.sampling.chunk_frames, 480 // 8, 832 // 8)
        sizes = {}
        for block in [1, 2, 3, 199, 200]:
            if block == 199:
                state.next_frame = 198 * cfg.sampling.chunk_frames
            transformer.forward_chunk(chunk, torch.zeros(1), text, state, update_state=True)
            sizes[block] = state.nbytes()
    assert state.next_frame == 200 * cfg.sampling.chunk_frames
    assert sizes[2] == sizes[3] == sizes[199] == sizes[200]
    # vk and k_sum (fp32) per layer plus the temporal conv's last frame (bf16 activations): ~160 MB
    layers, heads, d = 20, 20, 112
    sums = layers * (heads * d * d + heads * d) * 4
    conv_tail = layers * (60 // 2) * (104 // 2) * 2240 * 2
    assert sizes[200] == sums + conv_tail
