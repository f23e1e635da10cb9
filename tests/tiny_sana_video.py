"""A tiny random SanaVideoPipeline, built with diffusers and saved with its save_pretrained: the same
layout and component classes as NVIDIA's releases (Gemma-2 + GemmaTokenizer, SanaVideoTransformer3DModel,
AutoencoderKLWan, DPMSolverMultistepScheduler with flow sigmas), at a size that runs in seconds on a
CPU. Used as the oracle (diffusers) and as the checkpoint `sana-serve` loads (tests/conftest.py)."""
from __future__ import annotations

import string
from pathlib import Path

import torch

HEIGHT, WIDTH = 32, 64  # multiples of 32 (SanaVideoPipeline.check_inputs); no resolution bins at this sample_size
TRANSFORMER = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=24, num_layers=2,
                   num_cross_attention_heads=2, cross_attention_head_dim=24, cross_attention_dim=48,
                   caption_channels=32, mlp_ratio=2.5, sample_size=8, patch_size=(1, 2, 2),
                   norm_elementwise_affine=False, norm_eps=1e-6)
VAE = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True],
           latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 2.0, 1.0])
GEMMA = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, head_dim=16, max_position_embeddings=4096)
# The release's scheduler/scheduler_config.json: DPM-Solver++(2M), flow sigmas, flow shift 8
SCHEDULER = dict(use_flow_sigmas=True, flow_shift=8.0, prediction_type="flow_prediction",
                 algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True)


def tokenizer():
    """A character-level GemmaTokenizer built offline from a vocab dict (BOS added, as Gemma's)."""
    from transformers import GemmaTokenizer

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "▁": 5}
    for c in sorted(set(string.printable) - set(" \t\r\x0b\x0c")):
        vocab.setdefault(c, len(vocab))
    return GemmaTokenizer(vocab=vocab, merges=[], add_bos_token=True)


def _randomise(module: torch.nn.Module, scale: float, seed: int) -> None:
    """Every parameter random (zero-initialised ones too), so no term of the math hides."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def build(root: Path):
    """Build the pipeline, save it under `root` and return it (fp32, eval)."""
    from diffusers import (AutoencoderKLWan, DPMSolverMultistepScheduler, SanaVideoPipeline,
                           SanaVideoTransformer3DModel)
    from transformers import Gemma2Config, Gemma2Model

    tok = tokenizer()
    torch.manual_seed(0)
    text_encoder = Gemma2Model(Gemma2Config(vocab_size=len(tok), pad_token_id=0, bos_token_id=2, eos_token_id=1,
                                            **GEMMA)).eval()
    transformer = SanaVideoTransformer3DModel(**TRANSFORMER).eval()
    _randomise(transformer, 0.2, 1)
    vae = AutoencoderKLWan(**VAE).eval()
    with torch.no_grad():  # gamma=1 and zero biases at init would hide mistakes in those terms
        g = torch.Generator().manual_seed(2)
        for p in vae.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    pipe = SanaVideoPipeline(tokenizer=tok, text_encoder=text_encoder, vae=vae, transformer=transformer,
                             scheduler=DPMSolverMultistepScheduler(**SCHEDULER))
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(root)
    return pipe


def diffusers_frames(pipe, prompt: str, frames: int, seed: int, steps: int, guidance: float,
                     negative_prompt: str = ""):
    """What SanaVideoPipeline makes of the request, as uint8 (T, H, W, 3)."""
    out = pipe(prompt, negative_prompt=negative_prompt, height=HEIGHT, width=WIDTH, frames=frames,
               num_inference_steps=steps, guidance_scale=guidance, use_resolution_binning=False,
               generator=torch.Generator("cpu").manual_seed(seed), output_type="np").frames[0]
    return (out * 255).round().clip(0, 255).astype("uint8")
