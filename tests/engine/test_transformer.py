"""The transformer against diffusers, and the block-causal rollout against a dense masked reference."""
import pytest
import torch
import torch.nn.functional as F

from sana_serve.engine.model.transformer import SanaVideoTransformer

diffusers = pytest.importorskip("diffusers")
from diffusers import SanaVideoTransformer3DModel  # noqa: E402
from diffusers.models.transformers.transformer_sana_video import WanRotaryPosEmbed  # noqa: E402

TINY = dict(in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=24, num_layers=2,
            num_cross_attention_heads=2, cross_attention_head_dim=24, cross_attention_dim=48,
            caption_channels=32, sample_size=8)


def random_pair(seed=0, **overrides):
    """diffusers' model with every parameter randomised (zero-init ones too), and ours loaded from it."""
    torch.manual_seed(seed)
    kw = {**TINY, **overrides}
    ref = SanaVideoTransformer3DModel(**kw).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    ours = SanaVideoTransformer(**kw).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("overrides", [{}, {"patch_size": (1, 1, 1), "num_layers": 3},
                                       {"attention_bias": True, "norm_elementwise_affine": True}])
def test_matches_diffusers_with_text_mask(overrides):
    ref, ours = random_pair(**overrides)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 5, 8, 8, generator=g)
    text = torch.randn(2, 7, 32, generator=g)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 3:] = 0
    t = torch.tensor([999.0, 250.0])
    with torch.no_grad():
        expected = ref(x, text, t, encoder_attention_mask=mask).sample
        got = ours(x, text, t, encoder_attention_mask=mask)
    assert got.shape == expected.shape
    assert rel_err(got, expected) <= 1e-4
    # the mask matters: dropping it changes the output, so the comparison above exercised it
    with torch.no_grad():
        unmasked = ours(x, text, t)
    assert rel_err(unmasked, expected) > 1e-3


def test_matches_diffusers_with_guidance_embeds():
    ref, ours = random_pair(guidance_embeds=True)
    g = torch.Generator().manual_seed(2)
    x, text = torch.randn(1, 8, 3, 8, 8, generator=g), torch.randn(1, 5, 32, generator=g)
    t, guidance = torch.tensor([500.0]), torch.tensor([4.5])
    with torch.no_grad():
        expected = ref(x, text, t, guidance=guidance).sample
        got = ours(x, text, t, guidance=guidance)
    assert rel_err(got, expected) <= 1e-4


RELEASE_HEADS = dict(num_attention_heads=2, attention_head_dim=112, num_cross_attention_heads=2,
                     cross_attention_head_dim=112, cross_attention_dim=224)


def test_matches_diffusers_at_the_release_head_dim():
    """The released 2B model's head dim, 112: its RoPE split (t 40, h 36, w 36) differs from the one
    at the small head dims above, where two split rules in use happen to agree."""
    ref, ours = random_pair(seed=5, **RELEASE_HEADS)
    assert (ours.rope.t_dim, ours.rope.h_dim, ours.rope.w_dim) == (40, 36, 36)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 8, 3, 8, 8, generator=g)
    text = torch.randn(2, 5, 32, generator=g)
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, 2:] = 0
    t = torch.tensor([999.0, 300.0])
    with torch.no_grad():
        expected = ref(x, text, t, encoder_attention_mask=mask).sample
        got = ours(x, text, t, encoder_attention_mask=mask)
    assert rel_err(got, expected) <= 1e-4


