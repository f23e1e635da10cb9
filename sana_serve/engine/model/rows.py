"""Batch invariance: run the row-mixing kernels of a batched forward once per request.

Continuous batching puts several requests' rows into one forward. `per_request` is how the
model keeps each request's numbers exactly what they would be alone (see its docstring).
"""
from __future__ import annotations

from typing import Sequence

import torch


def per_request(rows: Sequence[int] | None, fn, *args):
    """`fn(*args)`, computed once per request when `rows` divides the batch into requests.

    Why: a kernel's result for one row can depend on the other rows it is called with. MKL's
    GEMM takes other code paths for small M (measured here: the timestep MLP's 2-row vs 8-row
    products differ in the last bits), oneDNN's convolutions and torch's bmm pick algorithms by
    batch size (the patch embedding and the linear-attention denominator differ between 1 and 8
    rows), cuBLAS chooses tiles and split-K by M, the Triton linear-attention kernel splits the
    token sum into more or fewer partial sums by batch x heads, and the NVFP4 W4A4 path scales
    its activations by the amax of the whole batch. Called per request, every such kernel sees
    exactly the shapes, strides and values it sees when that request runs alone, so its rows
    match bit for bit whatever it was batched with; element-wise ops and per-token norms, which
    compute each token from its own values only, stay batched around these calls.

    Arguments: a tensor is cut along dim 0 by `rows`; a list holds one item per request; None
    passes through; a tuple is handled item by item. Tensor outputs (or tuples of them, None
    kept) are concatenated back along dim 0.
    """
    if rows is None:
        return fn(*args)
    parts = [_split(a, rows) for a in args]
    outs = [fn(*call) for call in zip(*parts)] if parts else [fn() for _ in rows]
    return _cat(outs)


def _split(arg, rows: Sequence[int]) -> list:
    if arg is None:
        return [None] * len(rows)
    if isinstance(arg, torch.Tensor):
        if arg.shape[0] != sum(rows):
            raise ValueError(f"a batch of {arg.shape[0]} rows cannot be split into requests of {list(rows)} rows")
        return list(arg.split(list(rows)))
    if isinstance(arg, list):
        if len(arg) != len(rows):
            raise ValueError(f"{len(arg)} per-request items for {len(rows)} requests")
        return arg
    if isinstance(arg, tuple):
        return [tuple(items) for items in zip(*(_split(a, rows) for a in arg))]
    return [arg] * len(rows)


def _cat(outs: list):
    first = outs[0]
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        return torch.cat(outs)
    return tuple(_cat(list(items)) for items in zip(*outs))
