"""WanVAE against diffusers' AutoencoderKLWan: tiny random weights saved by diffusers' save_pretrained,
loaded by our loader with strict keys; encode/decode parity, streaming == full, the first-frame rule,
constant cache, clear errors on configs and inputs we do not cover."""
import json

import pytest
import torch
from diffusers import AutoencoderKLWan

from sana_serve.engine.model.vae import decode_streams, load_vae
from sana_serve.engine.model.wan_vae import WanVAE

TOL = 1e-5
# Tiny Wan2.1 shapes: 4 levels (8x space), temporal down-sampling at the last two (4x time).
TINY = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True],
            latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 2.0, 1.0])


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(diffusers reference, ours loaded from its save_pretrained folder)."""
    torch.manual_seed(0)
    ref = AutoencoderKLWan(**TINY).eval()
    with torch.no_grad():  # gamma=1 and zero biases at init would hide mistakes in those terms
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    folder = tmp_path_factory.mktemp("ckpt") / "vae"
    ref.save_pretrained(folder)
    ours = load_vae(folder)
    assert isinstance(ours, WanVAE)
    return ref, ours


def stats():
    mean = torch.tensor(TINY["latents_mean"]).view(1, -1, 1, 1, 1)
    std = torch.tensor(TINY["latents_std"]).view(1, -1, 1, 1, 1)
    return mean, std


def latents(t, seed, batch=2, h=4, w=6):
    return torch.randn(batch, TINY["z_dim"], t, h, w, generator=torch.Generator().manual_seed(seed))


def video(t, seed, batch=2, h=32, w=48):
    return torch.rand(batch, 3, t, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def reference_decode(ref, z):
    """SanaVideoPipeline's decode: de-normalise with the config's statistics, then vae.decode."""
    mean, std = stats()
    return ref.decode(z / (1.0 / std) + mean, return_dict=False)[0]


def test_attributes(pair):
    _, ours = pair
    assert (ours.latent_channels, ours.temporal_compression, ours.spatial_compression) == (4, 4, 8)
    assert [ours.num_frames(t) for t in (1, 2, 21)] == [1, 5, 81]
    assert ours.num_latent_frames(81) == 21
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        ours.num_latent_frames(80)


@torch.inference_mode()
@pytest.mark.parametrize("t", [1, 3])
def test_decode_matches_diffusers(pair, t):
    ref, ours = pair
    z = latents(t, seed=t)
    expected = reference_decode(ref, z)
    got = ours.decode(z)
    assert got.shape == expected.shape == (2, 3, 1 + 4 * (t - 1), 32, 48)
    assert (got - expected).abs().max().item() <= TOL


@torch.inference_mode()
@pytest.mark.parametrize("frames", [1, 9])
def test_encode_matches_diffusers(pair, frames):
    ref, ours = pair
    x = video(frames, seed=frames)
    posterior = ref.encode(x).latent_dist
    mean, logvar = ours.encode_distribution(x)
    assert mean.shape == (2, 4, 1 + (frames - 1) // 4, 4, 6)
    assert (mean - posterior.mean).abs().max().item() <= TOL
    assert (logvar - posterior.logvar).abs().max().item() <= TOL
    m, s = stats()
    assert (ours.encode(x) - (posterior.mean - m) * (1.0 / s)).abs().max().item() <= TOL


@torch.inference_mode()
@pytest.mark.parametrize("chunks", [[1, 2, 2], [1, 1, 1, 1, 1], [3, 2], [5]])
def test_stream_decode_equals_full_decode(pair, chunks):
    """Any chunking, including a first chunk of several latent frames (the decoder treats the video's
    first latent frame on its own), gives the frames of one full decode: 1 + 4(t-1) in all."""
    _, ours = pair
    z = latents(sum(chunks), seed=7)
    full = ours.decode(z)
    decoder = ours.stream_decoder()
    parts, start = [], 0
    for i, n in enumerate(chunks):
        part = decoder.decode(z[:, :, start:start + n])
        assert part.shape[2] == (1 + 4 * (n - 1) if i == 0 else 4 * n)  # the first-frame rule
        parts.append(part)
        start += n
    assert torch.equal(torch.cat(parts, 2), full)


@torch.inference_mode()
def test_first_frame_rule_restarts_with_reset(pair):
    """reset() starts a new video: its first latent frame decodes to one frame again, as a fresh decoder."""
    _, ours = pair
    decoder = ours.stream_decoder()
    decoder.decode(latents(2, seed=1))
    decoder.reset()
    z = latents(2, seed=2)
    assert torch.equal(decoder.decode(z), ours.decode(z))


@torch.inference_mode()
def test_stream_cache_constant_in_video_length(pair):
    _, ours = pair
    decoder = ours.stream_decoder()
    sizes = []
    for i in range(6):
        decoder.decode(latents(1, seed=10 + i))
        sizes.append(decoder.nbytes)
    assert len(set(sizes[1:])) == 1 and sizes[1] > 0


@torch.inference_mode()
def test_decode_streams_batches_wan_decoders(pair):
    """The rollout's batched decode (several videos, one pass per shape) works with the Wan cache."""
    _, ours = pair
    a, b = latents(3, seed=20, batch=1), latents(3, seed=21, batch=1)
    decoders = [ours.stream_decoder(), ours.stream_decoder()]
    out = [decode_streams(decoders, [a[:, :, :1], b[:, :, :1]]), decode_streams(decoders, [a[:, :, 1:], b[:, :, 1:]])]
    for k, z in enumerate((a, b)):
        got = torch.cat([out[0][k], out[1][k]], 2)
        assert (got - ours.decode(z)).abs().max().item() <= TOL


