"""What batch invariance costs: the engine's three ways of serving N concurrent jobs, side by side.

  invariant      Engine.step with batch_invariant=True (the default): one forward per step for
                 all jobs, GEMMs/convs/attention called per request inside it, per-job VAE decode.
                 Every job's frames equal its solo run bit for bit.
  batched        batch_invariant=False (`serve --no-batch-invariance`): one kernel call over the
                 whole batch, one batched VAE pass. Frames depend on the batch.
  one-at-a-time  each job alone, one after the other (Engine.stream).

The jobs are the built-in model's 4 s videos with the config's default sampling (guidance on:
two rows per job), different prompts and seeds, joining one engine call apart (so they are out
of phase, as in the server). Modes are interleaved, in a rotating order, `--repeats` times; the
table shows medians of frames/s and the ratios between modes, plus how far the batched mode's
frames are from the solo ones (max level difference in uint8) and a check that the invariant
mode's are equal. Also timed: one batched transformer forward at N jobs, per mode.

Writes bench/results/batch_invariance.json and bench/results/batch_invariance.png.
Usage: python bench/batch_invariance.py [--jobs 2 4] [--seconds 4] [--repeats 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
PROMPTS = [
    "a red circle moving right on a black background",
    "a blue square moving up on a white background",
    "a green triangle moving left on a gray background",
    "a yellow circle moving down on a black background",
    "a purple square moving right on a gray background",
    "an orange triangle moving up on a black background",
    "a red square moving down on a white background",
    "a blue circle moving left on a black background",
]
MODES = ("invariant", "batched", "one-at-a-time")


def requests(n: int, seconds: float):
    from sana_serve.engine import GenerationRequest

    return [GenerationRequest(PROMPTS[i % len(PROMPTS)], seconds=seconds, seed=100 + i) for i in range(n)]


def run_together(engine, reqs, invariant: bool):
    """All jobs through Engine.step, job i joining after i calls; (frames per job, seconds)."""
    from sana_serve.engine.rollout import Rollout

    engine.batch_invariant = invariant
    rollouts, frames = [None] * len(reqs), [[] for _ in reqs]
    calls = 0
    t0 = time.perf_counter()
    while True:
        for i, req in enumerate(reqs):
            if rollouts[i] is None and calls >= i:
                rollouts[i] = Rollout(engine, req)
        active = [i for i, r in enumerate(rollouts) if r is not None and not r.done]
        if not active and all(r is not None for r in rollouts):
            break
        for i, block in zip(active, engine.step([rollouts[i] for i in active])):
            if block is not None:
                frames[i].append(block.frames)
        calls += 1
    return [np.concatenate(f) for f in frames], time.perf_counter() - t0


def run_one_at_a_time(engine, reqs):
    t0 = time.perf_counter()
    frames = [np.concatenate([b.frames for b in engine.stream(r)]) for r in reqs]
    return frames, time.perf_counter() - t0


def time_forward(engine, reqs, invariant: bool, repeats: int = 5) -> float:
    """Median seconds of one transformer forward holding every job's rows (a denoising step)."""
    from sana_serve.engine.model.state import StateBatch
    from sana_serve.engine.model.transformer import TextContext
    from sana_serve.engine.rollout import Rollout

    rollouts = [Rollout(engine, r) for r in reqs]
    calls = [r._model_call() for r in rollouts]
    x, t = torch.cat([c[0] for c in calls]), torch.cat([c[1] for c in calls])
    text = TextContext.cat([r.text for r in rollouts])
    rows = [r.rows for r in rollouts] if invariant else None
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            states = StateBatch([r.state for r in rollouts], update=[False] * len(rollouts))
            t0 = time.perf_counter()
            engine.transformer.forward_chunk(x, t, text, states, request_rows=rows)
            times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])  # the first call warms the allocator


