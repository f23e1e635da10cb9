"""GPU check of the released LongSANA setting: one command, no downloads, under 8 minutes on one GPU.

The real 2B architecture (configs/longsana-2b-480p.yaml's `random_init`: 20 layers, 2240 wide, Wan2.1
VAE) with random weights, run exactly as LongSANA is served at 832x480: chunks of 10 latent frames
(40 frames = 2.5 s a block), 4 re-noise steps at t = 1000/960/889/727, no CFG, the t=0 fold of every
chunk into the constant-size state, the Wan VAE decoding each block with its causal cache (fp32).
Random weights give the speed and memory of the real ones (nothing here depends on their values);
the text encoder is left out (random prompt states: Gemma-2 runs once per request, not per block).

Per variant it measures, on a warm model (a first rollout compiles / autotunes and is not timed):
time to first block, blocks/s and frames/s after it, one denoising forward of a chunk, peak GPU
memory, and the per-request bytes of the stream state and of the Wan decoder's causal cache. Variants, each where this machine has it (else marked n/a):
  bf16 with the PyTorch linear attention, bf16 with the Triton kernels, bf16 + torch.compile, bf16 +
  torch.compile with CUDA graphs (mode "reduce-overhead"), NVFP4 weight-only (PyTorch dequantize, Triton
  GEMM) and NVFP4 W4A4 on Blackwell FP4 tensor cores.
A variant that fails is reported with its error and the run goes on; once --budget-s is spent the rest
are skipped (say so in the table), so the command stays inside its time.

    python bench/gpu.py                      # the GPU check: table on stdout, bench/results/gpu.json
    python bench/gpu.py --tiny --json X.json # a tiny CPU version of the same code path (tests/test_bench_gpu.py)
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"

# --tiny: the same code path at a size a 2-core CPU runs in seconds
TINY = {
    "transformer": dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=32, num_layers=2,
                        num_cross_attention_heads=2, cross_attention_head_dim=32, cross_attention_dim=64,
                        caption_channels=32, mlp_ratio=2.5, sample_size=8, patch_size=(1, 2, 2)),
    "vae": dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True],
                latents_mean=[0.0] * 4, latents_std=[1.0] * 4),
    "video": (64, 32), "chunk_frames": 2, "text_length": 16,
}

VARIANTS = [  # name, weights, kernels, compile mode
    ("bf16 torch", "bf16", "torch", None),
    ("bf16 triton", "bf16", "triton", None),
    ("bf16 triton compile", "bf16", "triton", "default"),
    ("bf16 triton compile+cudagraphs", "bf16", "triton", "reduce-overhead"),
    ("nvfp4 torch", "nvfp4", "torch", None),
    ("nvfp4 triton", "nvfp4", "triton", None),
    ("nvfp4 fp4-tensor-cores", "nvfp4", "fp4", None),
]


class RandomPrompt:
    """Stands in for Gemma-2: seeded random prompt states of the encoder's width (the text encoder runs
    once per request; it is not what a block costs)."""

    def __init__(self, hidden_size: int, length: int, device):
        self.hidden_size, self.length, self.device = hidden_size, length, device

    def encode_one(self, prompt: str, negative: bool = False):
        g = torch.Generator().manual_seed(len(prompt) + (1 if negative else 0))
        return (torch.randn(self.length, self.hidden_size, generator=g).to(self.device),
                torch.ones(self.length, dtype=torch.long, device=self.device))


def unavailable(kernels: str, compile_mode: str | None, device: torch.device, tiny: bool) -> str | None:
    """Why a variant cannot run here, or None."""
    from sana_serve.kernels._triton import triton_available
    from sana_serve.kernels.nvfp4_gemm import fp4_tensor_cores_available

    if kernels in ("triton", "fp4") and (device.type != "cuda" or not triton_available()):
        return "n/a: needs CUDA + triton"
    if kernels == "fp4" and not fp4_tensor_cores_available(device):
        return "n/a: needs Blackwell FP4 tensor cores (sm_100/sm_120)"
    if compile_mode == "reduce-overhead" and device.type != "cuda":
        return "n/a: CUDA graphs need CUDA"
    if compile_mode is not None and tiny:
        return "skipped: --tiny (compiling takes minutes on a CPU)"
    return None


def build(tiny: bool, device: torch.device):
    """(config, bf16-or-fp32 transformer, Wan VAE fp32, (width, height)) with seeded random weights."""
    from sana_serve.engine.config import load_config
    from sana_serve.engine.model.transformer import SanaVideoTransformer
    from sana_serve.engine.model.wan_vae import WanVAE

    cfg = load_config("longsana-2b-480p")
    spec = copy.deepcopy(cfg.random_init)
    size = (cfg.video.width, cfg.video.height)
    if tiny:
        spec["transformer"], spec["vae"] = TINY["transformer"], TINY["vae"]
        size = TINY["video"]
        cfg.sampling.chunk_frames = TINY["chunk_frames"]
        cfg.video.width, cfg.video.height = size
        cfg.text_max_length = TINY["text_length"]
    spec["vae"].pop("_class_name", None)
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: a 2B model is slow to initialise on a CPU
        transformer = SanaVideoTransformer(**spec["transformer"])
        vae = WanVAE(**spec["vae"])
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # bf16 matmuls crawl on CPUs
    return cfg, transformer.to(dtype).eval().requires_grad_(False), vae.eval().requires_grad_(False), size


def prepare(base, weights: str, kernels: str, compile_mode: str | None, device: torch.device):
    from sana_serve.engine.model.nvfp4 import NVFP4Linear
    from sana_serve.engine.quantize import quantize_transformer, set_kernels

    model = base
    if weights == "nvfp4":
        model = copy.deepcopy(base)
        quantize_transformer(model, method="kernels")  # weight-only, bit-exact with ModelOpt's NVFP4QTensor
    set_kernels(model, "triton" if kernels == "fp4" else kernels, device)
    if kernels == "fp4":
        for m in model.modules():
            if isinstance(m, NVFP4Linear):
                m.backend = "fp4"
    if compile_mode is not None:
        model.compile_blocks(compile_mode)  # what `--compile` does (reduce-overhead: CUDA graphs per block)
    return model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(engine, blocks: int, device) -> dict:
    """A warm-up rollout (not timed: compiling, autotuning, allocator), then a timed one of `blocks` blocks."""
    from sana_serve.engine.rollout import GenerationRequest, Rollout

    chunk = engine.config.sampling.chunk_frames
    frames = 1 + engine.vae.temporal_compression * (chunk * blocks - 1)  # every chunk full: steady blocks
    request = GenerationRequest("a bench prompt", None, frames=frames, seed=0)
    warm = Rollout(engine, GenerationRequest("a bench prompt", None, seed=1,
                                                    frames=1 + engine.vae.temporal_compression * (2 * chunk - 1)))
    t = time.perf_counter()
    while not warm.done:
        engine.step([warm])
    sync(device)
    warmup_s = time.perf_counter() - t
    del warm  # its state and decoder cache must not count in the timed request's peak
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    resident = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    rollout, times, counts, state_bytes = Rollout(engine, request), [], [], 0
    start = time.perf_counter()
    while not rollout.done:
        block = engine.step([rollout])[0]
        if block is not None:  # the frames are on the CPU: the GPU work of this block is done
            times.append(time.perf_counter() - start)
            counts.append(block.frame_count)
            state_bytes = block.state_bytes
    steady_s = times[-1] - times[0]
    # one denoising forward of a chunk, alone
    h, w = rollout.latent_hw
    x = torch.randn(1, engine.latent_channels, chunk, h, w, device=device)
    state = engine.transformer.new_state(1)
    ts = torch.full((1,), 960.0, device=device)
    with torch.no_grad():
        engine.transformer.forward_chunk(x, ts, rollout.text, state)
        sync(device)
        t = time.perf_counter()
        for _ in range(3):
            engine.transformer.forward_chunk(x, ts, rollout.text, state)
        sync(device)
    return {
        "warmup_s": round(warmup_s, 3),
        "time_to_first_block_s": round(times[0], 4),
        "blocks_per_s": round((len(times) - 1) / steady_s, 4) if steady_s > 0 else None,
        "frames_per_s": round(sum(counts[1:]) / steady_s, 2) if steady_s > 0 else None,
        "forward_ms": round((time.perf_counter() - t) / 3 * 1000, 2),
        "peak_gpu_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "peak_request_bytes": torch.cuda.max_memory_allocated(device) - resident if device.type == "cuda" else None,
        "state_bytes": state_bytes,  # the transformer's stream state (linear-attention sums + conv tails)
        "vae_cache_bytes": rollout.decoder.nbytes,  # the Wan decoder's causal cache, also per request
        "blocks": len(times), "frames": sum(counts),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random model on the CPU (the test of this script)")
    parser.add_argument("--blocks", type=int, default=None, help="timed blocks per variant (default 4; tiny 3)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip the variants left once this is spent")
    parser.add_argument("--variants", default=None, help="comma-separated names (default: all)")
    parser.add_argument("--json", type=Path, default=RESULTS / "gpu.json")
    args = parser.parse_args(argv)
    from sana_serve.engine.rollout import Engine

    t0 = time.perf_counter()
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.tiny:
        print("bench/gpu.py: no CUDA device; run it on a GPU, or use --tiny for the CPU smoke run", file=sys.stderr)
        return 2
    blocks = args.blocks or (3 if args.tiny else 4)
    cfg, base, vae, (width, height) = build(args.tiny, device)
    text = RandomPrompt(base.config["caption_channels"], cfg.text_max_length, device)
    wanted = None if args.variants is None else set(args.variants.split(","))
    rows = []

    def result() -> dict:
        return {
            "what": "LongSANA 2B at 480p (random weights)" if not args.tiny else "tiny random model (--tiny)",
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "size": f"{width}x{height}", "chunk_frames": cfg.sampling.chunk_frames,
            "steps": cfg.sampling.timesteps, "total_s": round(time.perf_counter() - t0, 1), "variants": rows,
        }

    def report(row: dict) -> None:
        """Each variant's row as soon as it is measured: stdout and the JSON file (a call cut off
        by its time limit keeps everything measured before it)."""
        rows.append(row)
        print(format_table({**result(), "variants": [row]}).splitlines()[-1], flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result(), indent=2))

    print(format_table({**result(), "variants": []}), flush=True)  # the header first
    for name, weights, kernels, compile_mode in VARIANTS:
        if wanted is not None and name not in wanted:
            continue
        row = {"variant": name, "weights": weights if device.type == "cuda" or weights == "nvfp4" else "fp32",
               "kernels": kernels, "compile": compile_mode}
        why = unavailable(kernels, compile_mode, device, args.tiny)
        if why is None and time.perf_counter() - t0 > args.budget_s:
            why = f"skipped: time budget of {args.budget_s:.0f} s spent"
        if why is not None:
            report({**row, "status": why})
            continue
        try:
            model = prepare(base, weights, kernels, compile_mode, device)
            engine = Engine(model, vae, text, cfg, device)
            report({**row, "status": "ok", **measure(engine, blocks, device)})
        except Exception as e:  # noqa: BLE001 - one failing path must not hide the others' numbers
            report({**row, "status": f"failed: {type(e).__name__}: {str(e)[:200]}"})
        finally:
            base.compile_blocks(None)  # drop compiled blocks: the next variant starts eager
            engine = model = None
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(format_table(result()))
    return 0


def format_table(result: dict) -> str:
    head = ["variant", "weights", "first block s", "blocks/s", "frames/s", "forward ms", "peak GPU GB", "request peak GB", "state MB",
            "VAE cache MB", "status"]
    lines = [f"{result['what']} on {result['device']}, {result['size']}, chunks of {result['chunk_frames']} "
             f"latent frames, t = {result['steps']} ({result['total_s']} s)",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["variants"]:
        def f(key, scale=1.0, digits=3):
            v = r.get(key)
            return "" if v is None else f"{v / scale:.{digits}g}"
        lines.append("| " + " | ".join([r["variant"], r["weights"], f("time_to_first_block_s"), f("blocks_per_s"), f("frames_per_s"),
                                         f("forward_ms"), f("peak_gpu_bytes", 1e9), f("peak_request_bytes", 1e9), f("state_bytes", 1e6),
                                         f("vae_cache_bytes", 1e6), r["status"]]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
