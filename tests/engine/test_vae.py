"""CausalVideoVAE: shapes, causality, streaming == full pass, checkpoints, input errors.

Random weights are enough for every property here: they are all structural (what may
depend on what, and that chunked and full passes compute the same function).
"""

import json

import pytest
import torch

from sana_serve.engine.model.vae import CausalVideoVAE, decode_streams, load_vae

LATENT_CHANNELS = 8


@pytest.fixture(scope="module")
def vae() -> CausalVideoVAE:
    torch.manual_seed(0)
    return CausalVideoVAE().eval()


def random_latents(t: int, seed: int, batch: int = 2, size: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, LATENT_CHANNELS, t, size, size, generator=g)


def random_video(t: int, seed: int, batch: int = 2, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, t, size, size, generator=g) * 2 - 1


def test_compression_attributes(vae):
    assert vae.temporal_compression == 4
    assert vae.spatial_compression == 8
    assert vae.latent_channels == LATENT_CHANNELS
    # The speed budget (16 frames of 64x64 decoded well under 0.2 s on 2 CPU cores)
    # assumes a model of this size.
    n_params = sum(p.numel() for p in vae.parameters())
    assert 1_000_000 < n_params < 3_000_000


@torch.inference_mode()
def test_encode_decode_shapes(vae):
    video = random_video(8, seed=1, batch=2, size=64)
    latents = vae.encode(video)
    assert latents.shape == (2, LATENT_CHANNELS, 2, 8, 8)
    mean, logvar = vae.encode_distribution(video)
    assert mean.shape == logvar.shape == latents.shape
    decoded = vae.decode(latents)
    assert decoded.shape == (2, 3, 8, 64, 64)
    assert torch.isfinite(decoded).all()
    # Non-square frames work too.
    assert vae.encode(torch.zeros(1, 3, 4, 16, 40)).shape == (1, LATENT_CHANNELS, 1, 2, 5)


@torch.inference_mode()
@pytest.mark.parametrize("chunks", [[1, 2, 3], [4, 4], [1] * 6])
def test_stream_decode_equals_full_decode(vae, chunks):
    latents = random_latents(sum(chunks), seed=2)
    full = vae.decode(latents)
    stream = vae.stream_decoder()
    pieces, start = [], 0
    for size in chunks:
        piece = stream.decode(latents[:, :, start : start + size])
        assert piece.shape[2] == 4 * size
        pieces.append(piece)
        start += size
    streamed = torch.cat(pieces, dim=2)
    assert streamed.shape == full.shape
    assert (streamed - full).abs().max().item() <= 1e-5


@torch.inference_mode()
def test_per_frame_first_level_streams_exactly_and_is_causal():
    """The built-in model's variant (first_level_temporal=False): same streaming guarantees."""
    torch.manual_seed(1)
    vae = CausalVideoVAE(first_level_temporal=False).eval()
    latents = random_latents(5, seed=6)
    full = vae.decode(latents)
    stream = vae.stream_decoder()
    streamed = torch.cat([stream.decode(latents[:, :, a:b]) for a, b in ((0, 2), (2, 3), (3, 5))], dim=2)
    assert (streamed - full).abs().max().item() <= 1e-5
    changed = latents.clone()
    changed[:, :, 3:] += 1.0  # the future must not change the past
    assert torch.equal(vae.decode(changed)[:, :, :12], full[:, :, :12])


@torch.inference_mode()
def test_decode_streams_batches_videos_with_their_own_caches(vae):
    """Three videos decoded chunk by chunk in one batched pass each equal their own full decode."""
    videos = [random_latents(6, seed=s, batch=1) for s in (3, 4, 5)]
    decoders = [vae.stream_decoder() for _ in videos]
    pieces = [[] for _ in videos]
    for start in (0, 2, 4):
        outs = decode_streams(decoders, [v[:, :, start:start + 2] for v in videos])
        for p, out in zip(pieces, outs):
            p.append(out)
    for v, p in zip(videos, pieces):
        assert (torch.cat(p, dim=2) - vae.decode(v)).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="same progress"):
        decode_streams([decoders[0], vae.stream_decoder()], [videos[0][:, :, :1]] * 2)


@torch.inference_mode()
def test_stream_decoder_reset_starts_a_new_video(vae):
    latents = random_latents(3, seed=3)
    stream = vae.stream_decoder()
    stream.decode(random_latents(2, seed=4))
    stream.reset()
    assert (stream.decode(latents) - vae.decode(latents)).abs().max().item() <= 1e-5


@torch.inference_mode()
def test_stream_encode_equals_full_encode(vae):
    video = random_video(16, seed=5)
    full = vae.encode(video)
    stream = vae.stream_encoder()
    streamed = torch.cat([stream.encode(video[:, :, a:b]) for a, b in [(0, 4), (4, 12), (12, 16)]], dim=2)
    assert streamed.shape == full.shape
    assert (streamed - full).abs().max().item() <= 1e-5


@torch.inference_mode()
@pytest.mark.parametrize("i", [1, 3, 5])
def test_decode_is_causal(vae, i):
    latents = random_latents(6, seed=6)
    changed = latents.clone()
    changed[:, :, i] += torch.randn(changed[:, :, i].shape, generator=torch.Generator().manual_seed(7))
    before, after = vae.decode(latents), vae.decode(changed)
    assert torch.equal(before[:, :, : 4 * i], after[:, :, : 4 * i])
    # ...and the change does reach frame 4i onwards, so the check above is not vacuous.
    for frame in range(4 * i, 4 * i + 4):
        assert not torch.equal(before[:, :, frame], after[:, :, frame])


