"""Precision defaults: bf16 on CUDA (the released models' dtype), fp32 on CPU; NVFP4 serves on a
bf16 base on CUDA and never needs ModelOpt to load."""
import sys

import pytest
import torch

from sana_serve.cli import build_parser
from sana_serve.engine.config import ConfigError
from sana_serve.engine.load import VAE_DTYPE, load_engine, resolve_precision, weights_dtype
from sana_serve.engine.model.nvfp4 import NVFP4Linear
from sana_serve.engine.quantize import QuantizationError, quantize_transformer
from sana_serve.server.config import ServerSettings

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def test_auto_is_bf16_on_cuda_and_fp32_on_cpu():
    assert resolve_precision("auto", CUDA) == "bf16" and weights_dtype("auto", CUDA) == torch.bfloat16
    assert resolve_precision("auto", CPU) == "fp32" and weights_dtype("auto", CPU) == torch.float32
    assert weights_dtype("fp32", CUDA) == torch.float32 and weights_dtype("bf16", CPU) == torch.bfloat16
    with pytest.raises(ConfigError, match="precision must be one of"):
        resolve_precision("fp8", CPU)


def test_nvfp4_keeps_its_unquantized_parts_in_bf16_on_cuda():
    """Not fp32: fp32 activations take no tensor cores and push the Triton GEMM onto its ieee path."""
    assert weights_dtype("nvfp4", CUDA) == torch.bfloat16
    assert weights_dtype("nvfp4", CPU) == torch.float32  # bf16 matmuls crawl on CPUs
    assert VAE_DTYPE == torch.float32  # the Wan VAE decodes in fp32 as diffusers' pipelines do


def test_command_line_and_server_default_to_auto():
    parser = build_parser()
    assert parser.parse_args(["generate", "--prompt", "p", "--seconds", "1", "--out", "x.mp4"]).precision == "auto"
    assert ServerSettings().precision == "auto"


def test_cpu_engine_default_is_fp32():
    engine = load_engine("shapes-tiny", device="cpu")
    assert {p.dtype for p in engine.transformer.parameters()} == {torch.float32}


def test_quantize_on_load_needs_no_modelopt(monkeypatch):
    """Quantize-on-load packs with kernels.nvfp4 (the same bits as ModelOpt): it works where ModelOpt
    is not installed (the GPU image), and asking for ModelOpt without it is one clear error."""
    monkeypatch.setitem(sys.modules, "modelopt", None)  # an import of modelopt now fails as if absent
    monkeypatch.setattr("sana_serve.engine.quantize.modelopt_installed", lambda: False)
    engine = load_engine("shapes-tiny", device="cpu", precision="nvfp4")
    assert any(isinstance(m, NVFP4Linear) for m in engine.transformer.modules())
    with pytest.raises(QuantizationError, match=r"sana-serve\[nvfp4\]"):
        quantize_transformer(load_engine("shapes-tiny", device="cpu").transformer, method="modelopt")
