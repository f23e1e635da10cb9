"""Training the built-in Shapes model on CPU: first the causal VAE, then the block-causal transformer.

    sana-serve train vae         --work DIR [--steps N]   # reconstruction + small KL
    sana-serve train latents     --work DIR [--clips N]   # render + encode a clip bank once
    sana-serve train transformer --work DIR [--steps N]   # flow matching, teacher-forced chunks
    sana-serve train export      --work DIR --out models/shapes-tiny

Every phase resumes from DIR/<phase>.pt (model, optimiser, step, RNG) and appends its loss to
DIR/<phase>_loss.csv; Ctrl-C or a kill loses at most `--save-every` steps.

The transformer is trained exactly the way the engine samples it: chunk by chunk through
`forward_chunk`, a noisy chunk (own noise level per chunk, diffusion-forcing style) attends to
the state built from the clean earlier chunks, and the clean chunk is folded in afterwards.
Gradients flow through the state into the earlier clean passes, so the model learns what to
write into the state as well as how to read it. Attention is windowed like inference.
"""
from __future__ import annotations

import csv
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sana_serve.engine.config import load_config
from sana_serve.engine.model.transformer import SanaVideoTransformer
from sana_serve.engine.model.vae import CausalVideoVAE
from sana_serve.engine.sampler import shift_sigmas
from sana_serve.shapes import Scene, paraphrase, render, template_prompt, training_combinations

log = logging.getLogger("sana_serve.train")


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def random_clip(rng: np.random.Generator, frames: int, combos) -> tuple[np.ndarray, tuple]:
    combo = combos[rng.integers(len(combos))]
    scene = Scene(*combo, x=int(rng.integers(64)), y=int(rng.integers(64)))
    return render(scene, frames), combo


def to_tensor(video: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, H, W) in [-1, 1]."""
    return torch.from_numpy(video).permute(3, 0, 1, 2).float() / 127.5 - 1


class Checkpointer:
    """Resumable training state + a CSV loss log for one phase (means over each logging interval)."""

    _OWN_ENTRIES = ("model", "opt", "opt_kind", "step", "torch_rng")

    def __init__(self, work: Path, phase: str):
        self.path = work / f"{phase}.pt"
        self.log_path = work / f"{phase}_loss.csv"
        work.mkdir(parents=True, exist_ok=True)
        self._sums: dict[str, float] = {}
        self._count = 0
        self._saved: dict | None = None
        self.extra: dict = {}

    def accumulate(self, **values) -> None:
        for k, v in values.items():
            self._sums[k] = self._sums.get(k, 0.0) + float(v)
        self._count += 1

    def flush(self, step: int) -> None:
        if self._count:
            self.log(step, **{k: v / self._count for k, v in self._sums.items()})
        self._sums, self._count = {}, 0

    def read(self) -> dict:
        """The saved checkpoint ({} without one), read from disk once: callers that check its
        entries before `load` (a VAE's training scope) share the read with it."""
        if self._saved is None:
            self._saved = torch.load(self.path, map_location="cpu", weights_only=False) if self.path.is_file() else {}
        return self._saved

    def load(self, model, opt, load_opt: bool = True) -> int:
        """Resume: the step to continue from (0 without a checkpoint). `load_opt=False` starts
        the optimizer afresh, for a run that trains other parameters than the saved one did.
        The checkpoint's other entries (what `save` got as `extra`) are left in `self.extra`."""
        ck, self._saved = self.read(), None
        if not ck:
            self._drop_rows_after(0)  # a run killed before its first save starts over
            return 0
        model.load_state_dict(ck["model"])
        saved = ck.get("opt_kind", "AdamW")  # checkpoints from before the choice were AdamW
        if saved != type(opt).__name__:
            raise SystemExit(f"{self.path} was trained with {saved}, not {type(opt).__name__}: "
                             "resume with the optimizer it was started with")
        if "opt" not in ck:  # a weights-only snapshot (what gets committed mid-training): Adam starts afresh
            log.warning("%s has no optimizer state: resuming with a fresh optimizer", self.path)
        elif load_opt:
            opt.load_state_dict(ck["opt"])
        torch.set_rng_state(ck["torch_rng"])
        step = int(ck["step"])
        self.extra = {k: v for k, v in ck.items() if k not in self._OWN_ENTRIES}
        self._drop_rows_after(step)
        return step

    def _drop_rows_after(self, step: int) -> None:
        """A kill after the last checkpoint leaves log rows for steps the resumed run trains
        again; drop them, so the log (and the loss plot, and the timings read from it) has
        each step once."""
        if not self.log_path.is_file():
            return
        with self.log_path.open(newline="") as f:
            rows = list(csv.reader(f))
        kept = rows[:1] + [r for r in rows[1:] if r and int(r[0]) <= step]
        if len(kept) < len(rows):
            tmp = self.log_path.with_suffix(".tmp")
            with tmp.open("w", newline="") as f:
                csv.writer(f).writerows(kept)
            os.replace(tmp, self.log_path)

    def save(self, model, opt, step: int, extra: dict | None = None) -> None:
        tmp = self.path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "opt_kind": type(opt).__name__, "step": step,
                    "torch_rng": torch.get_rng_state(), **(extra or {})}, tmp)
        os.replace(tmp, self.path)  # atomic: a kill mid-save keeps the previous checkpoint

    def log(self, step: int, **values) -> None:
        new = not self.log_path.is_file()
        with self.log_path.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "time", *values])
            w.writerow([step, f"{time.time():.1f}", *(f"{v:.6f}" for v in values.values())])


