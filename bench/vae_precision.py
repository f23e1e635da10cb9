"""The Wan VAE's decode in bf16 vs fp32: ours and diffusers' AutoencoderKLWan, same tiny random weights.

Decides (and documents) the VAE's precision on CUDA: the question is not whether bf16 differs
from fp32 (it does) but whether our bf16 decode is as close to fp32 as diffusers' own bf16 decode,
i.e. whether running the VAE in bf16 would make our frames differ from the oracle's more than
diffusers' own bf16 run does. On a CPU (bf16 is slow there), so the checkpoint is tiny; the
error is reported in uint8 levels of the output frames (what a viewer sees).

    python bench/vae_precision.py            # prints a table, writes bench/results/vae_precision.json
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Wan2.1's layout (4 levels, 8x space, 4x time) at a tiny width; random weights, perturbed so that
# no term is trivially zero
TINY = dict(base_dim=32, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True],
            latents_mean=[0.0] * 16, latents_std=[1.0] * 16)


def levels(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Differences of two decodes in [-1, 1] as uint8 levels (x + 1) * 127.5."""
    d = ((a.float().clamp(-1, 1) - b.float().clamp(-1, 1)) * 127.5).abs()
    return {"max_levels": round(d.max().item(), 3), "mean_levels": round(d.mean().item(), 4)}


def main() -> int:
    from diffusers import AutoencoderKLWan

    from sana_serve.engine.model.vae import load_vae

    torch.manual_seed(0)
    ref = AutoencoderKLWan(**TINY).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(Path(tmp) / "vae")
        ours = load_vae(Path(tmp) / "vae").eval()
    z = torch.randn(1, 16, 3, 8, 12, generator=torch.Generator().manual_seed(1))  # 9 frames of 64x96
    out = {}
    t0 = time.perf_counter()
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16):
            name = "fp32" if dtype == torch.float32 else "bf16"
            out[f"diffusers {name}"] = ref.to(dtype).decode(z.to(dtype), return_dict=False)[0].float()
            out[f"ours {name}"] = ours.to(dtype).decode(z.to(dtype)).float()
    result = {
        "checkpoint": TINY, "latents": list(z.shape), "seconds": round(time.perf_counter() - t0, 1),
        "ours fp32 vs diffusers fp32": levels(out["ours fp32"], out["diffusers fp32"]),
        "diffusers bf16 vs diffusers fp32": levels(out["diffusers bf16"], out["diffusers fp32"]),
        "ours bf16 vs ours fp32": levels(out["ours bf16"], out["ours fp32"]),
        "ours bf16 vs diffusers bf16": levels(out["ours bf16"], out["diffusers bf16"]),
        "ours bf16 vs diffusers fp32": levels(out["ours bf16"], out["diffusers fp32"]),
    }
    for k, v in result.items():
        print(f"{k}: {v}")
    path = ROOT / "bench" / "results" / "vae_precision.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
