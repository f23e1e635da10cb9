"""`NVFP4Linear`: a linear layer whose weight stays packed NVFP4 in memory (~4.5 bits per weight).

Its state dict is ModelOpt's Hugging Face export layout, key for key, so a quantized checkpoint
loads into it with strict=True and saving it writes the same layout back:

    <layer>.weight          uint8 [out, in/2]          two E2M1 codes per byte, even column low
    <layer>.weight_scale    float8_e4m3fn [out, in/16] one scale per 16 input features
    <layer>.weight_scale_2  fp32 scalar                the per-tensor global scale
    <layer>.input_scale     fp32 scalar                only where activations are calibrated (W4A4
                                                       consumers); the engine's own paths are
                                                       weight-only and do not use it
    <layer>.bias            the high-precision bias, if any

Forward dequantizes: the PyTorch reference on CPU, the Triton weight-only GEMM on CUDA (FP4
tensor cores on Blackwell when `backend="auto"`), see kernels.nvfp4_gemm.nvfp4_linear.
"""
from __future__ import annotations

import torch
from torch import nn

from sana_serve.kernels.nvfp4 import NVFP4Weight, quantize_nvfp4
from sana_serve.kernels.nvfp4_gemm import nvfp4_linear

GROUP_SIZE = 16
_PACKED = ("weight", "weight_scale", "weight_scale_2", "input_scale")


class NVFP4Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, input_scale: bool = False,
                 dtype: torch.dtype = torch.float32, device=None, backend: str = "auto"):
        super().__init__()
        if in_features % GROUP_SIZE:
            raise ValueError(f"NVFP4Linear needs in_features divisible by {GROUP_SIZE}, got {in_features}")
        self.in_features, self.out_features = in_features, out_features
        self.backend = backend  # "auto" | "triton" | "torch" (| "fp4"), see nvfp4_linear
        self.register_buffer("weight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, in_features // GROUP_SIZE, device=device)
                             .to(torch.float8_e4m3fn))
        self.register_buffer("weight_scale_2", torch.ones((), dtype=torch.float32, device=device))
        self.register_buffer("input_scale", torch.ones((), dtype=torch.float32, device=device) if input_scale else None)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None

    @classmethod
    def from_weight(cls, q: NVFP4Weight, bias: torch.Tensor | None = None,
                    input_scale: torch.Tensor | None = None) -> "NVFP4Linear":
        if q.block_size != GROUP_SIZE or q.padded_in_features != q.in_features:
            raise ValueError(f"expected group size {GROUP_SIZE} without padding, got {q.block_size}, {q.shape}")
        dtype = bias.dtype if bias is not None else torch.float32
        m = cls(q.in_features, q.out_features, bias is not None, input_scale is not None, dtype, q.device)
        m.weight.copy_(q.packed)
        m.weight_scale.copy_(q.scales)
        m.weight_scale_2.copy_(q.global_scale)
        if input_scale is not None:
            m.input_scale.copy_(input_scale)
        if bias is not None:
            m.bias.data.copy_(bias.detach())
        return m

    @classmethod
    def from_linear(cls, linear: nn.Linear, input_scale: torch.Tensor | None = None) -> "NVFP4Linear":
        """Quantize an nn.Linear (bit-exact with ModelOpt's NVFP4QTensor, see kernels.nvfp4)."""
        return cls.from_weight(quantize_nvfp4(linear.weight.detach(), GROUP_SIZE), linear.bias, input_scale)

    @property
    def packed(self) -> NVFP4Weight:
        return NVFP4Weight(self.weight, self.weight_scale, self.weight_scale_2,
                           (self.out_features, self.in_features), GROUP_SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nvfp4_linear(x, self.packed, self.bias, backend=self.backend)

    def _apply(self, fn, recurse=True):
        # `.to(dtype)` / `.half()` must not touch the packed format (float8 scales count as floating
        # point, and a bf16 global scale would lose bits): the packed buffers follow only the device.
        packed = {n: self._buffers.pop(n) for n in _PACKED}
        try:
            super()._apply(fn, recurse)
        finally:
            device = fn(torch.empty(0, device=packed["weight"].device)).device
            for name, buf in packed.items():
                self._buffers[name] = None if buf is None else buf.to(device)
        return self

    def resident_bytes(self) -> int:
        return sum(t.nbytes for t in (*self.buffers(), *self.parameters()))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"backend={self.backend}")