def cosine_lr(step: int, total: int, base: float, warmup: int = 100, cooldown: int = 0) -> float:
    """Warm-up, then cosine from `base` to a floor of base/10 at `total`. `cooldown` > 0 takes the
    last `cooldown` steps linearly down to zero from wherever the cosine is (a warmup-stable-decay
    style anneal: a resumed phase can end with one, which the floor alone never gives)."""
    if step < warmup:
        lr = base * (step + 1) / warmup
    else:
        lr = base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup)))))
    if cooldown and step >= total - cooldown:
        lr *= (total - step) / cooldown
    return lr


def _progress(total: int, initial: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------
# phase 1: VAE
# ---------------------------------------------------------------------------------------------
def object_crop_clip(rng: np.random.Generator, frames: int, size: int, combos) -> np.ndarray:
    """A `size`x`size` window of a rendered clip, with the object starting inside it.

    The VAE is a conv net, so it learns the same thing from a window around the object as
    from the whole frame, at a fraction of the cost: a 64x64 frame is ~95% plain background.
    The object's start is uniform over the window's pixels (every phase of the 8 px latent
    grid), and it may leave the window, which looks like wrapping over the frame's edge."""
    combo = combos[rng.integers(len(combos))]
    margin = 4
    scene = Scene(*combo, x=int(rng.integers(margin, size - margin)), y=int(rng.integers(margin, size - margin)))
    return render(scene, frames)[:, :size, :size]


def reconstruction_loss(recon: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
    """L1 + L2 on pixels and on their spatial gradients, 8x weight on and around the object.

    The object covers ~5% of a frame but is all the checker (and a viewer) cares about. The
    weight covers the object dilated by 3 px, not just its pixels: with only the object
    weighted, painting a blob larger than the object is cheap, and the three shapes all
    decode as the same rounded blob. The gradient term rewards crisp edges and corners."""
    bg = video.flatten(3).median(dim=3).values[..., None, None]  # per frame and channel
    obj = (video - bg).abs().amax(dim=1, keepdim=True) > 0.05
    near = F.max_pool3d(obj.float(), (1, 7, 7), stride=1, padding=(0, 3, 3))
    weight = 1 + 7 * near

    def weighted(err, w):
        return ((err.abs() + err.pow(2)) * w).mean() / w.mean()

    err = recon - video
    loss = weighted(err, weight)
    for dim in (3, 4):
        grad_err = err.diff(dim=dim)
        w = torch.minimum(weight.narrow(dim, 1, weight.shape[dim] - 1), weight.narrow(dim, 0, weight.shape[dim] - 1))
        loss = loss + weighted(grad_err, w)
    return loss


def noisy_latents(mean: torch.Tensor, logvar: torch.Tensor, latent_noise: float = 0.0) -> torch.Tensor:
    """A posterior sample, plus `latent_noise` times each channel's spread over the batch.

    The decoder will be fed the transformer's samples, which land near the encoded latents, not
    on them. Trained only on the posterior (std ~1 % of a channel's spread once KL is this weak),
    the code packed orange and red 2x closer, in the normalised units the transformer works in,
    than the shipped VAE's (model card), and a small miss decoded orange as red. Noise scaled to
    the spread cannot be beaten by scaling the code up: to stay decodable, what the decoder must
    tell apart (colours, shapes) has to take a larger share of the spread. It costs detail: at 0.5
    the colours sit twice as far apart and the shapes come back worse (model card)."""
    z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
    if latent_noise:
        spread = mean.detach().std(dim=(0, 2, 3, 4), keepdim=True)
        z = z + latent_noise * spread * torch.randn_like(mean)
    return z


def train_vae(work: Path, config: str, steps: int, batch: int = 8, frames: int = 16, lr: float = 1e-3,
              kl_weight: float = 1e-4, save_every: int = 100, seed: int = 0, crop: int | None = None,
              latent_noise: float = 0.0, freeze_encoder: bool = False) -> CausalVideoVAE:
    """`latent_noise`: see `noisy_latents` (0 keeps the shipped recipe's draws exactly).

    `freeze_encoder` trains the decoder only: a fine-tune that keeps the code (and so a latent
    bank or transformer built on it) and sharpens what the decoder makes of it, e.g. after a
    `latent_noise` run that spread the colours apart at the cost of detail."""
    cfg = load_config(config)
    torch.manual_seed(seed)
    vae = CausalVideoVAE(**(cfg.random_init or {}).get("vae", {}))
    trained = list((vae.decoder if freeze_encoder else vae).parameters())
    vae.encoder.requires_grad_(not freeze_encoder)
    opt = torch.optim.AdamW(trained, lr=lr, weight_decay=0.0)
    ck = Checkpointer(work, "vae")
    scope = "decoder" if freeze_encoder else "all"
    saved = ck.read()
    if freeze_encoder and not saved:
        raise ValueError(f"--freeze-encoder fine-tunes a trained VAE's decoder, and {ck.path} does not exist: "
                         "train the VAE first")
    saved_scope = saved.get("trains", "all")
    if saved_scope == "decoder" and not freeze_encoder:
        # Training the encoder now would silently invalidate the latent bank built on its code.
        raise ValueError(f"{ck.path} is a decoder-only fine-tune: resume it with --freeze-encoder")
    if saved and saved_scope != scope:
        log.info("%s: the decoder-only fine-tune starts with a fresh optimizer", ck.path)
    step = ck.load(vae, opt, load_opt=saved_scope == scope)
    kept = {"trains": scope}
    if freeze_encoder and "latent_stats" in ck.extra:  # the code is unchanged: the bank's statistics hold
        kept["latent_stats"] = ck.extra["latent_stats"]
    del saved
    rng = np.random.default_rng(seed + step)  # resumed runs continue with fresh, reproducible data
    from sana_serve.shapes import all_combinations

    combos = all_combinations()  # the VAE only reconstructs pixels: every combination is fair game
    if crop is not None and (crop % vae.spatial_compression or not 16 <= crop <= 64):
        raise ValueError(f"crop must be a multiple of {vae.spatial_compression} in [16, 64], got {crop}")
    if frames < 1 or frames % vae.temporal_compression:
        raise ValueError(f"frames must be a positive multiple of {vae.temporal_compression}, got {frames}")
    bar = _progress(steps, step, "vae")
    vae.train()
    while step < steps:
        if crop:
            clips = [object_crop_clip(rng, frames, crop, combos) for _ in range(batch)]
        else:
            clips = [random_clip(rng, frames, combos)[0] for _ in range(batch)]
        video = torch.stack([to_tensor(c) for c in clips])
        with torch.set_grad_enabled(not freeze_encoder):
            mean, logvar = vae.encode_distribution(video)
        z = noisy_latents(mean, logvar, latent_noise)
        recon = vae.decode(vae.normalize_latents(z))
        rec = reconstruction_loss(recon, video)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
        loss = rec + kl_weight * kl
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(rec=f"{rec.item():.4f}", kl=f"{kl.item():.3f}")
        ck.accumulate(loss=loss.item(), rec=rec.item(), kl=kl.item())
        if step % 10 == 0:
            ck.flush(step)
        if step % save_every == 0 or step == steps:
            ck.save(vae, opt, step, extra=kept)
    bar.close()
    vae.eval()
    return vae


def load_trained_vae(work: Path, config: str) -> CausalVideoVAE:
    cfg = load_config(config)
    vae = CausalVideoVAE(**(cfg.random_init or {}).get("vae", {}))
    ck = torch.load(work / "vae.pt", map_location="cpu", weights_only=False)
    vae.load_state_dict(ck["model"])
    stats = ck.get("latent_stats")
    if stats is not None:
        vae = CausalVideoVAE(**{**vae.config, "latent_mean": stats["mean"], "latent_std": stats["std"]})
        vae.load_state_dict(ck["model"])
    return vae.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# phase 2: a bank of encoded clips (rendering + encoding is a third of a step otherwise)
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def build_latent_bank(work: Path, config: str, clips: int, chunks: int = 2, seed: int = 1) -> None:
    """`clips` rendered training clips of `chunks` chunks each, encoded once (fp16 on disk)."""
    vae = load_trained_vae(work, config)
    latent_frames = chunks * load_config(config).sampling.chunk_frames
    ck_path = work / "vae.pt"
    ck = torch.load(ck_path, map_location="cpu", weights_only=False)
    rng = np.random.default_rng(seed)
    combos = training_combinations()
    frames = latent_frames * vae.temporal_compression
    raw, labels = [], []
    from tqdm import tqdm

    for start in tqdm(range(0, clips, 16), desc="encode clips", unit="batch"):
        n = min(16, clips - start)
        batch = [random_clip(rng, frames, combos) for _ in range(n)]
        video = torch.stack([to_tensor(v) for v, _ in batch])
        mean, _ = vae.encode_distribution(video)
        raw.append(mean.half())
        labels += [c for _, c in batch]
    raw = torch.cat(raw).float()
    # per-channel statistics so the transformer sees unit-variance latents
    mean = raw.mean(dim=(0, 2, 3, 4))
    std = raw.std(dim=(0, 2, 3, 4))
    ck["latent_stats"] = {"mean": mean.tolist(), "std": std.tolist()}
    torch.save(ck, ck_path)
    latents = ((raw - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)).half()
    torch.save({"latents": latents, "combos": labels}, work / "latents.pt")


# ---------------------------------------------------------------------------------------------
# phase 3: transformer
# ---------------------------------------------------------------------------------------------
@dataclass
class FlowRecipe:
    chunk_frames: int
    window_chunks: int | None
    flow_shift: float
    uncond_prob: float = 0.1  # empty prompt, so classifier-free guidance is available
    context_noise: float = 0.05  # max noise on the clean context: robustness to imperfect own output
    # Share of clips whose context is the model's own one-step estimate of the chunk instead of
    # the chunk itself. A rollout's later blocks are exactly such estimates: with 4 Euler steps at
    # flow shift 3, a block's last step jumps from noise level 0.5 straight to x0. Training on
    # them teaches the continuation to correct what its own blocks get wrong instead of copying it.
    own_context: float = 0.0
    own_context_levels: tuple[float, float] = (0.1, 0.6)  # noise levels the estimate starts from


class PromptBank:
    """The frozen text encoder's output for a fixed pool of training prompts, computed once.

    Running MiniLM on every batch would cost about as much as the transformer step itself;
    the world's prompts are few. Per combination: the template and `paraphrases` rewordings
    (the eval's paraphrase set draws its own, so it still tests unseen wordings)."""

    def __init__(self, text_encoder, combos, paraphrases: int = 12, seed: int = 7):
        from tqdm import tqdm

        rng = np.random.default_rng(seed)
        texts, self.rows = [""], {}
        for combo in combos:
            variants = {paraphrase(*combo, rng=rng) for _ in range(paraphrases)} - {template_prompt(*combo)}
            self.rows[tuple(combo)] = (len(texts), list(range(len(texts) + 1, len(texts) + 1 + len(variants))))
            texts += [template_prompt(*combo), *sorted(variants)]
        states, masks = [], []
        with torch.no_grad():
            for start in tqdm(range(0, len(texts), 64), desc="encode prompts", unit="batch"):
                s, m = text_encoder.encode(texts[start:start + 64])
                states.append(s)
                masks.append(m)
        self.texts = texts
        self.states, self.mask = torch.cat(states), torch.cat(masks)
        self.empty = 0

    def sample(self, rng: np.random.Generator, combo) -> int:
        """Row of a prompt for `combo`: half the time the template, else a paraphrase, so both
        phrasings map to the same scene."""
        template, variants = self.rows[tuple(combo)]
        return template if rng.random() < 0.5 else variants[rng.integers(len(variants))]

    def batch(self, rng: np.random.Generator, combos, uncond_prob: float):
        """(states, mask) for one prompt per combination, a fraction `uncond_prob` left empty."""
        rows = [self.empty if rng.random() < uncond_prob else self.sample(rng, c) for c in combos]
        return self.states[rows], self.mask[rows]


def own_estimate(model: SanaVideoTransformer, x0: torch.Tensor, text, state, recipe: FlowRecipe,
                 gen: torch.Generator) -> torch.Tensor:
    """`x0` with a share `recipe.own_context` of its clips replaced by the model's one-step
    estimate from a noised copy (through the same state, without gradient): the kind of chunk
    the engine's rollout feeds back into the state."""
    b = x0.shape[0]
    lo, hi = recipe.own_context_levels
    s = (lo + (hi - lo) * torch.rand(b, generator=gen)).view(b, 1, 1, 1, 1)
    pick = (torch.rand(b, generator=gen) < recipe.own_context).view(b, 1, 1, 1, 1)
    noisy = (1 - s) * x0 + s * torch.randn(x0.shape, generator=gen)
    with torch.no_grad():
        estimate = noisy - s * model.forward_chunk(noisy, 1000 * s.flatten(), text, state)
    return torch.where(pick, estimate, x0)


def teacher_forced_loss(model: SanaVideoTransformer, latents: torch.Tensor, text, recipe: FlowRecipe,
                        gen: torch.Generator, first_chunk: int | None = None) -> torch.Tensor:
    """Flow-matching loss of every chunk of `latents` (B, C, F, H, W), each at its own noise level,
    predicted from the clean earlier chunks through the stream state (exactly the sampling path).

    `first_chunk` frames form the first chunk (the engine's first block takes the remainder of
    the video's length, so it can be shorter than the others)."""
    b, _, frames, _, _ = latents.shape
    n = recipe.chunk_frames
    first = first_chunk or n
    chunks = [latents[:, :, :first]] + (list(latents[:, :, first:].split(n, dim=2)) if frames > first else [])
    state = model.new_state(b, recipe.window_chunks)
    losses = []
    zero = torch.zeros(b)
    for i, x0 in enumerate(chunks):
        u = torch.sigmoid(torch.randn(b, generator=gen))  # logit-normal noise levels
        sigma = shift_sigmas(u, recipe.flow_shift).view(b, 1, 1, 1, 1)
        eps = torch.randn(x0.shape, generator=gen)
        noisy = (1 - sigma) * x0 + sigma * eps
        pred = model.forward_chunk(noisy, 1000 * sigma.flatten(), text, state)
        losses.append(F.mse_loss(pred, eps - x0))
        if i + 1 < len(chunks):
            context = x0
            if recipe.own_context > 0:
                context = own_estimate(model, x0, text, state, recipe, gen)
            a = recipe.context_noise * torch.rand(b, 1, 1, 1, 1, generator=gen)
            context = (1 - a) * context + a * torch.randn(x0.shape, generator=gen)
            model.forward_chunk(context, zero, text, state, update_state=True)
    return torch.stack(losses).mean()


def train_transformer(work: Path, config: str, steps: int, batch: int = 16, lr: float = 5e-4,
                      save_every: int = 50, seed: int = 0, ema_decay: float = 0.999,
                      first_chunk_batch: int = 0, cooldown: int = 0, optimizer: str = "adamw",
                      own_context: float = 0.0) -> SanaVideoTransformer:
    """Returns the EMA of the weights (what `export` ships): on a short run it samples cleaner
    than the last step's weights, which still carry the optimiser's noise.

    `first_chunk_batch` more clips per step train only their first chunk (from the empty state):
    the first block is drawn from the prompt alone and is where the model fails most (model
    card); a first chunk alone costs about a third of a whole clip's pass. `cooldown`: the last
    steps anneal the learning rate to zero (`cosine_lr`). `optimizer`: adamw, or muon on the
    blocks' matrices (`engine.optim`). `own_context`: share of whole clips whose context chunk
    is the model's own estimate of it (`FlowRecipe.own_context`)."""
    from sana_serve.engine.model.text_encoder import TextEncoder
    from sana_serve.shapes.optim import transformer_optimizer

    cfg = load_config(config)
    s = cfg.sampling
    recipe = FlowRecipe(s.chunk_frames, s.window_chunks, s.flow_shift, own_context=own_context)
    torch.manual_seed(seed)
    model = SanaVideoTransformer(**(cfg.random_init or {})["transformer"])
    opt = transformer_optimizer(model, optimizer, lr)
    ck = Checkpointer(work, "transformer")
    step = ck.load(model, opt)
    ema = ck.extra.get("ema") or {k: v.detach().clone() for k, v in model.state_dict().items()}
    bank = torch.load(work / "latents.pt", weights_only=False)
    latents, combos = bank["latents"], bank["combos"]
    text_encoder = TextEncoder(cfg.text_encoder, max_length=cfg.text_max_length)
    prompts = PromptBank(text_encoder, sorted(set(map(tuple, combos))))
    rng = np.random.default_rng(seed + step)
    gen = torch.Generator().manual_seed(seed + step)
    bar = _progress(steps, step, "transformer")
    model.train()
    while step < steps:
        idx = rng.integers(len(latents), size=batch)
        x = latents[torch.from_numpy(idx)].float()
        # half the time drop the first o frames, so the first chunk is short, as a video whose
        # length is not a multiple of the block length makes it at inference
        first = None
        if rng.random() < 0.5:
            offset = int(rng.integers(1, recipe.chunk_frames))
            x, first = x[:, :, offset:], recipe.chunk_frames - offset
        text = model.encode_text(*prompts.batch(rng, [combos[i] for i in idx], recipe.uncond_prob))
        loss = teacher_forced_loss(model, x, text, recipe, gen, first)
        if first_chunk_batch:
            # every (clip, chunk) pair weighs the same: the whole clips give two chunks each
            idx = rng.integers(len(latents), size=first_chunk_batch)
            length = int(rng.integers(1, recipe.chunk_frames + 1)) if rng.random() < 0.5 else recipe.chunk_frames
            x = latents[torch.from_numpy(idx), :, :length].float()
            text = model.encode_text(*prompts.batch(rng, [combos[i] for i in idx], recipe.uncond_prob))
            alone = teacher_forced_loss(model, x, text, recipe, gen)
            loss = (2 * batch * loss + first_chunk_batch * alone) / (2 * batch + first_chunk_batch)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, lr, cooldown=cooldown)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            # ramp the decay up early on, so the average does not hold on to the random init
            decay = min(ema_decay, (1 + step) / (10 + step))
            for k, v in model.state_dict().items():
                ema[k].lerp_(v, 1 - decay) if v.is_floating_point() else ema[k].copy_(v)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        ck.accumulate(loss=loss.item(), grad_norm=float(gnorm), lr=opt.param_groups[0]["lr"])
        if step % 5 == 0:
            ck.flush(step)
        if step % save_every == 0 or step == steps:
            ck.save(model, opt, step, extra={"ema": ema})
    bar.close()
    model.load_state_dict(ema)
    return model.eval()


def export(work: Path, config: str, out: Path) -> None:
    """Write the trained parts as a Hugging Face-layout checkpoint the engine loads."""
    from sana_serve.engine.checkpoint import save_transformer, write_model_index

    cfg = load_config(config)
    vae = load_trained_vae(work, config)
    model = SanaVideoTransformer(**(cfg.random_init or {})["transformer"])
    ck = torch.load(work / "transformer.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(ck.get("ema", ck["model"]))
    out.mkdir(parents=True, exist_ok=True)
    save_transformer(out, model)
    vae.save_pretrained(out / "vae")
    plot_losses(work, out / "loss.png")
    write_model_index(out, {"transformer": ["sana_serve", "SanaVideoTransformer"],
                            "vae": ["sana_serve", "CausalVideoVAE"],
                            "text_encoder": ["sana_serve", cfg.text_encoder]})
    sample_sheet(config, out, out / "samples.png")


SAMPLE_PROMPTS = [
    "a red circle moving right on a black background",
    "a blue square moving down on a white background",
    "a yellow triangle moving left on a gray background",
    "an orange circle moving up on a white background",
    "a scarlet box drifting leftward across a dark backdrop",
    "a purple triangle moving right on a black background",
]


def sample_sheet(config: str, checkpoint: Path, path: Path, seconds: float = 4.0, every: int = 8) -> None:
    """What the exported model makes, for its model card: one row per prompt (seed 0), a frame
    every `every` frames, each row labelled with its prompt."""
    from PIL import Image, ImageDraw

    from sana_serve.engine.load import load_engine
    from sana_serve.engine.rollout import GenerationRequest

    engine = load_engine(config, checkpoint=checkpoint, device="cpu")
    rows = []
    for prompt in SAMPLE_PROMPTS:
        frames = np.concatenate([b.frames for b in engine.stream(GenerationRequest(prompt, seconds=seconds))])
        strip = np.concatenate(list(frames[::every]), axis=1)
        label = Image.new("RGB", (strip.shape[1], 14), (255, 255, 255))
        ImageDraw.Draw(label).text((2, 1), prompt, fill=(0, 0, 0))
        rows += [np.asarray(label), strip]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def plot_losses(work: Path, path: Path) -> None:
    """Loss curves of both phases, from their CSV logs, as one PNG for the model card."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    for ax, phase, key in ((axes[0], "vae", "rec"), (axes[1], "transformer", "loss")):
        log = work / f"{phase}_loss.csv"
        if not log.is_file():
            continue
        with log.open() as f:
            rows = list(csv.DictReader(f))
        ax.plot([int(r["step"]) for r in rows], [float(r[key]) for r in rows])
        ax.set(xlabel="step", ylabel=key, title=f"{phase} ({key})", yscale="log")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