@torch.inference_mode()
def test_encode_is_causal(vae):
    video = random_video(16, seed=8)
    changed = video.clone()
    changed[:, :, 9] = 0.0  # a frame of latent 2 (frames 8..11)
    before, after = vae.encode(video), vae.encode(changed)
    assert torch.equal(before[:, :, :2], after[:, :, :2])
    assert not torch.equal(before[:, :, 2], after[:, :, 2])


@torch.inference_mode()
def test_stream_cache_has_constant_size(vae):
    latents = random_latents(1, seed=9, batch=1, size=2)
    stream = vae.stream_decoder()
    for _ in range(2):
        stream.decode(latents)
    after_two = stream.nbytes
    for _ in range(48):
        stream.decode(latents)
    assert after_two > 0
    assert stream.nbytes == after_two
    # Bigger chunks do not grow it either: only the last kernel-1 frames are kept.
    stream.decode(random_latents(5, seed=10, batch=1, size=2))
    assert stream.nbytes == after_two


@torch.inference_mode()
def test_latent_normalisation(vae):
    mean = [0.5 * c for c in range(LATENT_CHANNELS)]
    std = [1.0 + 0.25 * c for c in range(LATENT_CHANNELS)]
    normalised = CausalVideoVAE(latent_mean=mean, latent_std=std).eval()
    normalised.load_state_dict(vae.state_dict())
    video = random_video(4, seed=11)
    raw, _ = vae.encode_distribution(video)
    shape = (1, LATENT_CHANNELS, 1, 1, 1)
    m, s = torch.tensor(mean).view(shape), torch.tensor(std).view(shape)
    torch.testing.assert_close(normalised.encode(video), (raw - m) / s)
    latents = random_latents(2, seed=12)
    torch.testing.assert_close(normalised.decode(latents), vae.decode(latents * s + m))


@torch.inference_mode()
def test_save_load_round_trip(tmp_path):
    torch.manual_seed(13)
    original = CausalVideoVAE(latent_mean=[0.1] * LATENT_CHANNELS, latent_std=[2.0] * LATENT_CHANNELS).eval()
    original.save_pretrained(tmp_path / "vae")
    config = json.loads((tmp_path / "vae" / "config.json").read_text())
    assert config["_class_name"] == "CausalVideoVAE"
    assert config["latent_std"] == [2.0] * LATENT_CHANNELS
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").is_file()

    for loaded in (CausalVideoVAE.from_pretrained(tmp_path / "vae"), load_vae(tmp_path / "vae")):
        assert isinstance(loaded, CausalVideoVAE)
        assert loaded.config == original.config
        latents = random_latents(2, seed=14)
        assert torch.equal(loaded.decode(latents), original.decode(latents))
        video = random_video(4, seed=15)
        assert torch.equal(loaded.encode(video), original.encode(video))


def test_load_vae_rejects_unknown_class(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "NotAVae"}))
    with pytest.raises(ValueError, match="unknown VAE class 'NotAVae'"):
        load_vae(tmp_path)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((1, 3, 6, 32, 32), "6 frames.*multiple of 4"),
        ((1, 3, 0, 32, 32), "0 frames.*multiple of 4"),
        ((1, 3, 4, 30, 32), "30x32.*multiples of 8"),
        ((1, 3, 4, 32, 36), "32x36.*multiples of 8"),
        ((1, 4, 4, 32, 32), "4 channels.*expects 3"),
        ((3, 4, 32, 32), r"shape \(B, C, T, H, W\)"),
    ],
)
def test_encode_rejects_bad_video(vae, shape, message):
    with pytest.raises(ValueError, match=message):
        vae.encode(torch.zeros(shape))
    with pytest.raises(ValueError, match=message):
        vae.stream_encoder().encode(torch.zeros(shape))


def test_decode_rejects_bad_latents(vae):
    with pytest.raises(ValueError, match="5 channels.*expects 8"):
        vae.decode(torch.zeros(1, 5, 2, 4, 4))
    with pytest.raises(ValueError, match="0 frames"):
        vae.stream_decoder().decode(torch.zeros(1, LATENT_CHANNELS, 0, 4, 4))


@torch.inference_mode()
@pytest.mark.parametrize("kernel", [3, (3, 1, 1), (1, 3, 3), 1])
def test_causal_conv_matches_conv3d_with_past_padding(kernel):
    # CausalConv3d computes the 3-D conv as one 2-D conv over time-shifted copies; it must
    # equal torch's Conv3d on the input padded with kt-1 zero frames in the past.
    from sana_serve.engine.model.vae import CausalConv3d

    torch.manual_seed(16)
    conv = CausalConv3d(5, 7, kernel)
    x = torch.randn(2, 5, 6, 9, 10)  # (B, C, T, H, W)
    kt, kh, kw = conv.kernel_size
    padded = torch.nn.functional.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2, kt - 1, 0))
    expected = torch.nn.functional.conv3d(padded, conv.weight, conv.bias)
    got = conv(x.transpose(1, 2)).transpose(1, 2)  # the VAE's frame-major layout
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
