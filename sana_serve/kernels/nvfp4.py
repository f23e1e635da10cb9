"""NVFP4 weights in plain PyTorch: quantize, pack, dequantize, and the reference linear.

NVFP4 stores each weight as a 4-bit E2M1 float (values 0, ±0.5, ±1, ±1.5, ±2, ±3, ±4, ±6), one
float8_e4m3fn scale per 16 consecutive input features, and one fp32 scale per tensor:

    w ≈ e2m1 * (scale_fp8 * global_scale)

This follows NVIDIA ModelOpt's `NVFP4QTensor.quantize(w, block_size)` (dynamic, non-TensorRT path)
bit for bit, so a checkpoint quantized here loads anywhere ModelOpt's export loads:

    global_scale = amax(|w|) / (6 * 448)                                  (fp32)
    block_scale  = fp8_e4m3( clamp(block_amax / (6 * global_scale), 2**-9, 448) )
                   (a block whose amax is 0 gets scale 1.0 before the clamp)
    code         = E2M1 round-to-nearest-even( w / (block_scale_fp32 * global_scale) ),
                   saturating at ±6; the sign bit is (w < 0), so a small negative value that
                   rounds to zero is stored as code 8 ("-0"), exactly as ModelOpt does
    packed byte  = code[2i] | code[2i+1] << 4           (even column in the low nibble)

Note the division order: ModelOpt divides by the fp32 product `scale * global_scale` (not by
each in turn), and the block scale divides `block_amax` by the fp32 product `6 * global_scale`;
both matter for bit-exactness.

In-features that are not a multiple of the block size are zero-padded on the right, as ModelOpt
does (`reduce_block_padding`): `packed` is `[out, ceil(in/16)*8]` and `scales` `[out, ceil(in/16)]`.
`shape` keeps the real `(out, in)` and `dequantize_nvfp4` crops back to it (ModelOpt's own
`dequantize` raises on such padded tensors).

One deliberate difference: an all-zero tensor. ModelOpt then divides 0 by 0 and returns NaN
scales and codes of 6.0; here it gets global scale 0, block scales 1.0 and codes 0, which
dequantize to exact zeros.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "E2M1_MAX",
    "E4M3_MAX",
    "E2M1_VALUES",
    "NVFP4Weight",
    "quantize_nvfp4",
    "dequantize_nvfp4",
    "nvfp4_linear_reference",
    "unpack_nvfp4_codes",
]

E2M1_MAX = 6.0
E4M3_MAX = 448.0
E4M3_MIN_SCALE = 2.0**-9  # smallest positive float8_e4m3fn (subnormal): scales never underflow to 0

# Decision boundaries between neighbouring E2M1 magnitudes; a value exactly on a boundary goes to
# the neighbour with an even mantissa (round half to even): the boundaries after 0.5, 1.5 and 3
# (0.75, 1.75, 3.5) round up, the others (0.25, 1.25, 2.5, 5) round down.
_E2M1_BOUNDS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
_E2M1_ROUND_UP_TIES = (0.75, 1.75, 3.5)
# Code -> value, code = sign << 3 | magnitude index. Code 8 ("-0") decodes to +0 as in ModelOpt.
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


@dataclass(frozen=True)
class NVFP4Weight:
    """A [out, in] weight in NVFP4: ~4.5 bits per weight resident (4 + 8 bits per 16 for scales)."""

    packed: torch.Tensor  # uint8 [out, in_padded / 2]; even column in the low nibble
    scales: torch.Tensor  # float8_e4m3fn [out, in_padded / block_size]
    global_scale: torch.Tensor  # fp32, 0-d
    shape: tuple[int, int]  # the real (out, in), before padding
    block_size: int = 16

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def padded_in_features(self) -> int:
        return self.packed.shape[1] * 2

    @property
    def device(self) -> torch.device:
        return self.packed.device

    @property
    def nbytes(self) -> int:
        """Resident bytes of the packed weight, its block scales and its global scale."""
        return self.packed.nbytes + self.scales.nbytes + self.global_scale.nbytes

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / (self.shape[0] * self.shape[1])

    def to(self, device) -> "NVFP4Weight":
        return NVFP4Weight(self.packed.to(device), self.scales.to(device), self.global_scale.to(device),
                           self.shape, self.block_size)


def _round_to_e2m1_codes(scaled: torch.Tensor) -> torch.Tensor:
    """fp32 values (already divided by their scales) -> uint8 E2M1 codes, RNE, saturating at ±6."""
    bounds = torch.tensor(_E2M1_BOUNDS, dtype=scaled.dtype, device=scaled.device)
    ties = torch.tensor(_E2M1_ROUND_UP_TIES, dtype=scaled.dtype, device=scaled.device)
    magnitude = scaled.abs()
    # bucketize(right=False): index i with bounds[i-1] < |x| <= bounds[i]; so a tie lands on the
    # lower neighbour, and the three ties whose upper neighbour has the even mantissa move up.
    index = torch.bucketize(magnitude, bounds) + torch.isin(magnitude, ties)
    sign = (scaled < 0).to(torch.uint8)
    return (sign << 3) | index.to(torch.uint8)


def quantize_nvfp4(w: torch.Tensor, block: int = 16, check_finite: bool = True) -> NVFP4Weight:
    """Quantize a 2-D weight [out, in] to NVFP4, bit-exact with ModelOpt's NVFP4QTensor.quantize(w, block).

    Any float dtype is accepted; values are taken to fp32 first (exact for fp16/bf16/fp32).
    check_finite: raise on NaN/Inf (weights). Activations quantized per call pass False: nothing
    then waits on the device (no data-dependent branch or mask index), and a NaN propagates to the
    output as it would through an unquantized layer.
    """
    if w.ndim != 2:
        raise ValueError(f"quantize_nvfp4 expects a 2-D [out, in] weight, got shape {tuple(w.shape)}")
    if not w.is_floating_point():
        raise ValueError(f"quantize_nvfp4 expects a floating-point weight, got {w.dtype}")
    if block <= 0 or block % 2:
        raise ValueError(f"block must be a positive even number (two codes per byte), got {block}")
    if w.numel() == 0:
        raise ValueError(f"cannot quantize an empty weight of shape {tuple(w.shape)}")
    w = w.detach().float().contiguous()
    if check_finite and not torch.isfinite(w).all():
        raise ValueError("quantize_nvfp4: weight has NaN or Inf values")

    out_features, in_features = w.shape
    pad = (-in_features) % block
    if pad:  # ModelOpt zero-pads the last dim to a multiple of the block (zeros do not change amax)
        w = F.pad(w, (0, pad))

    # All-zero tensors (global scale 0, see the module docstring) are handled with torch.where,
    # not Python branches, so that this never synchronises with the device.
    global_scale = w.abs().amax() / (E2M1_MAX * E4M3_MAX)
    nonzero = global_scale > 0
    blocks = w.view(out_features, -1, block)
    block_amax = blocks.abs().amax(dim=-1)
    block_scale = torch.where(nonzero, block_amax / (E2M1_MAX * global_scale), 0.0)
    block_scale = torch.where(block_scale == 0, 1.0, block_scale)
    scales = block_scale.clamp(min=E4M3_MIN_SCALE, max=E4M3_MAX).to(torch.float8_e4m3fn)

    scaled = torch.where(nonzero, blocks / (scales.float() * global_scale).unsqueeze(-1), 0.0)
    codes = _round_to_e2m1_codes(scaled).view(out_features, -1)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return NVFP4Weight(packed.contiguous(), scales, global_scale.to(torch.float32), (out_features, in_features), block)


def unpack_nvfp4_codes(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., n/2] -> uint8 codes [..., n] (low nibble first)."""
    codes = torch.stack((packed & 0x0F, packed >> 4), dim=-1)
    return codes.flatten(-2)


def dequantize_nvfp4(q: NVFP4Weight) -> torch.Tensor:
    """NVFP4 -> fp32 [out, in] (padding cropped), bit-exact with ModelOpt's dequantize."""
    values = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=q.packed.device)
    codes = unpack_nvfp4_codes(q.packed)
    w = values[codes.long()].view(q.shape[0], -1, q.block_size)
    per_block = q.scales.float() * q.global_scale  # same product (and order) as ModelOpt
    w = (w * per_block.unsqueeze(-1)).view(q.shape[0], -1)
    return w[:, : q.shape[1]]


def nvfp4_linear_reference(x: torch.Tensor, q: NVFP4Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x @ dequant(q).T + bias, computed in fp32, returned in x's dtype. x: (..., in)."""
    if x.shape[-1] != q.shape[1]:
        raise ValueError(f"x has {x.shape[-1]} features, the weight expects {q.shape[1]}")
    y = F.linear(x.float(), dequantize_nvfp4(q), None if bias is None else bias.float())
    return y.to(x.dtype)
