"""Closed-form fits of a linear map y = x·W + b from (Q(t), D(t)) pairs, stage 1's start: centred ridge
regression with sums accumulated in float64 (and all-reduced across processes), its strength chosen on
a held-out slice; orthogonal Procrustes; and setting any adapter family from a linear map.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from accelerate import Accelerator

from modeling_era import EraAdapter

RIDGE_GRID = (1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)  # × mean eigenvalue of the input covariance


@dataclass
class RidgeFit:
    """Centered ridge in the eigenbasis of the input covariance: every ridge strength costs one product."""

    mean_x: np.ndarray
    mean_y: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    projected_cross: np.ndarray  # Vᵀ Cxy
    count: int

    def solve(self, alpha: float) -> tuple[np.ndarray, np.ndarray, float]:
        """Weight (q, d), bias (d,) and the absolute ridge strength for a relative `alpha`."""
        strength = alpha * max(float(self.eigenvalues.mean()), 1e-12)
        weight = self.eigenvectors @ (self.projected_cross / (self.eigenvalues + strength)[:, None])
        return weight, self.mean_y - self.mean_x @ weight, strength


def ridge_statistics(x: np.ndarray, y: np.ndarray, accelerator: Accelerator | None = None) -> RidgeFit:
    """Accumulate n, Σx, Σy, XᵀX, XᵀY in float64 over this process's rows; sum over processes."""
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    sums = [np.array([len(x)], dtype=np.float64), x64.sum(0), y64.sum(0), x64.T @ x64, x64.T @ y64]
    if accelerator is not None and accelerator.num_processes > 1:
        sums = [accelerator.reduce(torch.from_numpy(s).to(accelerator.device), "sum").cpu().numpy() for s in sums]
    count, sum_x, sum_y, xx, xy = sums
    n = float(count[0])
    if n < 2:
        raise ValueError(f"alignment needs at least 2 training texts, got {int(n)}; raise --num-texts.")
    mean_x, mean_y = sum_x / n, sum_y / n
    # With fewer texts than dimensions the covariance is singular; the ridge term (always > 0) fixes that.
    cxx = xx - n * np.outer(mean_x, mean_x)
    cxy = xy - n * np.outer(mean_x, mean_y)
    eigenvalues, eigenvectors = np.linalg.eigh(cxx)
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    return RidgeFit(mean_x, mean_y, eigenvalues, eigenvectors, eigenvectors.T @ cxy, int(n))


def mean_cosine(x: np.ndarray, y: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> float:
    predicted = x.astype(np.float64) @ weight + bias
    predicted /= np.maximum(np.linalg.norm(predicted, axis=1, keepdims=True), 1e-12)
    target = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
    return float(np.mean(np.sum(predicted * target, axis=1)))


def choose_ridge(fit: RidgeFit, x_held: np.ndarray, y_held: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """The ridge strength with the best held-out mean cosine, and the curve that chose it."""
    curve = {}
    for alpha in RIDGE_GRID:
        weight, bias, _ = fit.solve(alpha)
        curve[alpha] = mean_cosine(x_held, y_held, weight, bias)
    best = max(curve, key=curve.get)
    weight, bias, strength = fit.solve(best)
    report = {"alpha": best, "strength": strength, "held_out_cosine_by_alpha": {str(a): c for a, c in curve.items()}}
    return weight, bias, report


def procrustes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Orthogonal W minimising ||XW − Y|| (equal dims): W = U Vᵀ from the SVD of XᵀY."""
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"Procrustes needs equal dims, got {x.shape[1]} and {y.shape[1]}; use the ridge fit.")
    u, _, vt = np.linalg.svd(x.astype(np.float64).T @ y.astype(np.float64))
    return u @ vt


def set_from_linear(adapter: EraAdapter, weight: np.ndarray, bias: np.ndarray) -> None:
    """Initialise any family from a linear map y = x·W + b, where its shape allows."""
    module, kind = adapter.adapter, adapter.config.adapter_type
    with torch.no_grad():
        if kind in ("linear", "mlp"):
            module.proj.weight.copy_(torch.from_numpy(weight.T.astype(np.float32)))
            module.proj.bias.copy_(torch.from_numpy(bias.astype(np.float32)))
        elif kind == "low_rank":  # best rank-r approximation of the (residual) map
            if module.residual:
                weight = weight - np.eye(weight.shape[0])
            u, s, vt = np.linalg.svd(weight, full_matrices=False)
            r = module.down.weight.shape[0]
            root = np.sqrt(s[:r])
            module.down.weight.copy_(torch.from_numpy((u[:, :r] * root).T.astype(np.float32)))
            module.up.weight.copy_(torch.from_numpy((vt[:r].T * root).astype(np.float32)))
            module.up.bias.copy_(torch.from_numpy(bias.astype(np.float32)))
