"""How well the VAE in progress reconstructs: Shapes checker verdicts on 48 reconstructed 4 s clips."""
import sys

import numpy as np, torch
from pathlib import Path
from engine.train import load_trained_vae, random_clip, to_tensor
from engine.shapes import all_combinations
from engine.shapes.checker import check_video
torch.set_num_threads(2)
vae = load_trained_vae(Path(sys.argv[1] if len(sys.argv) > 1 else "/work/train"), "shapes-tiny")
rng = np.random.default_rng(123)
combos = all_combinations()
passed, psnr, fr = 0, [], {"bg": [], "color": [], "shape": [], "dir": []}
with torch.no_grad():
    for i in range(48):
        video, combo = random_clip(rng, 64, combos)
        x = to_tensor(video)[None]
        mean, _ = vae.encode_distribution(x)
        rec = vae.decode(vae.normalize_latents(mean))
        frames = ((rec[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).numpy()
        r = check_video(frames, combo)
        passed += r.passed
        mse = ((frames.astype(float) - video.astype(float)) ** 2).mean()
        psnr.append(10 * np.log10(255 ** 2 / max(mse, 1e-9)))
        for k, v in zip(fr, (r.background_fraction, r.color_fraction, r.shape_fraction, r.direction_fraction)):
            fr[k].append(v)
print(f"VAE reconstructions passing the checker: {passed}/48; PSNR {np.mean(psnr):.1f} dB; "
      + ", ".join(f"{k} {np.mean(v):.2f}" for k, v in fr.items()))
