"""Does a larger training batch buy time on this machine? Training throughput per batch size.

Times the transformer's training step exactly as `sana-serve train transformer
--first-chunk-batch B --batch B` runs it (B whole two-chunk clips through the stream state,
plus B first chunks alone; forward, backward, AdamW), on the shipped architecture with random
weights and random latents, every batch size in one process, side by side.

    python bench/train_step.py [--batches 16 32 64] [--steps 5]

Writes bench/results/train_step.json and bench/results/train_step.png.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's sana_serve, installed or not
RESULTS = ROOT / "bench" / "results"


def seconds_per_step(model, opt, recipe, batch: int, steps: int, text_len: int, caption_channels: int) -> float:
    from sana_serve.shapes.train import teacher_forced_loss

    c, h, w = model.config["in_channels"], 8, 8
    n = recipe.chunk_frames
    gen = torch.Generator().manual_seed(0)
    clips, firsts = torch.randn(batch, c, 2 * n, h, w), torch.randn(batch, c, n, h, w)
    states, mask = torch.randn(batch, text_len, caption_channels), torch.ones(batch, text_len, dtype=torch.bool)
    times = []
    for _ in range(steps + 1):  # the first step warms the allocator up and is not counted
        start = time.perf_counter()
        text = model.encode_text(states, mask)
        loss = teacher_forced_loss(model, clips, text, recipe, gen) + teacher_forced_loss(model, firsts, text, recipe, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    times = sorted(times[1:])
    return times[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--steps", type=int, default=5, help="timed steps per batch size (median reported)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from sana_serve.engine.config import load_config
    from sana_serve.engine.model.transformer import SanaVideoTransformer
    from sana_serve.shapes.train import FlowRecipe

    cfg = load_config("shapes-tiny")
    s = cfg.sampling
    recipe = FlowRecipe(s.chunk_frames, s.window_chunks, s.flow_shift)
    arch = cfg.random_init["transformer"]
    torch.manual_seed(0)
    model = SanaVideoTransformer(**arch).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rows = []
    for b in args.batches:
        t = seconds_per_step(model, opt, recipe, b, args.steps, cfg.text_max_length, arch["caption_channels"])
        rows.append({"batch": b, "first_chunk_batch": b, "s_per_step": t, "clips_per_s": 2 * b / t})
        print(f"batch {b} + {b} first chunks: {t:.2f} s/step, {2 * b / t:.1f} clips/s "
              f"({2 * b / t / rows[0]['clips_per_s']:.2f}x batch {rows[0]['batch']}'s throughput)", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_step.json").write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2))
    plot(rows, RESULTS / "train_step.png")
    print(f"wrote {RESULTS / 'train_step.json'} and {RESULTS / 'train_step.png'}")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar([str(r["batch"]) for r in rows], [r["clips_per_s"] for r in rows])
    ax.set_xlabel("batch (clips + as many first chunks)")
    ax.set_ylabel("clips per second")
    ax.set_title("transformer training throughput, 2-core CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
