"""The engine with its Triton kernels forced on equals the PyTorch path, under Triton's CPU interpreter.

Run by `test_engine_kernels.py` in a child Python with TRITON_INTERPRET=1 from its start (see
triton_interpreter_checks.py for why); to run it directly:

    TRITON_INTERPRET=1 python -m pytest -q tests/kernels/engine_interpreter_checks.py
"""
import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 in the environment (see the module docstring)", allow_module_level=True)
pytest.importorskip("triton")

from sana_serve.engine.model.nvfp4 import NVFP4Linear  # noqa: E402
from sana_serve.engine.model.transformer import SanaVideoTransformer  # noqa: E402
from sana_serve.engine.quantize import quantize_transformer, set_kernels  # noqa: E402

RTOL = 1e-4
TINY = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2,
            num_cross_attention_heads=2, cross_attention_head_dim=16, cross_attention_dim=32, caption_channels=24,
            mlp_ratio=2.5, patch_size=(1, 2, 2), sample_size=8)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()


def tiny_model(seed, nvfp4=False):
    torch.manual_seed(seed)
    model = SanaVideoTransformer(**TINY).eval()
    for p in model.parameters():  # the default init leaves some layers at zero; use fresh non-trivial weights
        p.data.normal_(0, 0.3 if p.ndim > 1 else 0.05)
    if nvfp4:
        quantize_transformer(model)
    return model


def run_stream(model, kernels, seed, chunks=3):
    """Outputs of several chunks with the state carried between them (and the final state)."""
    set_kernels(model, kernels, torch.device("cpu"))
    g = torch.Generator().manual_seed(seed)
    text = model.encode_text(torch.randn(2, 5, TINY["caption_channels"], generator=g), torch.ones(2, 5))
    state = model.new_state(2)
    outputs = []
    with torch.no_grad():
        for c in range(chunks):
            x = torch.randn(2, 4, 3, 6, 10, generator=g)  # 3 frames of 3x5 tokens: 45 tokens, not a power of two
            t = torch.rand(2, generator=g) * 1000
            outputs.append(model.forward_chunk(x, t, text, state))
            model.forward_chunk(x, torch.zeros(2), text, state, update_state=True)
    return outputs, state


@pytest.mark.parametrize("nvfp4", [False, True])
def test_forced_triton_chunk_path_equals_torch(nvfp4):
    model = tiny_model(seed=11 + nvfp4, nvfp4=nvfp4)
    assert set_kernels(model, "triton", torch.device("cpu")) == "triton"
    assert all(m.kernels == "triton" for m in model.modules() if hasattr(m, "kernels"))
    if nvfp4:
        layers = [m for m in model.modules() if isinstance(m, NVFP4Linear)]
        assert len(layers) == 20 and all(m.backend == "triton" for m in layers)
    got, got_state = run_stream(model, "triton", seed=5)
    want, want_state = run_stream(model, "torch", seed=5)
    for a, b in zip(got, want):
        assert rel_err(a, b) <= RTOL
    for a, b in zip(got_state.layers, want_state.layers):
        assert rel_err(a.vk, b.vk) <= RTOL and rel_err(a.k_sum, b.k_sum) <= RTOL


def test_forced_triton_attention_with_per_row_positions():
    """Batched requests at different frame positions get per-row RoPE tables (B, N, D/2)."""
    model = tiny_model(seed=3)
    attn = model.transformer_blocks[0].attn1
    g = torch.Generator().manual_seed(8)
    x = torch.randn(3, 45, model.inner_dim, generator=g)
    cos, sin = model.rope([0, 7, 20], 3, 3, 5, "cpu")
    assert cos.ndim == 3
    past = (torch.randn(3, 2, 16, 16, generator=g), torch.rand(3, 2, 16, generator=g) * 10)
    attn.kernels = "triton"
    got = attn(x, (cos, sin), past)
    attn.kernels = "torch"
    want = attn(x, (cos, sin), past)
    assert rel_err(got[0], want[0]) <= RTOL
    assert rel_err(got[1][0], want[1][0]) <= RTOL and rel_err(got[1][1], want[1][1]) <= RTOL


def test_auto_on_cpu_stays_torch():
    model = tiny_model(seed=1, nvfp4=True)
    assert set_kernels(model, "auto", torch.device("cpu")) == "torch"
    assert model.transformer_blocks[0].attn1.kernels == "torch"


@pytest.mark.parametrize("nvfp4", [False, True])
def test_forced_triton_batch_invariant_forward_equals_each_solo_forward(nvfp4):
    """Three requests (2, 1, 2 rows) at different positions in one forward with request_rows: with
    the Triton linear attention (and Triton NVFP4 GEMMs) each request's rows are exactly its own
    forward's, although the kernel's token-sum split depends on batch x heads."""
    from sana_serve.engine.model.state import StateBatch
    from sana_serve.engine.model.transformer import TextContext

    model = tiny_model(seed=21 + nvfp4, nvfp4=nvfp4)
    set_kernels(model, "triton", torch.device("cpu"))
    g = torch.Generator().manual_seed(2)
    rows = [2, 1, 2]
    texts = [model.encode_text(torch.randn(r, 5, TINY["caption_channels"], generator=g), torch.ones(r, 5)) for r in rows]
    states = [model.new_state(r) for r in rows]
    with torch.no_grad():
        for k, (r, text, state) in enumerate(zip(rows, texts, states)):
            for _ in range(k):  # different pasts and frame positions
                model.forward_chunk(torch.randn(r, 4, 3, 6, 10, generator=g), torch.zeros(r), text, state, update_state=True)
        xs = [torch.randn(r, 4, 3, 6, 10, generator=g) for r in rows]
        ts = [torch.rand(r, generator=g) * 1000 for r in rows]
        solo = [model.forward_chunk(x, t, text, state) for x, t, text, state in zip(xs, ts, texts, states)]
        out = model.forward_chunk(torch.cat(xs), torch.cat(ts), TextContext.cat(texts), StateBatch(states, [False] * 3),
                                  request_rows=rows)
    for got, want in zip(out.split(rows), solo):
        assert torch.equal(got, want)
