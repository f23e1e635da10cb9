"""Engine benchmark: our block-causal streaming rollout vs diffusers-style full-sequence generation.

Both sides use identical weights (diffusers' SanaVideoTransformer3DModel loads our state
dict), the same text states, the same number of Euler flow steps and the same VAE. The
baseline is what SanaVideoPipeline does: denoise every latent frame of the video at once
with FlowMatchEulerDiscreteScheduler, then decode; its first output is the whole video.

Measured side by side in one run, printed as a table of ratios, written to
bench/results/engine.json and bench/results/engine.png:
  - per-block time at block 60 vs block 2 (ours)
  - peak RSS for a 240 s vs a 10 s video (ours and diffusers, each in a fresh subprocess)
  - time to first block of a 60 s video vs diffusers' time to its only output
  - throughput (video frames per second of wall time), ours vs diffusers, 60 s video
  - transformer MFU against the measured fp32 matmul peak of this machine

Usage: python bench/engine.py [--quick]      (--quick: shorter videos, for a smoke run)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
PROMPT = "a red circle moving right on a black background"


def load(config: str, compile: bool = False):
    from sana_serve.engine import load_engine

    engine = load_engine(config, device="cpu", compile=compile)
    # Equal steps on both sides: the diffusers twin takes `steps` for every frame, so ours must
    # not give its first block the config's extra `first_chunk_steps` (a quality setting).
    engine.config.sampling.first_chunk_steps = None
    # Nor classifier-free guidance: the twin runs the conditional branch only, and guidance would
    # double our batch (the config's guidance_scale 3 once made this compare 2x the work).
    engine.config.sampling.guidance_scale = 1.0
    return engine


def diffusers_twin(engine):
    """diffusers' transformer holding exactly our weights. diffusers has only zero padding, so a
    model built with our circular `spatial_padding` gets zeros there: its videos differ at the
    frame edges, its cost (what this compares) does not."""
    from diffusers import SanaVideoTransformer3DModel

    config = {k: v for k, v in engine.transformer.config.items() if k != "spatial_padding"}
    ref = SanaVideoTransformer3DModel(**config).eval()
    ref.load_state_dict(engine.transformer.state_dict(), strict=True)
    return ref.requires_grad_(False)


@torch.no_grad()
def diffusers_generate(engine, ref, seconds: float, seed: int = 0) -> tuple[np.ndarray, float]:
    """SanaVideoPipeline's loop: all latent frames at once, Euler flow steps, decode at the end."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    s = engine.config.sampling
    start = time.perf_counter()
    text, mask = engine.text_encoder.encode([PROMPT])
    frames = engine.total_frames(seconds)
    latent_frames = -(-frames // engine.vae.temporal_compression)
    h, w = engine.latent_hw
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, engine.latent_channels, latent_frames, h, w, generator=g)
    sched = FlowMatchEulerDiscreteScheduler(shift=s.flow_shift)
    sched.set_timesteps(s.steps)
    for t in sched.timesteps:
        v = ref(x, text, t.expand(1), encoder_attention_mask=mask).sample
        x = sched.step(v, t, x).prev_sample
    video = engine.vae.decode(x)
    out = ((video[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()[-frames:]
    return out, time.perf_counter() - start


def ours_generate(engine, seconds: float, seed: int = 0) -> tuple[list[float], float, float, int]:
    """Per-block seconds, time to first block, total seconds, frame count."""
    from sana_serve.engine import GenerationRequest

    start = time.perf_counter()
    per_block, first, frames = [], None, 0
    for block in engine.stream(GenerationRequest(PROMPT, seconds=seconds, seed=seed)):
        if first is None:
            first = time.perf_counter() - start
        per_block.append(block.seconds)
        frames += block.frame_count
    return per_block, first, time.perf_counter() - start, frames


def block_times_alternating(engine, seconds: float, early: int, late: int, repeats: int = 5) -> tuple[float, float]:
    """Median time of block `early` and block `late`, each re-run from a snapshot, in alternation.

    A shared machine's load drifts over a long rollout; alternating the two measurements makes
    them see the same conditions, so the ratio says what the state does, not what the neighbours did.
    """
    from sana_serve.engine import GenerationRequest
    from sana_serve.engine.rollout import Rollout

    req = GenerationRequest(PROMPT, seconds=seconds, seed=0)
    rollout, snaps = Rollout(engine, req), {}
    while rollout.next_index <= late:
        if rollout.next_index in (early, late):
            snaps[rollout.next_index] = rollout.snapshot()
        rollout.next_block()
    times = {early: [], late: []}
    for _ in range(repeats):
        for index in (early, late):
            r = Rollout.restore(engine, req, snaps[index])
            start = time.perf_counter()
            r.next_block()  # folds the previous chunk, denoises and decodes this one: a whole block
            times[index].append(time.perf_counter() - start)
    return statistics.median(times[early]), statistics.median(times[late])


def check_compiled_matches_eager(eager, compiled, seconds: float) -> None:
    """The compiled engine must make the same video (fused kernels round differently: ±1 level)."""
    from sana_serve.engine import GenerationRequest

    def frames(engine):
        req = GenerationRequest(PROMPT, seconds=seconds, seed=0)
        return np.concatenate([b.frames for b in engine.stream(req)]).astype(int)

    diff = np.abs(frames(eager) - frames(compiled))
    print(f"torch.compile vs eager frames: max |diff| {diff.max()}, mean {diff.mean():.4f}", flush=True)
    if diff.max() > 3:
        raise SystemExit("torch.compile changed the output: not benchmarking a broken path")


def rss_child(config: str, side: str, seconds: float) -> int:
    """Peak RSS of a fresh process that generates one video (the number that matters to a host)."""
    cmd = [sys.executable, __file__, "--child", side, "--seconds", str(seconds), "--config", config]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=3600)
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_bytes"])


def compiled_child(args) -> None:
    """torch.compile measured in a fresh process: its caches and guards see nothing but this run."""
    eager, compiled = load(args.config), load(args.config, compile=True)
    block_frames = eager.config.sampling.chunk_frames * eager.vae.temporal_compression
    # Four blocks meet every graph the rollout needs (first chunk without a past, fold without and
    # with a temporal-conv tail, steady denoise): all compiled here, before anything is timed.
    check_compiled_matches_eager(eager, compiled, 4 * block_frames / eager.config.video.fps)
    _, ttfb, total, _ = ours_generate(compiled, args.seconds)
    mfu = transformer_mfu(compiled, args.peak, args.flops)
    print(json.dumps({"ttfb_s": ttfb, "total_s": total, **mfu}))


def child_main(args) -> None:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    if args.child == "compiled":
        return compiled_child(args)
    engine = load(args.config)
    if args.child == "ours":
        ours_generate(engine, args.seconds)
    else:
        diffusers_generate(engine, diffusers_twin(engine), args.seconds)
    print(json.dumps({"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def matmul_peak_gflops(n: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


@torch.no_grad()
def transformer_mfu(engine, peak: float, flops: int | None = None) -> dict:
    """Achieved FLOP/s of one chunk's forward (counted by torch's FlopCounterMode) vs the matmul peak.

    A compiled engine gets the count from the eager one (`flops`): counting inside a compiled
    function would make dynamo guard on the counting mode.
    """
    from torch.utils.flop_counter import FlopCounterMode

    tr = engine.transformer
    s = engine.config.sampling
    h, w = engine.latent_hw
    text = engine.text_context(PROMPT, "", 1.0)
    x = torch.randn(1, engine.latent_channels, s.chunk_frames, h, w)
    t = torch.full((1,), 500.0)
    state = tr.new_state(1)
    if flops is None:
        with FlopCounterMode(display=False) as counter:
            tr.forward_chunk(x, t, text, state)
        flops = counter.get_total_flops()
    for _ in range(3):
        tr.forward_chunk(x, t, text, state)
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        tr.forward_chunk(x, t, text, state)
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    return {"flops_per_chunk_forward": flops, "seconds_per_chunk_forward": sec,
            "achieved_gflops": flops / sec / 1e9, "mfu": flops / sec / 1e9 / peak}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--config", default="shapes-tiny")
    p.add_argument("--child", choices=["ours", "diffusers", "compiled"])
    p.add_argument("--peak", type=float)
    p.add_argument("--flops", type=int)
    p.add_argument("--seconds", type=float)
    args = p.parse_args()
    if args.child:
        return child_main(args)

    engine = load(args.config)
    block_s = engine.config.sampling.chunk_frames * engine.vae.temporal_compression / engine.config.video.fps
    # the per-block comparison needs a block 60: a video of 61 blocks (8 in --quick)
    long_s, short_s, rss_long = (8 * block_s, 4, 60) if args.quick else (61 * block_s, 10, 240)
    ttfb_s = 16 if args.quick else 60
    ref = diffusers_twin(engine)
    random_weights = engine.config.checkpoint is None
    print(f"config {engine.config.name} ({'RANDOM weights' if random_weights else engine.config.checkpoint}), "
          f"{sum(p.numel() for p in engine.transformer.parameters()) / 1e6:.2f}M-param transformer, "
          f"{engine.config.sampling.steps} Euler steps per chunk, torch threads {torch.get_num_threads()}")
    ours_generate(engine, 2)  # warm-up (allocator, caches)
    diffusers_generate(engine, ref, 2)

    # 1. per-block time over a long rollout, then block 2 vs block 60 re-timed in alternation
    per_block, _, _, _ = ours_generate(engine, long_s)
    last = len(per_block)  # blocks counted from 1: block 2 is index 1, the last block is index last-1
    early, late = block_times_alternating(engine, long_s, 1, last - 2)  # block 2 vs block last-1 (a full block)
    # 2. time to first block and throughput, 60 s video
    # Interleaved and best of two: a shared machine's load then hits both sides alike.
    ours_runs, diff_runs = [], []
    for _ in range(2):
        ours_runs.append(ours_generate(engine, ttfb_s))
        diff_runs.append(diffusers_generate(engine, ref, ttfb_s)[1])
    _, ttfb, ours_total, frames = min(ours_runs, key=lambda r: r[2])
    diff_total = min(diff_runs)
    # diffusers' cost growth: per-frame cost at 10 s vs 60 s
    _, diff_short = diffusers_generate(engine, ref, short_s)
    # 3. memory, fresh processes
    rss = {side: {sec: rss_child(args.config, side, sec) for sec in (short_s, rss_long)}
           for side in ("ours", "diffusers")}
    # 4. MFU, eager and with torch.compile (compiled once up front, not timed)
    peak = matmul_peak_gflops()
    mfu = transformer_mfu(engine, peak)
    cmd = [sys.executable, __file__, "--child", "compiled", "--seconds", str(ttfb_s), "--config", args.config,
           "--peak", str(peak), "--flops", str(mfu["flops_per_chunk_forward"])]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if out.returncode:
        raise SystemExit(f"compiled run failed:\n{out.stderr[-3000:]}")
    print(out.stdout.strip().splitlines()[0], flush=True)  # the compiled-vs-eager check
    mfu_compiled = json.loads(out.stdout.strip().splitlines()[-1])
    ttfb_c, ours_total_c = mfu_compiled.pop("ttfb_s"), mfu_compiled.pop("total_s")

    rows = [
        (f"per-block time, block {last - 1} / block 2 (ours, {block_s:g} s blocks)", late / early, "<= 1.05"),
        (f"peak RSS, {rss_long:g} s / {short_s:g} s video (ours)", rss["ours"][rss_long] / rss["ours"][short_s], "<= 1.05"),
        (f"peak RSS, {rss_long:g} s / {short_s:g} s video (diffusers)",
         rss["diffusers"][rss_long] / rss["diffusers"][short_s], "grows"),
        (f"time to first block {ttfb_s:g} s video (ours) / diffusers time to output", ttfb / diff_total, "<= 0.05"),
        (f"throughput ours / diffusers ({ttfb_s:g} s video, equal steps)", diff_total / ours_total, ">= 1.2"),
        (f"throughput ours+torch.compile / diffusers ({ttfb_s:g} s video)", diff_total / ours_total_c, ">= 1.2"),
        (f"time to first block, ours+torch.compile / diffusers ({ttfb_s:g} s)", ttfb_c / diff_total, "<= 0.05"),
        ("transformer MFU vs fp32 matmul peak (ours, one chunk, eager)", mfu["mfu"], "report"),
        ("transformer MFU vs fp32 matmul peak (ours, one chunk, torch.compile)", mfu_compiled["mfu"], "report"),
    ]
    print()
    print(f"{'measure':<72} {'ratio':>8}  target")
    for name, value, target in rows:
        print(f"{name:<72} {value:8.3f}  {target}")
    print()
    print(f"ours: block 2 {early * 1e3:.1f} ms, block {last - 1} {late * 1e3:.1f} ms; "
          f"{ttfb_s:g} s video in {ours_total:.2f} s ({frames / ours_total:.1f} frames/s), first block after {ttfb:.3f} s")
    print(f"diffusers: {ttfb_s:g} s video in {diff_total:.2f} s, {short_s:g} s video in {diff_short:.2f} s")
    print(f"peak RSS MB: " + ", ".join(f"{side} {sec:g}s {v / 2**20:.0f}" for side, d in rss.items() for sec, v in d.items()))
    print(f"matmul peak {peak:.1f} GFLOP/s; transformer chunk forward {mfu['flops_per_chunk_forward'] / 1e9:.3f} GFLOP "
          f"in {mfu['seconds_per_chunk_forward'] * 1e3:.2f} ms = {mfu['achieved_gflops']:.1f} GFLOP/s")

    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"random_weights": random_weights, "per_block_seconds": per_block, "ttfb_s": ttfb,
              "ours_total_s": ours_total, "diffusers_total_s": diff_total, "diffusers_short_s": diff_short,
              "rss_bytes": rss, "matmul_peak_gflops": peak, **mfu,
              "compiled": {"ttfb_s": ttfb_c, "total_s": ours_total_c, **mfu_compiled},
              "ratios": {name: value for name, value, _ in rows}}
    (RESULTS / "engine.json").write_text(json.dumps(result, indent=2))
    plot(per_block, rss, ttfb_s, ours_total, diff_total, RESULTS / "engine.png", ours_total_c)
    print(f"wrote {RESULTS / 'engine.json'} and {RESULTS / 'engine.png'}")


def plot(per_block, rss, seconds, ours_total, diff_total, path: Path, compiled_total: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    ax[0].plot(range(1, len(per_block) + 1), [s * 1e3 for s in per_block], marker=".")
    ax[0].set(xlabel="block", ylabel="ms per block", title="ours: per-block time", ylim=(0, None))
    for side, d in rss.items():
        xs = sorted(d)
        ax[1].plot(xs, [d[x] / 2**20 for x in xs], marker="o", label=side)
    ax[1].set(xlabel="video seconds", ylabel="peak RSS (MB)", title="peak memory", ylim=(0, None))
    ax[1].legend()
    names, totals = ["ours (eager)", "diffusers"], [ours_total, diff_total]
    if compiled_total is not None:
        names, totals = ["ours (eager)", "ours (compiled)", "diffusers"], [ours_total, compiled_total, diff_total]
    ax[2].bar(names, totals)
    ax[2].set(ylabel="seconds", title=f"{seconds:g} s video, wall time")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
