"""LTX2VAE against diffusers' AutoencoderKLLTX2Video: tiny random weights (and random latents_mean/std
buffers) saved by diffusers' save_pretrained, loaded by our loader with strict keys; decode, encode and
tiled decode parity in fp32, the 1 + 8k rule, the windowed (streaming) decode: exact with whole-clip
context, measured distance with a small context."""
import pytest
import torch
from diffusers import AutoencoderKLLTX2Video

from sana_serve.engine.model.ltx2_vae import LTX2VAE, SpatialTiling, WindowedDecoder
from sana_serve.engine.model.vae import decode_streams, load_vae

TOL = 1e-5
# The release's layout at tiny widths: 4x4 patchify, encoder down types spatial/temporal/st/st, three
# spatiotemporal decoder upsamplers: 32x space, 8x time (ratios given explicitly, as the release's config does).
TINY = dict(latent_channels=8, block_out_channels=[16, 32, 64, 64], decoder_block_out_channels=[16, 32, 64],
            layers_per_block=[1, 1, 1, 1, 1], decoder_layers_per_block=[1, 1, 1, 1],
            spatial_compression_ratio=32, temporal_compression_ratio=8,
            encoder_causal=True, decoder_causal=False)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(diffusers reference, ours loaded from its save_pretrained folder)."""
    torch.manual_seed(0)
    ref = AutoencoderKLLTX2Video(**TINY).eval()
    with torch.no_grad():  # zero biases / unit scales at init would hide mistakes in those terms
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        ref.latents_mean.copy_(torch.randn(8) * 0.5)
        ref.latents_std.copy_(torch.rand(8) + 0.5)
    folder = tmp_path_factory.mktemp("ckpt") / "vae"
    ref.save_pretrained(folder)
    ours = load_vae(folder)
    assert isinstance(ours, LTX2VAE)
    return ref, ours


def latents(t, seed, batch=1, h=2, w=3):
    return torch.randn(batch, 8, t, h, w, generator=torch.Generator().manual_seed(seed))


def pipeline_denormalize(ref, z):
    """SanaVideoPipeline's LTX-2 branch: buffers cast to the latents' dtype, latents / (1/std) + mean."""
    mean = ref.latents_mean.view(1, 8, 1, 1, 1).to(z.dtype)
    inv_std = 1.0 / ref.latents_std.view(1, 8, 1, 1, 1).to(z.dtype)
    return z / inv_std + mean


def test_attributes_and_frame_rule(pair):
    _, ours = pair
    assert (ours.latent_channels, ours.temporal_compression, ours.spatial_compression) == (8, 8, 32)
    assert [ours.num_frames(t) for t in (1, 2, 11)] == [1, 9, 81]
    assert ours.num_latent_frames(81) == 11
    with pytest.raises(ValueError, match="1 \\+ 8k"):
        ours.num_latent_frames(13)


def test_buffers_load_from_safetensors(pair):
    ref, ours = pair
    assert torch.equal(ours.latents_mean, ref.latents_mean) and torch.equal(ours.latents_std, ref.latents_std)
    assert set(ours.state_dict()) == set(ref.state_dict())


@torch.no_grad()
@pytest.mark.parametrize("t", [1, 3])
def test_decode_matches_diffusers(pair, t):
    ref, ours = pair
    z = latents(t, seed=t, batch=2)
    expected = ref.decode(pipeline_denormalize(ref, z), return_dict=False)[0]
    raw = ours.decode_raw(ours.denormalize_latents(z))
    assert raw.shape == (2, 3, 1 + 8 * (t - 1), 64, 96)
    assert rel(raw, expected) <= TOL
    assert rel(ours.decode(z), expected.clamp(-1, 1)) <= TOL


@torch.no_grad()
def test_encode_matches_diffusers(pair):
    ref, ours = pair
    video = torch.rand(2, 3, 9, 64, 96, generator=torch.Generator().manual_seed(5)) * 2 - 1
    dist = ref.encode(video).latent_dist
    mean, logvar = ours.encode_distribution(video)
    assert mean.shape == (2, 8, 2, 2, 3)
    assert rel(mean, dist.mean) <= TOL and rel(logvar, dist.logvar) <= TOL
    # SanaImageToVideoPipeline's normalisation of the posterior mode
    expected = (dist.mode() - ref.latents_mean.view(1, 8, 1, 1, 1)) * (1.0 / ref.latents_std.view(1, 8, 1, 1, 1))
    assert rel(ours.encode(video), expected) <= TOL
    image = video[:, :, :1]  # image-to-video: one frame
    assert rel(ours.encode(image), (ref.encode(image).latent_dist.mode() - ref.latents_mean.view(1, 8, 1, 1, 1))
               * (1.0 / ref.latents_std.view(1, 8, 1, 1, 1))) <= TOL
    with pytest.raises(ValueError, match="1 \\+ 8k"):
        ours.encode(video[:, :, :5])


@torch.no_grad()
def test_tiled_decode_matches_diffusers_tiled(pair):
    ref, ours = pair
    z = latents(2, seed=7, h=4, w=4)
    ref.enable_tiling(tile_sample_min_height=96, tile_sample_min_width=96,
                      tile_sample_stride_height=64, tile_sample_stride_width=64)
    try:
        expected = ref.decode(pipeline_denormalize(ref, z), return_dict=False)[0]
    finally:
        ref.use_tiling = False
    ours.tiling = SpatialTiling(tile=96, stride=64)
    try:
        tiled = ours.decode_raw(ours.denormalize_latents(z))
    finally:
        ours.tiling = None
    whole = ours.decode_raw(ours.denormalize_latents(z))
    assert rel(tiled, expected) <= TOL
    assert rel(whole, expected) > 1e-3  # the tiles really differ from one pass: the test can fail


@torch.no_grad()
@pytest.mark.parametrize("context", [None, 6])
def test_windowed_decode_exact(pair, context):
    """The default stream decoder (whole clip once) and windows covering the clip equal one decode."""
    _, ours = pair
    z = latents(7, seed=11)
    whole = ours.decode(z)
    dec = WindowedDecoder(ours, context=context)
    dec.see(z)
    parts = [dec.decode(z[:, :, a:b]) for a, b in ((0, 3), (3, 5), (5, 7))]
    assert [p.shape[2] for p in parts] == [17, 16, 16]
    assert torch.equal(torch.cat(parts, 2), whole)
    assert ours.stream_decoder().context is None  # exact unless a window is asked for


@torch.no_grad()
def test_windowed_decode_distance_shrinks_with_context(pair):
    """The windowed clip's distance from one whole decode, by context (9 latent frames, blocks of 3).
    Measured here (tiny random weights, whose influence does not decay with distance, so an upper-end
    picture; receptive field ~6 latent frames): printed with -s, and quoted in the README."""
    _, ours = pair
    z = latents(9, seed=13)
    whole = ours.decode(z)
    u8 = lambda v: ((v + 1) * 127.5).round()  # noqa: E731
    distances = []
    for context in (1, 2, 3, 4, 6):
        dec = WindowedDecoder(ours, context)
        dec.see(z)
        streamed = torch.cat([dec.decode(z[:, :, a:b]) for a, b in ((0, 3), (3, 6), (6, 9))], 2)
        assert streamed.shape == whole.shape
        distances.append(rel(streamed, whole))
        worst = (u8(streamed) - u8(whole)).abs().max().item()
        print(f"windowed(context={context}) vs whole: rel {distances[-1]:.3e}, max|uint8 diff| {worst:.0f}")
        if context == 2:  # batched with another video: decode_streams decodes each on its own, same frames
            d1, d2 = WindowedDecoder(ours, context), WindowedDecoder(ours, context)
            d1.see(z), d2.see(z)
            a, b = decode_streams([d1, d2], [z[:, :, :3], z[:, :, :3]])
            assert torch.equal(a, streamed[:, :, :17]) and torch.equal(b, a)
    assert all(a > b for a, b in zip(distances, distances[1:]))
    assert distances[0] > 1e-2 and distances[-1] == 0.0  # context 6 covers the clip from every block


def test_unsupported_configs_refused(tmp_path):
    with pytest.raises(ValueError, match="timestep_conditioning"):
        LTX2VAE(**TINY, timestep_conditioning=True)
    with pytest.raises(ValueError, match="unknown"):
        LTX2VAE(**TINY, something_new=1)


MEASURE = """
import gc, sys
import torch
from tests.tiny_sana_video_720p import VAE
from sana_serve.engine.model.ltx2_vae import LTX2VAE, WindowedDecoder
torch.set_num_threads(1)
t, context = int(sys.argv[1]), None if sys.argv[2] == "none" else int(sys.argv[2])
vae = LTX2VAE(**VAE).eval()
z = torch.randn(1, 8, t, 8, 8, generator=torch.Generator().manual_seed(0))  # 256x256 pixels
with torch.no_grad():
    vae.decode(z[:, :, :2, :2, :2])  # warm-up: kernels and allocator
    gc.collect()
    def status(key):
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))
    with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark (VmHWM) to the current RSS
        f.write("5")
    base = status("VmRSS:")
    dec = WindowedDecoder(vae, context)
    dec.see(z)
    pos = 0
    for n in [1] + [2] * ((t - 1) // 2):  # blocks handed to the video encoder, then dropped
        dec.decode(z[:, :, pos:pos + n])
        pos += n
    print((status("VmHWM:") - base) / 1024)
"""


def decode_peak_mib(t: int, context: int | None) -> float:
    """Peak RSS growth (MiB) of decoding a t-latent-frame clip block by block, in a fresh process
    (big allocations through mmap, so freed activations leave the RSS and the peak is the real one)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    out = subprocess.run([sys.executable, "-c", MEASURE, str(t), str(context).lower()], env=env, check=True,
                         capture_output=True, text=True, timeout=600)
    return float(out.stdout.strip())


def test_windowed_decode_memory_stays_bounded_as_the_clip_grows():
    """Measured on CPU at 256x256: the windowed decode's peak is the same for 5 and 13 latent frames
    (33 and 97 frames); the whole-clip decode's grows with the clip. The shape estimate says the same."""
    windowed = [decode_peak_mib(t, 1) for t in (5, 13)]
    whole = [decode_peak_mib(t, None) for t in (5, 13)]
    print(f"peak MiB, windowed(context=1) 5/13 latent frames: {windowed}; whole clip: {whole}")
    assert windowed[0] > 10 and windowed[1] < 1.15 * windowed[0]
    assert whole[1] > 1.2 * whole[0] and whole[1] - whole[0] > 5 * abs(windowed[1] - windowed[0])
    vae = LTX2VAE(**TINY)
    assert vae.decode_peak_bytes(13, 256, 256) > 2.5 * vae.decode_peak_bytes(5, 256, 256)
    print(f"shape estimate MiB: window of 4 latent frames {vae.decode_peak_bytes(4, 256, 256) / 2**20:.1f}, "
          f"whole 5 / 13: {vae.decode_peak_bytes(5, 256, 256) / 2**20:.1f} / {vae.decode_peak_bytes(13, 256, 256) / 2**20:.1f}")


def test_decode_memory_admission_names_the_setting():
    from sana_serve.engine.config import DecodeConfig

    vae = LTX2VAE(**TINY)
    vae.configure_decode(DecodeConfig(max_gib=0.2))
    vae.check_decode_memory(81, 256, 256, block_latent=2)  # ~0.1 GiB: fits
    with pytest.raises(ValueError, match="decode.tile: 512.*decode.context: 1") as e:
        vae.check_decode_memory(81, 1280, 704, block_latent=2)
    assert "\n" not in str(e.value) and "decode.max_gib" in str(e.value)
    vae.configure_decode(DecodeConfig(max_gib=0.2, tile=128, context=1))
    vae.check_decode_memory(81, 1280, 704, block_latent=2)  # tiles of 128 px, windows of 4 latent frames: fits
