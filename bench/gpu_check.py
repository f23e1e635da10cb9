"""The prepared GPU check: one call, each stage in its own subprocess under its own timeout.

    python bench/gpu_check.py --out DIR                    # on the GPU machine (< 9 minutes)
    python bench/gpu_check.py --out DIR --tiny --device cpu  # the CPU dry run (tests/test_bench_gpu_check.py)

Stages (each prints one `gpu_check <stage> <status> ...` line and writes DIR/<stage>.json as soon
as it finishes; a stage that hangs or crashes is killed at its timeout and reported, and the next
one starts):
  kernels   Triton linear attention at the release's shapes (20 heads x 112, 15600 tokens = one
            10-latent-frame chunk at 832x480), with and without state, fp32 and bf16 inputs, and the
            NVFP4 GEMM (15600 x 2240 x 2240), against the PyTorch references: error and time.
  longsana  one whole LongSANA request at 832x480 (configs/longsana-2b-480p.yaml, random weights,
            bf16, 4 steps per chunk, t=0 folds, Wan VAE decode) through Engine.step, as `generate` runs
            it: time to first block, blocks, per-request peak memory.
  fullseq   one full-sequence request (configs/sana-video-2b-480p.yaml, 81 frames, CFG 6; --fullseq-steps
            steps, default 10: the per-step time gives the 50-step figure).
  speed     bench/gpu.py's variants without torch.compile (bf16 torch / triton, nvfp4 ...).
  compile   bench/gpu.py's torch.compile variants, with TORCH_LOGS=recompiles,graph_breaks.
  vae       the Wan VAE decoding one chunk in fp32 vs bf16: uint8-level difference, time, peak memory.

Random weights are built on the fly where they run (`with torch.device(device)`), never at full size
on a CPU. Needs only torch, triton, numpy, safetensors, pyyaml and tqdm (all present beside
transformers): no diffusers, ModelOpt, FastAPI, pydantic or imageio-ffmpeg (the dry run forbids them).
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

STAGES = {  # name: timeout in seconds on the GPU (the sum stays under 9 minutes)
    "kernels": 60, "longsana": 100, "fullseq": 110, "speed": 110, "compile": 80, "vae": 50,
}
TINY_TIMEOUT = 240  # the CPU dry run: any stage
FORBIDDEN = ("diffusers", "modelopt", "fastapi", "uvicorn", "pydantic", "imageio_ffmpeg")


class ForbidImports:
    """A meta-path finder that makes the modules the GPU machine lacks unimportable (the dry run)."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            raise ImportError(f"gpu_check must not import {name}: the GPU machine does not have it")
        return None


# ---- helpers --------------------------------------------------------------------------------

def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeat=3):
    """(result, milliseconds per call) after one warm-up call (compiles, autotunes)."""
    result = fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(repeat):
        result = fn()
    sync(device)
    return result, round((time.perf_counter() - t) / repeat * 1000, 3)


def rel_err(a, b) -> float:
    a, b = a.float(), b.float()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def fresh_peak(device):
    """Forget what earlier work left in the caching allocator; returns the bytes allocated now."""
    import torch

    gc.collect()
    if device.type != "cuda":
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def peak_above(device, base):
    import torch

    return None if device.type != "cuda" else torch.cuda.max_memory_allocated(device) - base