# ---------------------------------------------------------------------------------------------
# Dense reference of the block-causal (LongSANA) model, written here from diffusers' modules:
# one pass over the whole video, with an attention mask "key chunk <= query chunk (and within
# the window)" and a temporal conv that never looks into the next chunk.
# ---------------------------------------------------------------------------------------------
def dense_block_causal(ref, x, text, mask, t_frames, chunk_sizes, window=None):
    p_t, p_h, p_w = ref.config.patch_size
    assert p_t == 1, "chunks are whole latent frames"
    b, _, frames, height, width = x.shape
    height, width = height // p_h, width // p_w  # in tokens
    chunk_of_frame = torch.cat([torch.full((n,), i) for i, n in enumerate(chunk_sizes)])
    tokens_per_frame = height * width
    chunk_of_token = chunk_of_frame.repeat_interleave(tokens_per_frame)
    cq, ck = chunk_of_token[:, None], chunk_of_token[None, :]
    allowed = ck <= cq
    if window is not None:  # the state remembers `window` past chunks; a chunk always sees itself
        allowed &= ck >= cq - window
    allowed = allowed.float()
    last_of_chunk = torch.zeros(frames, dtype=torch.bool)
    last_of_chunk[torch.cumsum(torch.tensor(chunk_sizes), 0) - 1] = True

    rope = WanRotaryPosEmbed(ref.config.attention_head_dim, tuple(ref.config.patch_size), 1024)
    cos, sin = rope(x)
    cos, sin = cos[0, :, 0], sin[0, :, 0]  # (N, D)

    def rot(v):  # interleaved pairs, as diffusers
        x1, x2 = v[..., 0::2], v[..., 1::2]
        out = torch.empty_like(v)
        out[..., 0::2] = x1 * cos[:, None, 0::2] - x2 * sin[:, None, 1::2]
        out[..., 1::2] = x1 * sin[:, None, 1::2] + x2 * cos[:, None, 0::2]
        return out

    h = ref.patch_embedding(x).flatten(2).transpose(1, 2)
    mod, emb = ref.time_embed(t_frames.flatten(), batch_size=b * frames, hidden_dtype=h.dtype)
    mod = mod.view(b, frames, 1, 6, -1).expand(-1, -1, tokens_per_frame, -1, -1).reshape(b, -1, 6, h.shape[-1])
    emb = emb.view(b, frames, 1, -1).expand(-1, -1, tokens_per_frame, -1).reshape(b, -1, h.shape[-1])
    ctx = ref.caption_norm(ref.caption_projection(text))
    bias = ((1 - mask.float()) * -10000.0)[:, None, :]

    for blk in ref.transformer_blocks:
        sh1, sc1, g1, sh2, sc2, g2 = (blk.scale_shift_table[None, None] + mod).unbind(2)
        a = blk.attn1
        n = blk.norm1(h) * (1 + sc1) + sh1
        q = F.relu(a.norm_q(a.to_q(n))).unflatten(2, (a.heads, -1))
        k = F.relu(a.norm_k(a.to_k(n))).unflatten(2, (a.heads, -1))
        v = a.to_v(n).unflatten(2, (a.heads, -1))
        scores = torch.einsum("bihd,bjhd->bhij", rot(q), rot(k)) * allowed
        norms = torch.einsum("bihd,bjhd->bhij", q, k) * allowed
        out = torch.einsum("bhij,bjhd->bihd", scores, v) / (norms.sum(-1).transpose(1, 2)[..., None] + 1e-15)
        h = h + g1 * a.to_out[0](out.flatten(2))
        h = h + blk.attn2(h, encoder_hidden_states=ctx, attention_mask=bias)

        ff = blk.ff
        n = (blk.norm2(h) * (1 + sc2) + sh2).unflatten(1, (frames, height, width))
        y = n.flatten(0, 1).permute(0, 3, 1, 2)
        y = ff.conv_depth(F.silu(ff.conv_inverted(y)))
        y, gate = y.chunk(2, dim=1)
        y = ff.conv_point(y * F.silu(gate))  # (B*F, C, H, W)
        y = y.view(b, frames, -1, tokens_per_frame).permute(0, 2, 1, 3)  # (B, C, F, HW)
        look_ahead = F.conv2d(F.pad(y, (0, 0, 0, 1))[:, :, 1:], ff.conv_temp.weight[:, :, 2:3])
        y = y + ff.conv_temp(y) - look_ahead * last_of_chunk[None, None, :, None]
        h = h + g2 * y.permute(0, 2, 3, 1).flatten(1, 2)

    sh, sc = (ref.scale_shift_table[None, None] + emb[:, :, None]).unbind(2)
    h = ref.proj_out(ref.norm_out.norm(h) * (1 + sc) + sh)
    h = h.view(b, frames, height, width, p_h, p_w, -1).permute(0, 6, 1, 2, 4, 3, 5)
    return h.reshape(b, -1, frames, height * p_h, width * p_w)


@pytest.mark.parametrize("chunk_sizes,window,heads", [([2, 3, 3, 3], None, {}), ([3, 3, 3, 3], 2, {}),
                                                     ([1, 1, 1, 1, 1], None, {}), ([2, 3, 3], None, RELEASE_HEADS)])
def test_rollout_through_state_equals_dense_block_causal_reference(chunk_sizes, window, heads):
    ref, ours = random_pair(seed=3, patch_size=(1, 1, 1), **heads)
    g = torch.Generator().manual_seed(4)
    frames = sum(chunk_sizes)
    x = torch.randn(2, 8, frames, 4, 4, generator=g)
    text = torch.randn(2, 6, 32, generator=g)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, 4:] = 0
    # a different noise level per chunk (0 = clean context), per batch row
    t_chunk = torch.randint(0, 1000, (2, len(chunk_sizes)), generator=g).float()
    t_chunk[:, 0] = 0.0
    t_frames = t_chunk.repeat_interleave(torch.tensor(chunk_sizes), dim=1)

    with torch.no_grad():
        expected = dense_block_causal(ref, x, text, mask, t_frames, chunk_sizes, window)
        ctx = ours.encode_text(text, mask)
        state = ours.new_state(2, window_chunks=window)
        outs, start = [], 0
        for i, n in enumerate(chunk_sizes):
            outs.append(ours.forward_chunk(x[:, :, start:start + n], t_chunk[:, i], ctx, state, update_state=True))
            start += n
    got = torch.cat(outs, dim=2)
    assert rel_err(got, expected) <= 1e-4
    # causality really is restricted: the dense bidirectional pass differs
    with torch.no_grad():
        assert rel_err(ours(x, text, t_frames[:, 0], encoder_attention_mask=mask), expected) > 1e-3


