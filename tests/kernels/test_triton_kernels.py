"""Triton kernels vs their PyTorch references, under Triton's CPU interpreter.

The checks themselves are in `triton_interpreter_checks.py`. They run in a child Python with
TRITON_INTERPRET=1 set from its start: Triton fixes interpreter-or-compiler when it is first
imported, and in one pytest session other modules (kernels, the engine, ModelOpt) import it
during collection, before any test module could set the variable.
"""
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")  # in the dev extra

from sana_serve.kernels._triton import is_interpreted  # noqa: E402
from tests.kernels.interpreter import assert_checks_pass_under_interpreter  # noqa: E402
from sana_serve.kernels.linear_attention import _state_kernel, chunk_linear_attention, chunk_linear_attention_reference  # noqa: E402
from sana_serve.kernels.nvfp4 import quantize_nvfp4  # noqa: E402
from sana_serve.kernels.nvfp4_gemm import nvfp4_linear  # noqa: E402

CHECKS = Path(__file__).with_name("triton_interpreter_checks.py")


def test_triton_kernels_match_references_under_the_interpreter():
    assert_checks_pass_under_interpreter(CHECKS)


@pytest.mark.skipif(is_interpreted(_state_kernel), reason="this session itself runs Triton's interpreter")
def test_triton_on_cpu_without_the_interpreter_is_a_clear_error():
    q = k = v = torch.randn(1, 8, 1, 16)
    cos, sin = torch.ones(8, 8), torch.zeros(8, 8)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        chunk_linear_attention(q, k, v, cos, sin, backend="triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        nvfp4_linear(torch.randn(2, 32), quantize_nvfp4(torch.randn(16, 32)), backend="triton")
    # "auto" on CPU never needs Triton
    out, _, _ = chunk_linear_attention(q, k, v, cos, sin)
    assert torch.equal(out, chunk_linear_attention_reference(q, k, v, cos, sin)[0])
