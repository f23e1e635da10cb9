"""What the GPU kernels do when they cannot run, and that the W4A4 path never waits on the device.

Runs in a plain (non-interpreted) process: there a Triton launch on CPU tensors genuinely fails,
which is the failure the engine's fallback must absorb (as a compile or launch error would on a GPU).
"""
import logging

import pytest
import torch

from sana_serve.engine.model.transformer import SanaVideoTransformer
from sana_serve.kernels.linear_attention import TRITON_FALLBACK, _state_kernel
from sana_serve.kernels.nvfp4 import dequantize_nvfp4, quantize_nvfp4
from sana_serve.kernels._triton import is_interpreted, triton_available

TINY = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2,
            num_cross_attention_heads=2, cross_attention_head_dim=16, cross_attention_dim=32, caption_channels=24,
            mlp_ratio=2.5, patch_size=(1, 2, 2), sample_size=8)


def test_activation_quantization_never_waits_on_the_device():
    """Meta tensors have no data: any host round trip (`.item()`, `if tensor`, a boolean-mask
    index) raises on them. The per-call activation quantizer of the FP4 path must not need one."""
    q = quantize_nvfp4(torch.empty(8, 40, device="meta"), check_finite=False)
    assert q.packed.shape == (8, 24) and q.scales.shape == (8, 3) and q.packed.device.type == "meta"
    with pytest.raises(RuntimeError, match="meta"):  # the weight path checks finiteness: that is a sync
        quantize_nvfp4(torch.empty(8, 40, device="meta"))


@pytest.mark.parametrize("zero", [False, True])
def test_unchecked_quantization_is_bit_identical(zero):
    g = torch.Generator().manual_seed(4)
    w = torch.zeros(6, 40) if zero else torch.randn(6, 40, generator=g) * 3
    a, b = quantize_nvfp4(w), quantize_nvfp4(w, check_finite=False)
    assert torch.equal(a.packed, b.packed) and torch.equal(a.scales.view(torch.uint8), b.scales.view(torch.uint8))
    assert torch.equal(a.global_scale, b.global_scale)


def test_nan_activation_propagates_instead_of_raising():
    x = torch.randn(4, 32)
    x[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        quantize_nvfp4(x)
    assert dequantize_nvfp4(quantize_nvfp4(x, check_finite=False)).isnan().all()  # NaN in, NaN out


@pytest.fixture
def fresh_fallback():
    TRITON_FALLBACK.error = None
    yield TRITON_FALLBACK
    TRITON_FALLBACK.error = None


@pytest.mark.skipif(not triton_available(), reason="needs triton (dev extra)")
@pytest.mark.skipif(is_interpreted(_state_kernel), reason="this session itself runs Triton's interpreter")
def test_attention_falls_back_to_torch_once_when_triton_cannot_launch(fresh_fallback, caplog):
    torch.manual_seed(0)
    model = SanaVideoTransformer(**TINY).eval()
    g = torch.Generator().manual_seed(1)
    text = model.encode_text(torch.randn(1, 5, 24, generator=g), torch.ones(1, 5))
    x = torch.randn(1, 4, 2, 6, 10, generator=g)
    t = torch.full((1,), 500.0)
    with torch.no_grad():
        want = model.forward_chunk(x, t, text, model.new_state(1))
        attn = [m for m in model.modules() if hasattr(m, "kernels_fallback")]
        for m in attn:  # what set_kernels("auto") does on CUDA, here where a Triton launch fails
            m.kernels, m.kernels_fallback = "triton", False
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):  # forced: the error is the user's answer
            model.forward_chunk(x, t, text, model.new_state(1))
        for m in attn:
            m.kernels_fallback = True
        with caplog.at_level(logging.ERROR, logger="sana_serve.kernels"):
            got = [model.forward_chunk(x, t, text, model.new_state(1)) for _ in range(2)]
    assert all(torch.equal(g_, want) for g_ in got)  # bit for bit the PyTorch path
    assert fresh_fallback.failed
    logged = [r for r in caplog.records if "linear attention failed" in r.getMessage()]
    assert len(logged) == 1 and "PyTorch" in logged[0].getMessage()
