"""The engine's kernel switch: Triton forced on (under the interpreter) equals PyTorch; clear errors otherwise.

The equality checks are in `engine_interpreter_checks.py`, run in a child Python with
TRITON_INTERPRET=1 set from its start (Triton fixes interpreter-or-compiler at its first import).
"""
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")  # in the dev extra

from sana_serve.engine.model.attention import LinearSelfAttention  # noqa: E402
from sana_serve.engine.model.transformer import SanaVideoTransformer  # noqa: E402
from sana_serve.engine.quantize import QuantizationError, set_kernels  # noqa: E402
from sana_serve.kernels._triton import is_interpreted  # noqa: E402
from tests.kernels.interpreter import assert_checks_pass_under_interpreter  # noqa: E402
from sana_serve.kernels.linear_attention import _state_kernel  # noqa: E402

CHECKS = Path(__file__).with_name("engine_interpreter_checks.py")


def test_engine_triton_path_matches_torch_under_the_interpreter():
    assert_checks_pass_under_interpreter(CHECKS)


def tiny():
    return SanaVideoTransformer(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16,
                                num_layers=1, num_cross_attention_heads=2, cross_attention_head_dim=16,
                                cross_attention_dim=32, caption_channels=24, sample_size=4)


@pytest.mark.skipif(is_interpreted(_state_kernel), reason="this session itself runs Triton's interpreter")
def test_forcing_triton_on_cpu_without_the_interpreter_is_a_clear_error():
    with pytest.raises(QuantizationError, match="TRITON_INTERPRET=1"):
        set_kernels(tiny(), "triton", torch.device("cpu"))


def test_auto_and_torch_keep_the_pytorch_path_on_cpu():
    model = tiny()
    for kernels in ("auto", "torch"):
        assert set_kernels(model, kernels, torch.device("cpu")) == "torch"
        assert all(m.kernels == "torch" for m in model.modules() if isinstance(m, LinearSelfAttention))
    with pytest.raises(QuantizationError, match="kernels must be one of"):
        set_kernels(model, "cuda", torch.device("cpu"))
