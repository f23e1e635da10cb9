"""Optional Triton support shared by the kernels: availability, the interpreter, small helpers.

Triton decides once, when it is imported, whether `@triton.jit` compiles for a GPU or runs in
its CPU interpreter (`TRITON_INTERPRET=1`): its own library functions (`tl.sum`, ...) are jitted
then, so the variable must be in the environment before anything imports triton (in practice:
set it for the whole process). Kernels here are decorated with `jit`, which leaves the plain
function when triton is missing so that the PyTorch references still import and run.
"""
from __future__ import annotations

import torch

try:  # Triton is optional: the PyTorch references work without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None
    tl = None

__all__ = ["triton", "tl", "jit", "triton_available", "is_interpreted", "check_triton_device", "cdiv", "next_pow2"]


def triton_available() -> bool:
    return triton is not None


def jit(fn):
    """`triton.jit` when triton is installed; the undecorated function otherwise."""
    return triton.jit(fn) if triton is not None else fn


def is_interpreted(kernel) -> bool:
    """True when `kernel` runs in Triton's CPU interpreter (TRITON_INTERPRET=1 at triton's import)."""
    return type(kernel).__name__ == "InterpretedFunction"


def check_triton_device(kernel, *tensors: torch.Tensor) -> None:
    """Raise a clear error unless `kernel` can run on these tensors in this process."""
    if triton is None:
        raise RuntimeError("backend='triton' needs the `triton` package (pip install triton)")
    devices = {t.device.type for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(devices)}")
    device = devices.pop()
    interpreted = is_interpreted(kernel)
    if device == "cuda" and not interpreted:
        return
    if device == "cpu" and interpreted:
        return
    if device == "cpu":
        raise RuntimeError("backend='triton' on CPU tensors needs Triton's interpreter: run the process with "
                           "TRITON_INTERPRET=1 in its environment (it must be set before triton is imported)")
    if device == "cuda":
        raise RuntimeError("this process runs Triton in its CPU interpreter (TRITON_INTERPRET=1): "
                           "it cannot launch kernels on CUDA tensors")
    raise RuntimeError(f"backend='triton' supports CUDA tensors (or CPU under TRITON_INTERPRET=1), got {device}")


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(n: int, minimum: int = 16) -> int:
    """Block sizes: a power of two, at least 16 (tl.dot's smallest tile side)."""
    p = 1
    while p < n:
        p *= 2
    return max(p, minimum)
