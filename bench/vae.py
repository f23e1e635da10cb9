"""How well does a VAE reconstruct the Shapes world? The checker's verdict on reconstructions,
and how far apart its code keeps the colours.

Renders clips of every colour x shape x direction x background value (the eval's template
combinations at random start positions, fixed seed), encodes and decodes them through each
VAE, and judges the reconstructions with the same checker `sana-serve eval` uses; a VAE whose
reconstructions fail caps what any transformer on top of it can pass. Then the colour
separation (`colour_separation`): a reconstruction can pass while the code puts two colours so
close that the transformer's small misses swap them. All VAEs compared side by side on the
same clips: the shipped one and any training work directories given.

    python bench/vae.py [--work /tmp/shapes-train ...] [--clips 144] [--seconds 4]

Writes bench/results/vae.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's sana_serve, installed or not
RESULTS = ROOT / "bench" / "results"


def judge(vae, clips, fps: int) -> dict:
    from sana_serve.engine.rollout import to_uint8
    from sana_serve.shapes import check_video
    from sana_serve.shapes.train import to_tensor

    passed, shape, psnr = 0, [], []
    start = time.perf_counter()
    for video, combo in clips:
        with torch.no_grad():
            recon = vae.decode(vae.encode(to_tensor(video)[None]))
        frames = to_uint8(recon)
        err = (frames.astype(np.float64) - video.astype(np.float64)) ** 2
        psnr.append(10 * np.log10(255.0 ** 2 / max(err.mean(), 1e-12)))
        r = check_video(frames, combo, fps=fps)
        passed += r.passed
        shape.append(r.shape_fraction)
    return {"clips": len(clips), "passed": passed, "shape_accuracy": float(np.mean(shape)),
            "psnr_db": float(np.mean(psnr)), "seconds": time.perf_counter() - start}


@torch.no_grad()
def colour_separation(vae, clips) -> dict:
    """Distance between the codes of the same scene in two colours, in units of the code's spread.

    The transformer denoises normalised latents (each channel divided by its spread over the
    training clips), so its samples miss the encoded latents by some share of that spread; two
    colours whose codes sit close in those units swap under a small miss (the three-hour model's
    orange read as red, block after block: model card). The spread is measured here on `clips`
    (full frames, as the latent bank), so VAEs with and without stored statistics compare alike.
    Per scene (each shape x background x four start positions, moving right) and colour pair:
    the RMS difference over the latent cells the object touches."""
    from sana_serve.shapes import BACKGROUNDS, COLORS, SHAPES, Scene, render
    from sana_serve.shapes.train import to_tensor

    def code(video):
        return vae.encode(to_tensor(video)[None])[0]  # (C, T/4, H/8, W/8), normalised by the VAE's own stats

    spread = torch.cat([code(v).flatten(1) for v, _ in clips], dim=1).std(dim=1).view(-1, 1, 1, 1)
    colours = list(COLORS)
    pairs: dict[str, list[float]] = {}
    tc, sc = vae.temporal_compression, vae.spatial_compression
    for shape in SHAPES:
        for background in BACKGROUNDS:
            for x, y in ((5, 9), (21, 41), (37, 25), (53, 57)):
                videos = [render(Scene(c, shape, "right", background, x=x, y=y), 4 * tc) for c in colours]
                touched = (videos[0] != np.array(BACKGROUNDS[background], np.uint8)).any(-1)  # (T, H, W)
                t, h, w = touched.shape
                cells = torch.from_numpy(touched.reshape(t // tc, tc, h // sc, sc, w // sc, sc).any(axis=(1, 3, 5)))
                codes = [code(v) / spread for v in videos]
                for i in range(len(colours)):
                    for j in range(i + 1, len(colours)):
                        d = (codes[i] - codes[j]).pow(2).mean(dim=0)[cells].mean().sqrt()
                        pairs.setdefault(f"{colours[i]}-{colours[j]}", []).append(float(d))
    medians = {k: float(np.median(v)) for k, v in pairs.items()}
    closest = min(medians, key=medians.get)
    return {"pairs": medians, "closest_pair": closest, "closest": medians[closest],
            "mean": float(np.mean(list(medians.values())))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, action="append", default=[], help="a `sana-serve train` work directory")
    ap.add_argument("--clips", type=int, default=144,
                    help="clips to judge (48 were too few to rank VAEs within a few passes of each other)")
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()
    torch.set_num_threads(2)

    from sana_serve.engine.config import load_config
    from sana_serve.shapes.eval import build_cases
    from sana_serve.engine.model.vae import load_vae
    from sana_serve.shapes import random_scene, render
    from sana_serve.shapes.train import load_trained_vae

    cfg = load_config("shapes-tiny")  # the VAE alone: no transformer or text encoder to load
    fps = cfg.video.fps
    rng = np.random.default_rng(0)
    frames = int(args.seconds * fps)
    clips = [(render(random_scene(rng, [c.combo]), frames), c.combo) for c in build_cases("template", args.clips)]
    vaes = {"shipped": load_vae(cfg.checkpoint / "vae")}
    vaes.update({str(w): load_trained_vae(w, "shapes-tiny") for w in args.work})
    rows = {}
    for name, vae in vaes.items():
        rows[name] = judge(vae, clips, fps)
        rows[name]["colour_separation"] = sep = colour_separation(vae, clips)
        r = rows[name]
        print(f"{name}: {r['passed']}/{r['clips']} reconstructions pass, shape {r['shape_accuracy']:.1%} "
              f"of frames, PSNR {r['psnr_db']:.1f} dB; colour separation (code spreads) mean {sep['mean']:.2f}, "
              f"closest {sep['closest_pair']} {sep['closest']:.2f}, orange-red {sep['pairs']['red-orange']:.2f}",
              flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "vae.json").write_text(json.dumps(rows, indent=2))
    print(f"wrote {RESULTS / 'vae.json'}")


if __name__ == "__main__":
    main()
