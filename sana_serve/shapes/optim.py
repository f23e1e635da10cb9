"""Muon for the transformer blocks' weight matrices, AdamW for everything else, in one optimiser.

Muon (Keller Jordan et al. 2024; the RMS scaling from Liu et al. 2025, "Muon is Scalable for LLM
Training") replaces each weight matrix's momentum update by its nearest semi-orthogonal
matrix (a few Newton-Schulz iterations), so every direction of the matrix learns at the same
rate instead of the few largest ones. The update is scaled to AdamW's RMS
(0.2 * sqrt(max(out, in))), so the AdamW learning rate and weight decay carry over.
`torch.optim.Muon` only takes 2-D parameters; the Mix-FFN's 1x1 and 3x1 convs are matrices too
(out x in*kernel), so this one flattens them.
"""
from __future__ import annotations

import torch
from torch import nn


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """An approximation of U V^T for g = U S V^T (the quintic iteration of Keller Jordan's Muon)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g / (g.norm() + eps)
    tall = x.shape[0] > x.shape[1]
    if tall:  # iterate on the smaller Gram matrix
        x = x.T
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return x.T if tall else x


class MuonAdamW(torch.optim.Optimizer):
    """Param groups with `muon=True` take Muon steps (Nesterov momentum, orthogonalised, decoupled
    weight decay); the others AdamW steps. One `lr` schedule drives both."""

    def __init__(self, groups, lr: float = 1e-3, weight_decay: float = 0.01, betas=(0.9, 0.99),
                 momentum: float = 0.95, eps: float = 1e-8):
        defaults = dict(lr=lr, weight_decay=weight_decay, betas=betas, momentum=momentum, eps=eps, muon=False)
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if group["muon"]:
                    buf = state.setdefault("momentum", torch.zeros_like(p))
                    buf.mul_(group["momentum"]).add_(p.grad)
                    update = p.grad.add(buf, alpha=group["momentum"])  # Nesterov
                    matrix = newton_schulz(update.reshape(p.shape[0], -1))
                    scale = 0.2 * max(matrix.shape) ** 0.5
                    p.mul_(1 - lr * wd).add_(matrix.view_as(p), alpha=-lr * scale)
                else:
                    b1, b2 = group["betas"]
                    if not state:
                        state["step"] = 0
                        state["exp_avg"] = torch.zeros_like(p)
                        state["exp_avg_sq"] = torch.zeros_like(p)
                    state["step"] += 1
                    m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
                    m.lerp_(p.grad, 1 - b1)
                    v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                    denom = (v / (1 - b2 ** t)).sqrt_().add_(group["eps"])
                    p.mul_(1 - lr * wd).addcdiv_(m, denom, value=-lr / (1 - b1 ** t))
        return None


ADAMW = dict(weight_decay=0.01, betas=(0.9, 0.99))  # the transformer's AdamW, in both choices


def transformer_optimizer(model: nn.Module, kind: str, lr: float) -> torch.optim.Optimizer:
    """`adamw`: AdamW everywhere. `muon`: Muon on the blocks' weight matrices (attention
    projections, Mix-FFN convs except the depthwise one), AdamW on the embeddings, the output
    layer, norms, biases, modulation tables and the depthwise conv, as Muon's authors advise."""
    if kind == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, **ADAMW)
    if kind != "muon":
        raise ValueError(f"unknown optimizer {kind!r}: adamw or muon")
    matrices, rest = [], []
    for name, p in model.named_parameters():
        is_matrix = p.ndim >= 2 and name.startswith("transformer_blocks.") and "conv_depth" not in name \
            and "scale_shift_table" not in name
        (matrices if is_matrix else rest).append(p)
    return MuonAdamW([{"params": matrices, "muon": True}, {"params": rest}], lr=lr, **ADAMW)
