"""Choose the built-in model's sampling defaults by measurement.

Runs `sana-serve eval`'s prompt sets (a fixed subset, fixed seeds) for each sampling setting
around the defaults: steps for the first block (drawn from an empty state), steps per later
block, flow shift, guidance scale. One axis is varied at a time
from the baseline, all in one process on the same weights, so the pass rates and the speeds
(seconds of video per second of wall time) are compared side by side.

    python bench/sampling.py [--checkpoint models/shapes-tiny] [--limit 24] [--long 2]

Writes bench/results/sampling.json and bench/results/sampling.png.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's sana_serve, installed or not
RESULTS = ROOT / "bench" / "results"

# (first-block steps, steps, flow_shift, guidance): the baseline first, then one axis at a time.
BASELINE = (16, 4, 3.0, 2.0)
SETTINGS = [BASELINE, (4, 4, 3.0, 2.0), (8, 4, 3.0, 2.0), (16, 8, 3.0, 2.0), (16, 4, 6.0, 2.0),
            (16, 4, 3.0, 1.0), (16, 4, 3.0, 3.0)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="shapes-tiny")
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--limit", type=int, default=24, help="4 s template prompts per setting")
    ap.add_argument("--long", type=int, default=2, help="60 s videos per setting (every 4 s window must pass)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from sana_serve.engine import load_engine
    from sana_serve.shapes.eval import run_eval

    engine = load_engine(args.config, checkpoint=args.checkpoint)
    rows = []
    for first, steps, shift, guidance in SETTINGS:
        # through the config, not the request: a request's own steps would apply to every block
        s = engine.config.sampling
        s.first_chunk_steps, s.steps, s.flow_shift = first, steps, shift
        short = run_eval(engine, ["template"], limit=args.limit, guidance=guidance, progress=False)
        long = run_eval(engine, ["long"], limit=args.long, guidance=guidance, progress=False)
        t, lg = short["summary"]["template"], long["summary"]["long"]
        row = {"first_chunk_steps": first, "steps": steps, "flow_shift": shift, "guidance": guidance,
               "template_pass": t["pass_rate"], "shape": t["shape_accuracy"], "direction": t["direction_accuracy"],
               "long_pass": lg["pass_rate"], "realtime_factor": t["realtime_factor"]}
        rows.append(row)
        print(f"first block {first} steps, then {steps}, shift {shift:g}, guidance {guidance:g}: template {t['pass_rate']:.0%} "
              f"(shape {t['shape_accuracy']:.0%}, direction {t['direction_accuracy']:.0%}), "
              f"60 s {lg['pass_rate']:.0%}, {t['realtime_factor']:.1f}x real time", flush=True)

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sampling.json").write_text(json.dumps(
        {"limit": args.limit, "long": args.long, "checkpoint": str(args.checkpoint or engine.config.checkpoint),
         "rows": rows}, indent=2))
    plot(rows, RESULTS / "sampling.png")
    print(f"wrote {RESULTS / 'sampling.json'} and {RESULTS / 'sampling.png'}")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['first_chunk_steps']}+{r['steps']} st\nshift {r['flow_shift']:g}\ncfg {r['guidance']:g}" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.bar([i - 0.2 for i in x], [r["template_pass"] for r in rows], 0.4, label="4 s template prompts pass")
    ax.bar([i + 0.2 for i in x], [r["long_pass"] for r in rows], 0.4, label="60 s videos pass")
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("pass rate")
    ax2 = ax.twinx()
    ax2.plot(list(x), [r["realtime_factor"] for r in rows], "k.-", label="x real time")
    ax2.set_ylabel("seconds of video per second")
    ax.legend(loc="upper left", fontsize=8)
    ax2.legend(loc="upper right", fontsize=8)
    ax.set_title("Sampling settings of the built-in model (one axis varied at a time)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
