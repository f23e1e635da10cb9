"""Checkpoints in the Hugging Face layout: diffusers-saved (also sharded) transformers load, and an
exported checkpoint drives the engine to the same video as the in-memory models."""
import numpy as np
import pytest
import torch

from sana_serve.engine import GenerationRequest, load_config, load_engine
from sana_serve.engine.checkpoint import load_transformer, save_transformer, write_model_index
from sana_serve.engine.load import build_random_models

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("shard", [None, "20KB"])
def test_diffusers_saved_transformer_loads_strictly(tmp_path, shard):
    torch.manual_seed(0)
    kw = dict(in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=12, num_layers=2,
              num_cross_attention_heads=2, cross_attention_head_dim=12, cross_attention_dim=24, caption_channels=16)
    ref = diffusers.SanaVideoTransformer3DModel(**kw).eval()
    ref.save_pretrained(tmp_path / "transformer", **({"max_shard_size": shard} if shard else {}))
    if shard:
        assert (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    ours = load_transformer(tmp_path)
    x, text, t = torch.randn(1, 8, 2, 4, 4), torch.randn(1, 3, 16), torch.tensor([400.0])
    with torch.no_grad():
        assert torch.allclose(ours(x, text, t), ref(x, text, t).sample, rtol=1e-4, atol=1e-5)


def test_exported_checkpoint_reproduces_the_in_memory_engine(tmp_path):
    cfg = load_config("shapes-tiny")
    transformer, vae = build_random_models(cfg)
    save_transformer(tmp_path, transformer)
    vae.save_pretrained(tmp_path / "vae")
    write_model_index(tmp_path, {"transformer": ["sana_serve", "SanaVideoTransformer"],
                                 "vae": ["sana_serve", "CausalVideoVAE"]})
    cfg.checkpoint = None
    cfg.random_init = cfg.random_init or {}
    req = GenerationRequest("a yellow triangle moving down on a black background", seconds=1, seed=5)
    a = np.concatenate([b.frames for b in load_engine(cfg, device="cpu").stream(req)])
    b = np.concatenate([b.frames for b in load_engine("shapes-tiny", checkpoint=tmp_path, device="cpu").stream(req)])
    assert np.array_equal(a, b)