def test_noisy_chunk_over_clean_context_equals_reference():
    """What the sampler does: past chunks clean (t=0) in the state, current chunk noisy, no update."""
    ref, ours = random_pair(seed=5, patch_size=(1, 1, 1))
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 8, 6, 4, 4, generator=g)
    text, mask = torch.randn(1, 4, 32, generator=g), torch.ones(1, 4, dtype=torch.long)
    t_frames = torch.tensor([[0.0, 0, 0, 0, 700, 700]])
    with torch.no_grad():
        expected = dense_block_causal(ref, x, text, mask, t_frames, [2, 2, 2])[:, :, 4:]
        ctx = ours.encode_text(text, mask)
        state = ours.new_state(1)
        for s in (0, 2):
            ours.forward_chunk(x[:, :, s:s + 2], torch.zeros(1), ctx, state, update_state=True)
        before = state.nbytes(), [l.vk.clone() for l in state.layers]
        got = ours.forward_chunk(x[:, :, 4:], torch.tensor([700.0]), ctx, state)
    assert rel_err(got, expected) <= 1e-4
    assert state.next_frame == 4 and all(torch.equal(a, l.vk) for a, l in zip(before[1], state.layers))


@pytest.mark.parametrize("window", [None, 3])
def test_state_size_is_constant(window):
    torch.manual_seed(0)
    model = SanaVideoTransformer(**{**TINY, "patch_size": (1, 1, 1)}).eval()
    ctx = model.encode_text(torch.randn(1, 3, 32))
    state = model.new_state(1, window_chunks=window)
    sizes = {}
    with torch.no_grad():
        for chunk in range(1, 201):
            model.forward_chunk(torch.randn(1, 8, 1, 2, 2), torch.zeros(1), ctx, state, update_state=True)
            if chunk in (2, 200):
                sizes[chunk] = state.nbytes()
    assert sizes[2] == sizes[200] > 0
    assert state.next_frame == 200
    assert all(torch.isfinite(l.vk).all() for l in state.layers)


def test_circular_padding_makes_the_mix_ffn_wrap_around():
    """A world on a torus: with spatial_padding='circular' the Mix-FFN commutes with a roll of the
    frame (an object crossing the edge is one object to it); with diffusers' zeros it does not.
    The weights are interchangeable, and the option is saved in config.json only when it is set."""
    from sana_serve.engine.model.transformer import GLUMBTempConv

    torch.manual_seed(0)
    zeros, circular = GLUMBTempConv(16, 2.0), GLUMBTempConv(16, 2.0, spatial_padding="circular")
    circular.load_state_dict(zeros.state_dict())
    x = torch.randn(2, 3 * 4 * 5, 16)  # (B, F*H*W, C): 3 frames of 4x5 tokens

    def roll(t):  # shift every frame by 1 token down and 2 tokens right, wrapping around
        return t.view(2, 3, 4, 5, 16).roll((1, 2), dims=(2, 3)).reshape(2, -1, 16)

    with torch.no_grad():
        for ffn, wraps in ((circular, True), (zeros, False)):
            out, _ = ffn(x, 3, 4, 5, None)
            rolled, _ = ffn(roll(x), 3, 4, 5, None)
            assert torch.allclose(rolled, roll(out), atol=1e-5) == wraps
        # away from the edges, zeros and circular agree: the padding is the only difference
        inner = (slice(None), slice(None), slice(1, 3), slice(1, 4))
        a, _ = zeros(x, 3, 4, 5, None)
        b, _ = circular(x, 3, 4, 5, None)
        assert torch.allclose(a.view(2, 3, 4, 5, 16)[inner], b.view(2, 3, 4, 5, 16)[inner], atol=1e-6)
        assert not torch.allclose(a, b, atol=1e-3)
    assert "spatial_padding" not in SanaVideoTransformer(**TINY).config
    assert SanaVideoTransformer(**TINY, spatial_padding="circular").config["spatial_padding"] == "circular"
    with pytest.raises(ValueError, match="spatial_padding"):
        SanaVideoTransformer(**TINY, spatial_padding="reflect")
