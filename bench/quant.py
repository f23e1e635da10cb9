"""NVFP4 benchmark: resident bytes, output quality and CPU speed of the packed model vs fp32.

Measured side by side in one run, printed as a table, written to bench/results/quant.json and
bench/results/quant.png:
  - resident bytes of the quantized layers (packed NVFP4) vs the same weights in bf16 and fp32,
    and of the whole transformer
  - per-frame PSNR of the NVFP4 model's video vs the fp32 model's, same prompts and seeds
  - CPU speed: seconds per block, NVFP4 (dequantizing PyTorch path) vs fp32, and one GEMM of the
    largest quantized layer
  - `sana-serve eval` pass rate, fp32 vs NVFP4, when a trained checkpoint exists (models/shapes-tiny);
    otherwise the run says so (random weights have nothing to pass)

The NVFP4 model is made the way a user makes it: `sana-serve quantize` (calibrated, ModelOpt layout)
into a temporary directory, then loaded back with its weights packed.

Usage: python bench/quant.py [--quick] [--eval-limit N]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
PROMPTS = [
    "a red circle moving right on a black background",
    "a green square moving up on a white background",
    "a purple triangle moving left on a gray background",
    "an orange circle moving down on a white background",
]

GPU_NOTE = """\
Why the CPU NVFP4 path is not faster, and what the GPU paths gain:
  On CPU the packed layers dequantize W to fp32 on every call and then run the same fp32 GEMM, so
  they do strictly more work than fp32: NVFP4 buys memory here (~0.28x bf16), not speed.
  On CUDA the Triton weight-only GEMM (kernels/nvfp4_gemm.py) decodes W in registers: weight traffic
  drops from 16 (bf16) to 4.5 bits/weight, which speeds up the memory-bound GEMMs (small token counts:
  the t=0 state fold, short chunks, batch-1 serving) by up to ~3.5x on weight reads; the large-token
  GEMMs of a 480p chunk are compute-bound and gain little from it.
  On Blackwell (sm_100/sm_120) the FP4 tensor-core path (torch._scaled_mm with block-scaled
  float4_e2m1fn_x2) also quantizes activations and runs at ~4x the bf16 dense rate (2x FP8): that
  is the path that speeds up the compute-bound chunk forward. Both GPU paths are untested here (no GPU)."""


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def video(engine, prompt: str, seconds: float, seed: int) -> tuple[np.ndarray, list[float]]:
    from sana_serve.engine import GenerationRequest

    blocks = list(engine.stream(GenerationRequest(prompt, seconds=seconds, seed=seed)))
    return np.concatenate([b.frames for b in blocks]), [b.seconds for b in blocks]


def gemm_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="two prompts, short videos")
    ap.add_argument("--eval-limit", type=int, default=12, help="videos per eval set (template, paraphrase)")
    ap.add_argument("--config", default="shapes-tiny")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads for both sides (1: this machine is shared, and 2 OpenMP threads on a "
                         "busy 2-core box make small element-wise ops, e.g. the dequantize, 100x slower)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from sana_serve.engine import load_engine
    from sana_serve.engine.model.nvfp4 import NVFP4Linear
    from sana_serve.engine.quantize import memory_report, quantize_checkpoint
    from sana_serve.shapes.eval import calibration_prompts

    prompts = PROMPTS[:2] if args.quick else PROMPTS
    seconds = 2.0 if args.quick else 4.0
    fp32 = load_engine(args.config, device="cpu")
    trained = fp32.config.checkpoint is not None
    tmp = tempfile.TemporaryDirectory(prefix="sana-nvfp4-")
    qdir = Path(tmp.name) / "nvfp4"
    summary = quantize_checkpoint(qdir, args.config, checkpoint=fp32.config.checkpoint, calibration=calibration_prompts(2), device="cpu",
                                  progress=False)
    nvfp4 = load_engine(args.config, checkpoint=qdir, device="cpu")
    bf16_model_bytes = sum(t.numel() * (2 if t.is_floating_point() else t.element_size())
                           for t in (*fp32.transformer.parameters(), *fp32.transformer.buffers()))
    mem_fp32, mem_q = memory_report(fp32.transformer), memory_report(nvfp4.transformer)

    # quality: same prompts and seeds
    per_frame, frame_curve = [], None
    for i, prompt in enumerate(prompts):
        a, _ = video(fp32, prompt, seconds, seed=100 + i)
        b, _ = video(nvfp4, prompt, seconds, seed=100 + i)
        scores = [psnr(x, y) for x, y in zip(a, b)]
        per_frame.append(scores)
    frame_curve = np.mean(np.array(per_frame), axis=0)
    all_scores = np.concatenate(per_frame)

    # speed: steady-state seconds per block (first block of each run is dropped as warm-up)
    speed_seconds = 4.0 if args.quick else 8.0
    block_s = {}
    for name, engine in (("fp32", fp32), ("nvfp4", nvfp4)):
        video(engine, prompts[0], 2.0, seed=1)  # warm-up
        _, times = video(engine, prompts[0], speed_seconds, seed=1)
        block_s[name] = statistics.median(times[1:] if len(times) > 1 else times)
    layer = max((m for m in nvfp4.transformer.modules() if isinstance(m, NVFP4Linear)),
                key=lambda m: m.in_features * m.out_features)
    tokens = 8 * 16 * 16  # one chunk of the built-in model: 8 latent frames of 16x16 tokens
    x = torch.randn(tokens, layer.in_features)
    w = torch.randn(layer.out_features, layer.in_features)
    with torch.no_grad():
        gemm = {"fp32": gemm_seconds(lambda: F.linear(x, w), 20), "nvfp4": gemm_seconds(lambda: layer(x), 20)}

    # eval pass rates (trained checkpoint only)
    eval_rates = None
    if trained:
        from sana_serve.shapes.eval import run_eval

        eval_rates = {}
        for name, engine in (("fp32", fp32), ("nvfp4", nvfp4)):
            report = run_eval(engine, ["template", "paraphrase"], args.eval_limit, progress=False)
            res = report["results"]
            eval_rates[name] = {"passed": sum(r["passed"] for r in res), "videos": len(res),
                                "rate": sum(r["passed"] for r in res) / len(res)}

    results = {
        "config": fp32.config.name, "trained_checkpoint": str(fp32.config.checkpoint) if trained else None,
        "quant_algo": summary["quant_algo"],
        "memory": {
            "quantized_layers": mem_q["nvfp4_layers"],
            "quantized_layers_nvfp4_bytes": mem_q["nvfp4_weight_bytes"],
            "quantized_layers_bf16_bytes": mem_q["nvfp4_weight_bf16_bytes"],
            "quantized_layers_fp32_bytes": mem_q["nvfp4_weight_fp32_bytes"],
            "nvfp4_vs_bf16": mem_q["nvfp4_vs_bf16"], "bits_per_weight": mem_q["bits_per_weight"],
            "transformer_fp32_bytes": mem_fp32["transformer_bytes"], "transformer_bf16_bytes": bf16_model_bytes,
            "transformer_nvfp4_bytes": mem_q["transformer_bytes"],
        },
        "psnr_db": {"mean": float(all_scores.mean()), "min": float(all_scores.min()),
                    "per_prompt_mean": [float(np.mean(s)) for s in per_frame], "per_frame_mean": frame_curve.tolist(),
                    "prompts": prompts, "seconds": seconds},
        "speed": {"block_s": block_s, "nvfp4_vs_fp32": block_s["nvfp4"] / block_s["fp32"],
                  "gemm_shape": [tokens, layer.in_features, layer.out_features], "gemm_s": gemm,
                  "gemm_nvfp4_vs_fp32": gemm["nvfp4"] / gemm["fp32"], "threads": torch.get_num_threads()},
        "eval": eval_rates,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quant.json").write_text(json.dumps(results, indent=2))
    print_table(results)
    plot(results, RESULTS / "quant.png")
    tmp.cleanup()


def print_table(r: dict) -> None:
    m, p, s = r["memory"], r["psnr_db"], r["speed"]
    mb = 1e6
    rows = [
        ("quantized layers (%d), NVFP4" % m["quantized_layers"], f"{m['quantized_layers_nvfp4_bytes'] / mb:.3f} MB",
         f"{m['nvfp4_vs_bf16']:.3f}x bf16, {m['quantized_layers_nvfp4_bytes'] / m['quantized_layers_fp32_bytes']:.3f}x fp32"
         f" ({m['bits_per_weight']:.2f} bits/weight; target <= 0.32x bf16)"),
        ("same layers, bf16 / fp32", f"{m['quantized_layers_bf16_bytes'] / mb:.3f} / {m['quantized_layers_fp32_bytes'] / mb:.3f} MB", ""),
        ("whole transformer NVFP4 / bf16 / fp32",
         f"{m['transformer_nvfp4_bytes'] / mb:.2f} / {m['transformer_bf16_bytes'] / mb:.2f} / {m['transformer_fp32_bytes'] / mb:.2f} MB",
         f"{m['transformer_nvfp4_bytes'] / m['transformer_fp32_bytes']:.3f}x fp32 (excluded layers stay fp32)"),
        ("per-frame PSNR, NVFP4 vs fp32", f"{p['mean']:.2f} dB mean", f"min {p['min']:.2f} dB over {len(p['prompts'])} prompts x {p['seconds']:g} s"),
        ("CPU seconds per block fp32 / NVFP4", f"{s['block_s']['fp32']:.3f} / {s['block_s']['nvfp4']:.3f}",
         f"NVFP4 {s['nvfp4_vs_fp32']:.2f}x the fp32 time (dequantizes every call)"),
        ("CPU GEMM %dx%dx%d fp32 / NVFP4" % tuple(s["gemm_shape"]),
         f"{s['gemm_s']['fp32'] * 1e3:.2f} / {s['gemm_s']['nvfp4'] * 1e3:.2f} ms", f"{s['gemm_nvfp4_vs_fp32']:.2f}x"),
    ]
    if r["eval"]:
        e = r["eval"]
        rows.append(("eval pass rate fp32 / NVFP4 (template+paraphrase)",
                     f"{e['fp32']['rate'] * 100:.1f}% / {e['nvfp4']['rate'] * 100:.1f}%",
                     f"{(e['nvfp4']['rate'] - e['fp32']['rate']) * 100:+.1f} points over {e['fp32']['videos']} videos"
                     " (target: within 3)"))
    else:
        rows.append(("eval pass rate", "not measured",
                     "no trained checkpoint at models/shapes-tiny yet: the model has random weights"))
    w0 = max(len(a) for a, _, _ in rows)
    w1 = max(len(b) for _, b, _ in rows)
    print(f"NVFP4 benchmark ({r['config']}, {r['quant_algo']}, "
          f"{'trained checkpoint ' + r['trained_checkpoint'] if r['trained_checkpoint'] else 'RANDOM weights'})")
    for a, b, c in rows:
        print(f"  {a:<{w0}}  {b:>{w1}}  {c}")
    print(GPU_NOTE)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, p, s = r["memory"], r["psnr_db"], r["speed"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    names = ["fp32", "bf16", "NVFP4"]
    vals = [m["quantized_layers_fp32_bytes"], m["quantized_layers_bf16_bytes"], m["quantized_layers_nvfp4_bytes"]]
    bars = axes[0].bar(names, [v / 1e6 for v in vals], color=["#888", "#59a", "#c63"])
    for bar, v in zip(bars, vals):
        axes[0].text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{v / vals[1]:.2f}x bf16",
                     ha="center", va="bottom", fontsize=8)
    axes[0].set(title=f"quantized layers' weights ({m['quantized_layers']})", ylabel="MB resident")
    axes[1].plot(np.arange(len(p["per_frame_mean"])), p["per_frame_mean"])
    axes[1].set(title=f"PSNR NVFP4 vs fp32 (mean {p['mean']:.1f} dB)", xlabel="frame", ylabel="dB (mean over prompts)")
    axes[1].grid(alpha=0.3)
    axes[2].bar(["fp32", "NVFP4 (CPU dequant)"], [s["block_s"]["fp32"], s["block_s"]["nvfp4"]], color=["#888", "#c63"])
    axes[2].set(title="CPU seconds per block", ylabel="s")
    fig.suptitle(f"{r['config']}: " + ("trained" if r["trained_checkpoint"] else "random weights"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
