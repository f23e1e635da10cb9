"""A tiny random SanaVideoPipeline in the 720p release's layout, built with diffusers and saved with its
save_pretrained: transformer in/out = the VAE's latent channels, patch (1, 1, 1); the LTX-2 video VAE
(AutoencoderKLLTX2Video: 32x space, 8x time, non-causal decoder, random latents_mean/std buffers); Gemma-2,
GemmaTokenizer and DPM-Solver++ as tests/tiny_sana_video.py builds them."""
from __future__ import annotations

from pathlib import Path

import torch

from tests import tiny_sana_video as tiny

HEIGHT, WIDTH = 64, 96  # multiples of 32: a 2x3 latent
LATENT = 8
TRANSFORMER = dict(tiny.TRANSFORMER, in_channels=LATENT, out_channels=LATENT, patch_size=(1, 1, 1))
VAE = dict(latent_channels=LATENT, block_out_channels=[16, 32, 64, 64], decoder_block_out_channels=[16, 32, 64],
           layers_per_block=[1, 1, 1, 1, 1], decoder_layers_per_block=[1, 1, 1, 1],
           spatial_compression_ratio=32, temporal_compression_ratio=8, encoder_causal=True, decoder_causal=False)


def build(root: Path):
    """Build the pipeline, save it under `root` and return it (fp32, eval)."""
    from diffusers import AutoencoderKLLTX2Video, DPMSolverMultistepScheduler, SanaVideoPipeline, SanaVideoTransformer3DModel
    from transformers import Gemma2Config, Gemma2Model

    tok = tiny.tokenizer()
    torch.manual_seed(0)
    text_encoder = Gemma2Model(Gemma2Config(vocab_size=len(tok), pad_token_id=0, bos_token_id=2, eos_token_id=1,
                                            **tiny.GEMMA)).eval()
    transformer = SanaVideoTransformer3DModel(**TRANSFORMER).eval()
    tiny._randomise(transformer, 0.2, 1)
    vae = AutoencoderKLLTX2Video(**VAE).eval()
    with torch.no_grad():  # zero biases and unit statistics at init would hide mistakes in those terms
        g = torch.Generator().manual_seed(2)
        for p in vae.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
        vae.latents_mean.copy_(torch.randn(LATENT, generator=g) * 0.3)
        vae.latents_std.copy_(torch.rand(LATENT, generator=g) + 0.5)
    pipe = SanaVideoPipeline(tokenizer=tok, text_encoder=text_encoder, vae=vae, transformer=transformer,
                             scheduler=DPMSolverMultistepScheduler(**tiny.SCHEDULER))
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(root)
    return pipe


def diffusers_frames(pipe, prompt: str, frames: int, seed: int, steps: int, guidance: float,
                     negative_prompt: str = "", tiles: tuple[int, int] | None = None, height: int = HEIGHT,
                     width: int = WIDTH):
    """What SanaVideoPipeline makes of the request, as uint8 (T, H, W, 3); `tiles` = (tile, stride)
    pixels turns on diffusers' spatial tiling of the VAE decode."""
    if tiles is not None:
        pipe.vae.enable_tiling(tile_sample_min_height=tiles[0], tile_sample_min_width=tiles[0],
                               tile_sample_stride_height=tiles[1], tile_sample_stride_width=tiles[1])
    try:
        out = pipe(prompt, negative_prompt=negative_prompt, height=height, width=width, frames=frames,
                   num_inference_steps=steps, guidance_scale=guidance, use_resolution_binning=False,
                   generator=torch.Generator("cpu").manual_seed(seed), output_type="np").frames[0]
    finally:
        pipe.vae.use_tiling = False
    return (out * 255).round().clip(0, 255).astype("uint8")
