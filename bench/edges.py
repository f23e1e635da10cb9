"""Where in the frame does a model get the shape wrong? Shape accuracy by distance to the edge.

The Shapes world is a torus: an object near an edge is drawn split across it, half on each
side. For every frame of the eval's template videos (same prompts and seeds as
`sana-serve eval --set template`), the checker's reading gives the object's centroid and
shape; this bins the frames by the centroid's distance to the nearest frame edge and reports
the share whose shape is the prompt's, in the first block (drawn from the prompt alone) and
in the later ones (continued from the state). Checkpoints are compared side by side on the
same videos: the shipped model and any others given.

    python bench/edges.py [--checkpoint DIR ...] [--seed-base 1000] [--limit 48]

Writes bench/results/edges.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's sana_serve, installed or not
RESULTS = ROOT / "bench" / "results"
BINS = [(0, 4), (4, 8), (8, 12), (12, 16), (16, 33)]  # px from the nearest edge (the frame is 64 px)


def edge_accuracy(engine, cases) -> dict:
    from sana_serve.engine.rollout import GenerationRequest
    from sana_serve.shapes.checker import check_video, read_frames

    width, height = engine.config.video.width, engine.config.video.height
    block = engine.vae.temporal_compression * engine.config.sampling.chunk_frames  # video frames per block
    rows, passed = [], 0  # (frame index, px from the edge, shape right)
    for case in cases:
        frames = np.concatenate([b.frames for b in engine.stream(
            GenerationRequest(case.prompt, seconds=case.seconds, seed=case.seed))])
        passed += bool(check_video(frames, case.combo, fps=engine.config.video.fps).passed)
        for i, r in enumerate(read_frames(frames)):
            if r.centroid is not None:
                x, y = r.centroid[0] % width, r.centroid[1] % height
                rows.append((i, min(x, width - x, y, height - y), r.shape == case.combo[1]))
    a = np.array(rows, dtype=float)
    table = {}
    for name, in_block in (("first block", a[:, 0] < block), ("later blocks", a[:, 0] >= block)):
        table[name] = [{"px_from_edge": f"{lo}-{hi}", "frames": int(m.sum()),
                        "shape_right": float(a[m, 2].mean()) if m.any() else None}
                       for lo, hi in BINS for m in [in_block & (a[:, 1] >= lo) & (a[:, 1] < hi)]]
    return {"template_passed": passed, "videos": len(cases), "bins": table}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, action="append", default=[],
                    help="another checkpoint directory to compare with the shipped model")
    ap.add_argument("--seed-base", type=int, default=1000)
    ap.add_argument("--limit", type=int, default=None, help="template videos (default: the eval's 48)")
    args = ap.parse_args()

    from sana_serve.engine import load_engine
    from sana_serve.shapes.eval import build_cases

    cases = build_cases("template", args.limit, seed_base=args.seed_base)
    report = {"seed_base": args.seed_base, "models": {}}
    for ckpt in [None, *args.checkpoint]:
        name = str(ckpt) if ckpt else "shipped"
        report["models"][name] = r = edge_accuracy(load_engine("shapes-tiny", checkpoint=ckpt, device="cpu"), cases)
        print(f"\n{name}: template {r['template_passed']}/{r['videos']} pass; shape right, by px from the edge")
        for block, bins in r["bins"].items():
            print(f"  {block:12s} " + "  ".join(
                f"{b['px_from_edge']:>5s}: " + ("  -  " if b["shape_right"] is None else f"{b['shape_right']:.3f}")
                + f" ({b['frames']})" for b in bins))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "edges.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {RESULTS / 'edges.json'}")


if __name__ == "__main__":
    main()
