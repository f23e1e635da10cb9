"""Optional Triton support shared by the kernels: availability, the interpreter, small helpers.

Triton decides once, when it is imported, whether `@triton.jit` compiles for a GPU or runs in
its CPU interpreter (`TRITON_INTERPRET=1`): its own library functions (`tl.sum`, ...) are jitted
then, so the variable must be in the environment before anything imports triton (in practice:
set it for the whole process). Kernels here are decorated with `jit`, which leaves the plain
function when triton is missing so that the PyTorch references still import and run.
"""
from __future__ import annotations

import logging
import os

import torch

try:  # Triton is optional: the PyTorch references work without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None
    tl = None

__all__ = ["triton", "tl", "jit", "jitted", "autotune", "triton_available", "interpreter_requested", "is_interpreted",
           "check_triton_device", "cdiv", "next_pow2", "KernelFallback"]

log = logging.getLogger("sana_serve.kernels")


def triton_available() -> bool:
    return triton is not None


def jit(fn):
    """`triton.jit` when triton is installed; the undecorated function otherwise."""
    return triton.jit(fn) if triton is not None else fn


def interpreter_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def autotune(configs: list, key: list[str], interpreter_config):
    """`triton.autotune` over `configs` keyed on `key`; under the interpreter, the one config
    `interpreter_config` (benchmarking needs a GPU, and one config is never benchmarked).
    Both are callables returning a list of `triton.Config` (or one), so nothing is built without triton."""
    def wrap(fn):
        if triton is None:
            return fn
        chosen = [interpreter_config()] if interpreter_requested() else configs()
        return triton.autotune(configs=chosen, key=key)(fn)
    return wrap


def jitted(kernel):
    """The plain jitted function under an autotuned kernel (to launch it with explicit block sizes)."""
    return kernel.fn if type(kernel).__name__ == "Autotuner" else kernel


def is_interpreted(kernel) -> bool:
    """True when `kernel` runs in Triton's CPU interpreter (TRITON_INTERPRET=1 at triton's import)."""
    return type(jitted(kernel)).__name__ == "InterpretedFunction"


class KernelFallback:
    """Remembers, per process, that a Triton kernel failed to compile or launch, and says so once.

    A GPU whose Triton/driver combination cannot build a kernel should still serve (through the
    PyTorch reference) rather than fail every request; the error is logged once, loudly, with the
    exception, so the slowdown is never silent.
    """

    def __init__(self, name: str, fallback: str):
        self.name, self.fallback = name, fallback
        self.error: BaseException | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None

    def record(self, err: BaseException) -> None:
        if self.error is None:
            log.error("Triton kernel %s failed (%s: %s); using %s for the rest of this process",
                      self.name, type(err).__name__, err, self.fallback)
        self.error = err


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
