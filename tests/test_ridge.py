"""Closed-form fits of stage 1: ridge recovers a known map, its strength is chosen on held-out data,
singular problems are regularised, Procrustes recovers a rotation, every family starts as the linear map."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from modeling_era import EraAdapter, EraConfig
from era_adapters.ridge import choose_ridge, procrustes, ridge_statistics, set_from_linear


def test_ridge_recovers_a_known_affine_map():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 12))
    weight, bias = rng.normal(size=(12, 5)), rng.normal(size=5)
    fit = ridge_statistics(x, x @ weight + bias)
    solved_weight, solved_bias, _ = fit.solve(1e-12)
    np.testing.assert_allclose(solved_weight, weight, atol=1e-8)
    np.testing.assert_allclose(solved_bias, bias, atol=1e-8)


def test_ridge_strength_is_chosen_on_held_out_data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 30))  # few texts, many dims: a strong ridge must win
    y = x @ rng.normal(size=(30, 8)) * 0.1 + rng.normal(size=(40, 8))
    x_held = rng.normal(size=(200, 30))
    y_held = x_held @ rng.normal(size=(30, 8)) * 0.1 + rng.normal(size=(200, 8))
    _, _, report = choose_ridge(ridge_statistics(x, y), x_held, y_held)
    curve = report["held_out_cosine_by_alpha"]
    assert curve[str(report["alpha"])] == max(curve.values())
    assert report["alpha"] > 1e-4


def test_fewer_texts_than_dimensions_is_regularised_not_singular():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(5, 40)), rng.normal(size=(5, 8))
    weight, bias, _ = ridge_statistics(x, y).solve(1e-2)
    assert np.isfinite(weight).all() and np.isfinite(bias).all()
    with pytest.raises(ValueError, match="at least 2 training texts"):
        ridge_statistics(x[:1], y[:1])


def test_procrustes_is_orthogonal_and_recovers_a_rotation():
    rng = np.random.default_rng(3)
    rotation, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    x = rng.normal(size=(100, 10))
    solved = procrustes(x, x @ rotation)
    np.testing.assert_allclose(solved.T @ solved, np.eye(10), atol=1e-10)
    np.testing.assert_allclose(solved, rotation, atol=1e-10)
    with pytest.raises(ValueError, match="equal dims"):
        procrustes(x, x[:, :5])


@pytest.mark.parametrize("family", ["linear", "low_rank", "mlp"])
def test_every_family_starts_as_the_linear_map(family):
    rng = np.random.default_rng(4)
    config = EraConfig(query_dim=12, doc_dim=6, adapter_type=family, adapter_rank=6, adapter_hidden_dim=8,
                       normalize_input=False, normalize_output=False)
    adapter = EraAdapter(config)
    weight, bias = rng.normal(size=(12, 6)), rng.normal(size=6)
    set_from_linear(adapter, weight, bias)
    x = rng.normal(size=(7, 12))
    with torch.no_grad():  # rank 6 = full rank here, so even low_rank is exact
        np.testing.assert_allclose(adapter(torch.from_numpy(x).float()).numpy(), x @ weight + bias, atol=1e-4)