def build_engine(config_name: str, tiny: bool, device):
    """An Engine for a release config with seeded random weights built where they run (bf16 on CUDA)."""
    import torch

    from gpu import TINY, RandomPrompt
    from sana_serve.engine.config import load_config
    from sana_serve.engine.load import VAE_DTYPE, weights_dtype
    from sana_serve.engine.model.transformer import SanaVideoTransformer
    from sana_serve.engine.model.wan_vae import WanVAE
    from sana_serve.engine.quantize import set_kernels
    from sana_serve.engine.rollout import Engine

    cfg = load_config(config_name)
    spec = copy.deepcopy(cfg.random_init)
    if tiny:
        spec["transformer"], spec["vae"] = dict(TINY["transformer"]), dict(TINY["vae"])
        cfg.video.width, cfg.video.height = TINY["video"]
        cfg.sampling.chunk_frames = min(cfg.sampling.chunk_frames, TINY["chunk_frames"])
        cfg.text_max_length = TINY["text_length"]
    spec["vae"].pop("_class_name", None)
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: a 2B model is never built on the CPU
        transformer = SanaVideoTransformer(**spec["transformer"])
        vae = WanVAE(**spec["vae"])
    transformer = transformer.to(weights_dtype("auto", device)).eval().requires_grad_(False)
    vae = vae.to(VAE_DTYPE).eval().requires_grad_(False)
    set_kernels(transformer, "auto", device)
    text = RandomPrompt(transformer.config["caption_channels"], cfg.text_max_length, device)
    return Engine(transformer, vae, text, cfg, device), cfg


def run_request(engine, request, device) -> dict:
    """One request through Engine.step, as `generate` runs it: per-block times, frames, peak memory."""
    from sana_serve.engine.rollout import Rollout

    base = fresh_peak(device)
    start = time.perf_counter()
    rollout, times, frames, state_bytes, shape = Rollout(engine, request), [], 0, 0, None
    while not rollout.done:
        block = engine.step([rollout])[0]
        if block is not None:
            times.append(round(time.perf_counter() - start, 3))
            frames += block.frame_count
            state_bytes = block.state_bytes
            shape = list(block.frames.shape)
    return {"time_to_first_block_s": times[0], "total_s": times[-1], "block_times_s": times, "blocks": len(times),
            "frames": frames, "last_block_shape": shape, "state_bytes": state_bytes,
            "decoder_cache_bytes": rollout.decoder.nbytes, "peak_request_bytes": peak_above(device, base)}


# ---- stages ---------------------------------------------------------------------------------