def max_level_diff(a: list[np.ndarray], b: list[np.ndarray]) -> int:
    return max(int(np.abs(x.astype(int) - y.astype(int)).max()) for x, y in zip(a, b))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, nargs="+", default=[2, 4], help="concurrent jobs per measurement")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--config", default="shapes-tiny")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from sana_serve.engine import load_engine

    engine = load_engine(args.config, device="cpu")
    run_one_at_a_time(engine, requests(1, 2.0))  # warm-up: text encoder cache, allocator

    result = {"threads": args.threads, "seconds": args.seconds, "repeats": args.repeats,
              "config": args.config, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"), "by_jobs": {}}
    print(f"{'jobs':>4}  {'invariant f/s':>13}  {'batched f/s':>11}  {'alone f/s':>9}  "
          f"{'inv/batched':>11}  {'inv/alone':>9}  {'batched/alone':>13}  {'fwd inv/batched':>15}  "
          f"{'batched max diff':>16}  invariant exact")
    for n in args.jobs:
        reqs = requests(n, args.seconds)
        total_frames = n * engine.total_frames(args.seconds)
        secs = {m: [] for m in MODES}
        exact, batched_diff = True, 0
        for rep in range(args.repeats):
            order = MODES[rep % 3:] + MODES[:rep % 3]  # rotate, so no mode always runs first
            out = {}
            for mode in order:
                if mode == "one-at-a-time":
                    out[mode], s = run_one_at_a_time(engine, reqs)
                else:
                    out[mode], s = run_together(engine, reqs, invariant=mode == "invariant")
                secs[mode].append(s)
            exact &= all(np.array_equal(a, b) for a, b in zip(out["invariant"], out["one-at-a-time"]))
            batched_diff = max(batched_diff, max_level_diff(out["batched"], out["one-at-a-time"]))
        fps = {m: total_frames / statistics.median(v) for m, v in secs.items()}
        fwd = {m: time_forward(engine, reqs, invariant=m == "invariant") for m in ("invariant", "batched")}
        engine.batch_invariant = True
        row = {
            "frames_per_s": fps, "seconds": secs, "forward_s": fwd,
            "invariant_over_batched": fps["invariant"] / fps["batched"],
            "invariant_over_one_at_a_time": fps["invariant"] / fps["one-at-a-time"],
            "batched_over_one_at_a_time": fps["batched"] / fps["one-at-a-time"],
            "forward_invariant_over_batched_time": fwd["invariant"] / fwd["batched"],
            "batched_max_level_diff_vs_alone": batched_diff, "invariant_equals_alone": exact,
        }
        result["by_jobs"][str(n)] = row
        print(f"{n:>4}  {fps['invariant']:>13.1f}  {fps['batched']:>11.1f}  {fps['one-at-a-time']:>9.1f}  "
              f"{row['invariant_over_batched']:>11.3f}  {row['invariant_over_one_at_a_time']:>9.3f}  "
              f"{row['batched_over_one_at_a_time']:>13.3f}  {row['forward_invariant_over_batched_time']:>15.3f}  "
              f"{batched_diff:>16}  {exact}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "batch_invariance.json").write_text(json.dumps(result, indent=2))
    plot(result, RESULTS / "batch_invariance.png")
    print(f"wrote {RESULTS / 'batch_invariance.json'} and {RESULTS / 'batch_invariance.png'}")
    if not all(r["invariant_equals_alone"] for r in result["by_jobs"].values()):
        sys.exit("batch-invariant frames differ from the solo runs")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    jobs = list(result["by_jobs"])
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.27
    for k, mode in enumerate(MODES):
        values = [result["by_jobs"][j]["frames_per_s"][mode] for j in jobs]
        ax.bar([i + (k - 1) * width for i in range(len(jobs))], values, width, label=mode)
    ax.set_xticks(range(len(jobs)), [f"{j} jobs" for j in jobs])
    ax.set_ylabel("video frames / s (median)")
    ax.set_title(f"Batch invariance cost, {result['config']}, {result['threads']} thread(s), "
                 f"{result['seconds']:g} s videos")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
