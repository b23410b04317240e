"""LAMB (You et al., 2020, "Large Batch Optimization for Deep Learning"), pure PyTorch (no apex).

Per parameter ``p`` with gradient ``g`` at step ``t`` (1-based)::

    m = b1 * m + (1 - b1) * g ;  v = b2 * v + (1 - b2) * g^2
    m_hat = m / (1 - b1^t) ;  v_hat = v / (1 - b2^t)          (when bias_correction)
    u = m_hat / (sqrt(v_hat) + eps) + wd * p
    r = ||p|| / ||u||   if ||p|| > 0 and ||u|| > 0 else 1     (trust ratio; only when wd != 0 or always_adapt)
    p = p - lr * r * u

As in apex's ``FusedLAMB`` (used by DeiT III) the trust ratio is skipped for groups without weight decay
(biases, norms, LayerScale gammas) unless ``always_adapt``. Apex additionally clips the global gradient norm to
1.0 inside the optimiser; octo does that in the training loop (``optim.clip_grad``) instead.
"""
from __future__ import annotations


import torch
from torch.optim import Optimizer

__all__ = ["Lamb"]


class Lamb(Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0,
                 bias_correction: bool = True, always_adapt: bool = False):
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"Lamb: lr={lr}, eps={eps}, weight_decay={weight_decay} must be >= 0")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Lamb: betas={betas} must be in [0, 1)")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      bias_correction=bias_correction, always_adapt=always_adapt))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Lamb does not support sparse gradients")
                dt = torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype  # low precision: fp32
                g = p.grad.to(dt)
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=dt)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=dt)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                if group["bias_correction"]:
                    m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
                else:
                    m_hat, v_hat = m, v
                p32 = p.to(dt)
                update = m_hat / (v_hat.sqrt() + eps)
                if wd != 0:
                    update = update + wd * p32
                ratio = 1.0
                if wd != 0 or group["always_adapt"]:
                    w_norm, u_norm = p32.norm(), update.norm()
                    ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm.clamp_min(1e-30),
                                        torch.ones_like(w_norm))
                p.copy_((p32 - lr * ratio * update).to(p.dtype))
        return loss

    def __repr__(self) -> str:
        return f"Lamb(groups={len(self.param_groups)}, defaults={self.defaults})"


