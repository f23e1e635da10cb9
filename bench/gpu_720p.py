"""GPU check of the 720p release's shapes (SANA-Video 2B/720p, LTX-2 VAE): random weights, no downloads.

configs/sana-video-2b-720p.yaml's `random_init` (the 2B transformer with 128 channels in/out, patch
(1,1,1); the LTX-2 VAE at diffusers' defaults) at the recipe's 1280x704, 81 frames (11 latent frames):
per variant, one CFG denoising forward (batch 2, bf16) and the VAE decode of the 11 latent frames in each
decode mode the config offers (whole clip; spatial tiles 512/448; temporal windows of context 1 and 2
with tiles), with the wall time and the peak GPU memory of each, next to the shape estimate of the
decode's activations (LTX2VAE.decode_peak_bytes) so the README's memory table can be checked.
Random weights give the speed and memory of the real ones. A step that runs out of memory is reported
as such and the run goes on. Nothing here has run on a GPU yet: its numbers are unmeasured.

    python bench/gpu_720p.py                      # table on stdout, bench/results/gpu_720p.json
    python bench/gpu_720p.py --tiny --json X.json # the same code path on the CPU at a tiny size
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"

TINY_VAE = dict(latent_channels=8, block_out_channels=[16, 32, 64, 64], decoder_block_out_channels=[16, 32, 64],
                layers_per_block=[1, 1, 1, 1, 1], decoder_layers_per_block=[1, 1, 1, 1],
                spatial_compression_ratio=32, temporal_compression_ratio=8, decoder_causal=False)
TINY_TRANSFORMER = dict(in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=16, num_layers=2,
                        num_cross_attention_heads=2, cross_attention_head_dim=16, cross_attention_dim=32,
                        caption_channels=32, mlp_ratio=2.5, sample_size=8, patch_size=[1, 1, 1],
                        norm_elementwise_affine=False, norm_eps=1e-6)


def measure(fn, device):
    """(seconds, peak GPU bytes or None, error or None) of one call, after clearing the peak counter."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        with torch.no_grad():
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    except torch.OutOfMemoryError as e:  # reported, and the run goes on
        return None, None, f"out of memory: {str(e).splitlines()[0]}"
    seconds = time.perf_counter() - start
    return seconds, torch.cuda.max_memory_allocated() if device.type == "cuda" else None, None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a tiny CPU run of the same code path")
    ap.add_argument("--json", type=Path, default=RESULTS / "gpu_720p.json")
    args = ap.parse_args(argv)
    from sana_serve.engine.config import DecodeConfig
    from sana_serve.engine.model.ltx2_vae import LTX2VAE
    from sana_serve.engine.model.transformer import SanaVideoTransformer

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    spec = yaml.safe_load((ROOT / "configs" / "sana-video-2b-720p.yaml").read_text())["random_init"]
    if args.tiny:
        tcfg, vcfg, (width, height, frames), tile, dtype = TINY_TRANSFORMER, TINY_VAE, (128, 128, 17), 96, torch.float32
    else:
        vcfg = {k: v for k, v in spec["vae"].items() if k != "_class_name"}
        tcfg, (width, height, frames), tile, dtype = spec["transformer"], (1280, 704, 81), 512, torch.bfloat16
    torch.manual_seed(0)
    vae = LTX2VAE(**vcfg).to(device).eval()  # fp32, as diffusers' examples run it
    transformer = SanaVideoTransformer(**tcfg).to(device, dtype).eval()
    lt, lh, lw = 1 + (frames - 1) // 8, height // 32, width // 32
    z = torch.randn(1, vae.latent_channels, lt, lh, lw, device=device)
    rows = []
    x = torch.randn(2, tcfg["in_channels"], lt, lh, lw, device=device, dtype=dtype)
    text = torch.randn(2, 300 if not args.tiny else 16, tcfg["caption_channels"], device=device, dtype=dtype)
    t = torch.full((2,), 500.0, device=device)
    seconds, peak, error = measure(lambda: transformer(x, text, t), device)
    rows.append({"step": "transformer forward (CFG batch 2)", "seconds": seconds, "peak_bytes": peak, "error": error,
                 "estimate_bytes": None})
    stride = tile - 64 if not args.tiny else 64  # diffusers' 512 / 448
    modes = {"whole clip": DecodeConfig(), f"tiles {tile}/{stride}": DecodeConfig(tile=tile, tile_stride=stride),
             f"window c=1 + tiles {tile}/{stride}": DecodeConfig(context=1, tile=tile, tile_stride=stride),
             f"window c=2 + tiles {tile}/{stride}": DecodeConfig(context=2, tile=tile, tile_stride=stride)}
    for name, decode in modes.items():
        vae.configure_decode(decode)

        def run():
            dec = vae.stream_decoder()
            dec.see(z)
            pos = 0
            for n in [1] + [2] * ((lt - 1) // 2):
                dec.decode(z[:, :, pos: pos + n])
                pos += n

        window = lt if decode.context is None else min(lt, 2 + 2 * decode.context)
        seconds, peak, error = measure(run, device)
        rows.append({"step": f"VAE decode, {name}", "seconds": seconds, "peak_bytes": peak, "error": error,
                     "estimate_bytes": vae.decode_peak_bytes(window, height, width)})
    print(f"{'step':44s} {'seconds':>8s} {'peak GiB':>9s} {'estimate GiB':>13s}")
    for r in rows:
        fmt = lambda b: "n/a" if b is None else f"{b / 2**30:.2f}"  # noqa: E731
        print(f"{r['step']:44s} {'-' if r['seconds'] is None else format(r['seconds'], '.2f'):>8s} "
              f"{fmt(r['peak_bytes']):>9s} {fmt(r['estimate_bytes']):>13s} {r['error'] or ''}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(),
                                     "size": [width, height, frames], "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