@torch.inference_mode()
def test_stream_encode_equals_full_encode(pair):
    _, ours = pair
    x = video(13, seed=3)
    encoder = ours.stream_encoder()
    parts = [encoder.encode(x[:, :, :5]), encoder.encode(x[:, :, 5:9]), encoder.encode(x[:, :, 9:])]
    assert (torch.cat(parts, 2) - ours.encode(x)).abs().max().item() <= TOL
    with pytest.raises(ValueError, match="multiple of 4"):
        encoder.encode(x[:, :, :3])
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        ours.stream_encoder().encode(x[:, :, :4])


def test_save_pretrained_round_trip_loads_in_diffusers(pair, tmp_path):
    ref, ours = pair
    ours.save_pretrained(tmp_path / "vae")
    again = AutoencoderKLWan.from_pretrained(tmp_path / "vae")
    for (k1, v1), (k2, v2) in zip(sorted(ref.state_dict().items()), sorted(again.state_dict().items())):
        assert k1 == k2 and torch.equal(v1, v2)


@pytest.mark.parametrize("change, message", [
    ({"is_residual": True, "patch_size": 2}, "Wan2.2"),
    ({"latents_mean": [0.0] * 3}, "z_dim=4"),
    ({"scale_factor_spatial": 16}, "scale_factor_spatial=16"),
    ({"temperal_downsample": [True]}, "temperal_downsample needs 3"),
    ({"some_new_option": 1}, "some_new_option"),
    ({"attn_scales": [0.5]}, "attn_scales"),
])
def test_bad_config_is_a_clear_error(tmp_path, change, message):
    folder = tmp_path / "vae"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan", **TINY, **change}))
    with pytest.raises(ValueError, match=message):
        load_vae(folder)


def test_wrong_weights_fail_strict_load(pair, tmp_path):
    """Strict keys: a state dict of another shape (here z_dim 8) refuses to load."""
    ref, _ = pair
    ref.save_pretrained(tmp_path / "vae")
    config = json.loads((tmp_path / "vae" / "config.json").read_text())
    config.update(z_dim=8, latents_mean=[0.0] * 8, latents_std=[1.0] * 8)
    (tmp_path / "vae" / "config.json").write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_vae(tmp_path / "vae")


@torch.inference_mode()
def test_bad_inputs(pair):
    _, ours = pair
    with pytest.raises(ValueError, match="latents must have shape"):
        ours.decode(torch.zeros(1, 3, 1, 4, 4))
    with pytest.raises(ValueError, match="multiples of 8"):
        ours.encode(torch.zeros(1, 3, 1, 30, 32))
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        ours.encode(torch.zeros(1, 3, 4, 32, 32))


def test_released_config_builds_with_diffusers_keys_and_shapes():
    """The released SANA-Video 2B/480p vae/config.json (Wan2.1 defaults, as diffusers saves them) builds on
    the meta device with exactly diffusers' parameter names and shapes: the real safetensors load strictly."""
    released = {"_class_name": "AutoencoderKLWan", "_diffusers_version": "0.36.0.dev0", "attn_scales": [],
                "base_dim": 96, "decoder_base_dim": None, "dim_mult": [1, 2, 4, 4], "dropout": 0.0,
                "in_channels": 3, "is_residual": False, "num_res_blocks": 2, "out_channels": 3, "patch_size": None,
                "scale_factor_spatial": 8, "scale_factor_temporal": 4, "temperal_downsample": [False, True, True],
                "z_dim": 16}
    with torch.device("meta"):
        ref = AutoencoderKLWan(**{k: v for k, v in released.items() if not k.startswith("_")})
        ours = WanVAE(**released)
    expected = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == expected
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    # Wan2.1's statistics are the defaults when config.json leaves them out, as diffusers' are.
    assert ours.config["latents_mean"] == list(ref.config.latents_mean)
    assert ours.config["latents_std"] == list(ref.config.latents_std)


@torch.inference_mode()
def test_stream_cache_survives_a_snapshot_by_module_name(pair):
    """The rollout saves a decoder's cache by `named_modules()` names and restores it into a fresh decoder."""
    _, ours = pair
    z = latents(4, seed=30)
    decoder = ours.stream_decoder()
    first = decoder.decode(z[:, :, :2])
    names = {m: n for n, m in ours.named_modules()}
    saved = {names[m]: t.clone() for m, t in decoder.cache.items()}
    modules = dict(ours.named_modules())
    resumed = ours.stream_decoder()
    resumed.cache.update({modules[n]: t for n, t in saved.items()})
    assert torch.equal(torch.cat([first, resumed.decode(z[:, :, 2:])], 2), ours.decode(z))


@torch.inference_mode()
def test_bf16_decode_matches_diffusers_in_bf16(pair):
    """The VAE also runs in bf16 (fp32 is what the releases use): fp32 latents are cast to the VAE's
    dtype first, as the pipeline does, and the result follows diffusers' bf16 decode."""
    import copy

    ref, ours = (copy.deepcopy(m).to(torch.bfloat16) for m in pair)
    z = latents(2, seed=40)
    mean, std = (s.to(torch.bfloat16) for s in stats())
    zb = z.to(torch.bfloat16)  # SanaVideoPipeline: latents.to(vae.dtype), statistics in that dtype
    expected = ref.decode(zb / (1.0 / std) + mean, return_dict=False)[0]
    got = ours.decode(z)
    assert got.dtype == torch.bfloat16
    assert (got.float() - expected.float()).abs().max().item() <= 1e-2