def stage_kernels(args, device) -> dict:
    import torch

    from sana_serve.kernels.linear_attention import chunk_linear_attention_reference, chunk_linear_attention_triton
    from sana_serve.kernels.nvfp4 import nvfp4_linear_reference, quantize_nvfp4
    from sana_serve.kernels.nvfp4_gemm import nvfp4_linear_triton

    B, N, H, D = (1, 45, 2, 16) if args.tiny else (1, 15600, 20, 112)
    g = torch.Generator(device=device).manual_seed(0)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for state in (False, True):
            q, k, v = (torch.randn(B, N, H, D, generator=g, device=device).to(dtype) for _ in range(3))
            angles = torch.rand(N, D // 2, generator=g, device=device) * 20
            cos, sin = angles.cos(), angles.sin()
            past = (torch.randn(B, H, D, D, generator=g, device=device) * 4,
                    torch.rand(B, H, D, generator=g, device=device) * 50) if state else (None, None)
            want, torch_ms = timed(lambda: chunk_linear_attention_reference(q, k, v, cos, sin, *past), device)
            got, triton_ms = timed(lambda: chunk_linear_attention_triton(q, k, v, cos, sin, *past), device)
            rows.append({"op": "linear_attention", "dtype": str(dtype).split(".")[-1], "state": state,
                         "shape": [B, N, H, D], "rel_err_out": rel_err(got[0], want[0]),
                         "rel_err_vk": rel_err(got[1], want[1]), "rel_err_k_sum": rel_err(got[2], want[2]),
                         "torch_ms": torch_ms, "triton_ms": triton_ms})
    M, K, Nout = (33, 64, 48) if args.tiny else (15600, 2240, 2240)
    w = torch.randn(Nout, K, generator=g, device=device)
    qw = quantize_nvfp4(w)
    for dtype in ((torch.float32,) if args.tiny else (torch.float32, torch.bfloat16)):  # bf16 dots: not in the interpreter
        x = torch.randn(M, K, generator=g, device=device).to(dtype)
        want, torch_ms = timed(lambda: nvfp4_linear_reference(x, qw), device)
        got, triton_ms = timed(lambda: nvfp4_linear_triton(x, qw), device)
        dense = w.to(dtype)
        _, dense_ms = timed(lambda: x @ dense.t(), device)
        rows.append({"op": "nvfp4_gemm", "dtype": str(dtype).split(".")[-1], "shape": [M, K, Nout],
                     "rel_err": rel_err(got, want), "torch_ms": torch_ms, "triton_ms": triton_ms,
                     "dense_matmul_ms": dense_ms})
    return {"results": rows}


def stage_longsana(args, device) -> dict:
    from sana_serve.engine.rollout import GenerationRequest

    engine, cfg = build_engine("longsana-2b-480p", args.tiny, device)
    chunk = cfg.sampling.chunk_frames
    blocks = 2 if args.tiny else 3
    frames = 1 + engine.vae.temporal_compression * (chunk * blocks - 1)
    request = GenerationRequest("a red fox running through snow", None, frames=frames, seed=0)
    return {"size": f"{cfg.video.width}x{cfg.video.height}", "chunk_frames": chunk, "steps": cfg.sampling.timesteps,
            **run_request(engine, request, device)}


def stage_fullseq(args, device) -> dict:
    from sana_serve.engine.rollout import GenerationRequest

    engine, cfg = build_engine("sana-video-2b-480p", args.tiny, device)
    frames = 9 if args.tiny else 81
    steps = 2 if args.tiny else args.fullseq_steps
    request = GenerationRequest("a red fox running through snow", None, frames=frames, seed=0,
                                num_inference_steps=steps, guidance_scale=6.0)
    result = run_request(engine, request, device)
    return {"size": f"{cfg.video.width}x{cfg.video.height}", "frames_requested": frames, "steps": steps,
            "guidance_scale": 6.0, "seconds_per_step": round(result["time_to_first_block_s"] / steps, 4), **result}


def stage_speed(args, device, compile_variants: bool) -> dict:
    import gpu

    names = [name for name, _w, _k, mode in gpu.VARIANTS if (mode is not None) == compile_variants]
    out = Path(args.out) / ("compile_table.json" if compile_variants else "speed_table.json")
    argv = ["--json", str(out), "--variants", ",".join(names), "--blocks", "2"]
    if args.tiny:
        argv.append("--tiny")
    code = gpu.main(argv)
    result = json.loads(out.read_text()) if out.is_file() else {}
    return {"exit_code": code, **result}


def stage_vae(args, device) -> dict:
    import torch

    from gpu import TINY
    from sana_serve.engine.config import load_config
    from sana_serve.engine.model.wan_vae import WanVAE

    cfg = load_config("longsana-2b-480p")
    spec = dict(TINY["vae"]) if args.tiny else copy.deepcopy(cfg.random_init["vae"])
    spec.pop("_class_name", None)
    w, h = TINY["video"] if args.tiny else (cfg.video.width, cfg.video.height)
    torch.manual_seed(0)
    with torch.device(device):
        vae = WanVAE(**spec).eval().requires_grad_(False)
    chunk = 2 if args.tiny else cfg.sampling.chunk_frames
    z = torch.randn(1, vae.latent_channels, 1 + chunk, h // vae.spatial_compression, w // vae.spatial_compression,
                    generator=torch.Generator(device=device).manual_seed(1), device=device)
    result, decoded = {"latents": list(z.shape)}, {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        vae.to(dtype)
        base = fresh_peak(device)
        with torch.no_grad():
            t = time.perf_counter()
            decoder = vae.stream_decoder()
            outs = [decoder.decode(z[:, :, :1].to(dtype)), decoder.decode(z[:, :, 1:].to(dtype))]  # first frame alone
            sync(device)
        decoded[name] = torch.cat(outs, dim=2).float().clamp(-1, 1)
        result[name] = {"seconds": round(time.perf_counter() - t, 3), "peak_bytes": peak_above(device, base),
                        "decoder_cache_bytes": decoder.nbytes}
        del decoder, outs
    diff = (decoded["bf16"] - decoded["fp32"]).abs() * 127.5
    result["bf16_vs_fp32_levels"] = {"max": round(diff.max().item(), 3), "mean": round(diff.mean().item(), 4)}
    return result


def run_stage(name: str, args) -> dict:
    import torch

    device = torch.device(args.device)
    if name == "kernels":
        return stage_kernels(args, device)
    if name == "longsana":
        return stage_longsana(args, device)
    if name == "fullseq":
        return stage_fullseq(args, device)
    if name in ("speed", "compile"):
        return stage_speed(args, device, compile_variants=name == "compile")
    if name == "vae":
        return stage_vae(args, device)
    raise ValueError(f"unknown stage {name}")


# ---- driver ---------------------------------------------------------------------------------

def write(out: Path, name: str, result: dict) -> None:
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
    brief = {k: v for k, v in result.items() if not isinstance(v, (dict, list))}
    print(f"gpu_check {name} {result['status']} {json.dumps(brief, default=str)[:600]}", flush=True)


def child(args) -> int:
    """One stage, in this process: its JSON is written here as soon as it finishes."""
    if args.forbid_imports:
        sys.meta_path.insert(0, ForbidImports())
    out = Path(args.out)
    t = time.perf_counter()
    try:
        result = {"stage": args.stage, "status": "ok", **run_stage(args.stage, args)}
    except Exception as e:  # noqa: BLE001 - report it; the driver goes on with the next stage
        import traceback

        result = {"stage": args.stage, "status": "failed", "error": f"{type(e).__name__}: {e}"[:2000],
                  "traceback": traceback.format_exc()[-4000:]}
    result["seconds"] = round(time.perf_counter() - t, 2)
    write(out, args.stage, result)
    return 0 if result["status"] == "ok" else 1


def driver(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(STAGES) if args.stages is None else args.stages.split(",")
    t0 = time.perf_counter()
    statuses = {}
    for name in names:
        timeout = TINY_TIMEOUT if args.tiny else STAGES[name]
        env = dict(os.environ)
        if name == "kernels" and args.device == "cpu":
            env["TRITON_INTERPRET"] = "1"  # the kernels on CPU tensors: Triton's interpreter
        if name == "compile":
            env["TORCH_LOGS"] = "recompiles,graph_breaks"
        cmd = [sys.executable, __file__, "--stage", name, "--out", str(out), "--device", args.device,
               "--fullseq-steps", str(args.fullseq_steps)] + ["--tiny"] * args.tiny + ["--forbid-imports"] * args.forbid_imports
        log = out / f"{name}.log"
        with log.open("w") as f:
            try:
                code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                code = None
        tail = log.read_text(errors="replace")[-3000:]
        for line in tail.splitlines():
            if line.startswith("gpu_check "):
                print(line, flush=True)
        if code is None:
            write(out, name, {"stage": name, "status": f"timeout after {timeout} s", "log_tail": tail})
        elif not (out / f"{name}.json").is_file():
            write(out, name, {"stage": name, "status": f"crashed (exit {code})", "log_tail": tail})
        statuses[name] = json.loads((out / f"{name}.json").read_text())["status"]
    summary = {"stages": statuses, "total_s": round(time.perf_counter() - t0, 1), "tiny": args.tiny, "device": args.device}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"gpu_check done {json.dumps(summary)}", flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="directory for <stage>.json, <stage>.log and summary.json")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (the CPU dry run)")
    parser.add_argument("--stages", default=None, help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--fullseq-steps", type=int, default=10)
    parser.add_argument("--forbid-imports", action="store_true",
                        help=f"fail on importing {', '.join(FORBIDDEN)} (absent on the GPU machine)")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage in this process
    args = parser.parse_args(argv)
    return child(args) if args.stage else driver(args)


if __name__ == "__main__":
    sys.exit(main())
