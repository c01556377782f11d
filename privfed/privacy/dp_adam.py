"""DP-AdamBC: Adam whose second-moment estimate has the DP noise's variance taken out.

Tang, Shpilevskiy & Lécuyer, "DP-AdamBC: Your DP-Adam Is Actually DP-SGD (Unless You Apply Bias Correction)",
AAAI 2024. Opacus hands the inner optimizer the noisy mean gradient ``(Σ clipped + N(0, σ²C²I)) / B``: every
coordinate carries noise of variance Φ = (σC/B)². Adam's second moment estimates E[g²] + Φ, and under DP-SGD Φ
usually dominates, so Adam divides every coordinate by about √Φ: a DP-SGD step with the learning rate rescaled, its
adaptivity gone. DP-AdamBC divides by √max(v̂ − Φ, γ) instead. The noise and the privacy are untouched: this only
post-processes the already private gradient.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class DpAdamBC(torch.optim.Optimizer):
    """Adam (with Adam's own bias correction of both moments) whose denominator is √max(v̂ − Φ, γ).

    ``noise_variance`` is Φ = (σC/B)², the per-coordinate variance of the DP noise in the gradient this optimizer
    receives (0 without DP: then it is Adam with ``floor`` in place of Adam's ε); ``floor`` is γ.
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float, noise_variance: float, floor: float = 5e-8,
                 betas: tuple[float, float] = (0.9, 0.999)):
        if noise_variance < 0 or floor <= 0:
            raise ValueError(f"noise_variance must be >= 0 and floor > 0, got {noise_variance}, {floor}")
        super().__init__(params, {"lr": lr, "betas": betas, "noise_variance": noise_variance, "floor": floor})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = None if closure is None else closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(step=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
                state["step"] += 1
                t = state["step"]
                state["m"].mul_(beta1).add_(p.grad, alpha=1 - beta1)
                state["v"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                m_hat = state["m"] / (1 - beta1 ** t)
                v_hat = state["v"] / (1 - beta2 ** t)
                denominator = (v_hat - group["noise_variance"]).clamp_(min=group["floor"]).sqrt_()
                p.addcdiv_(m_hat, denominator, value=-group["lr"])
        return loss
