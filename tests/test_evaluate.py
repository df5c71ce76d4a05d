"""Evaluation in eval mode and BatchNorm statistics recomputation, against direct loops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from toroid.errors import InvalidArgumentError
from toroid.evaluate import evaluate, recompute_bn
from toroid.models import build


def _model() -> nn.Module:
    return build(
        {"name": "mlp", "in_features": 6, "widths": [5], "num_classes": 3}, seed=0
    ).double()


def _data(n: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=gen, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=gen
    )


def test_evaluate_matches_one_batch_computation_and_restores_mode() -> None:
    model, (x, y) = _model(), _data()
    model.train()
    metrics = evaluate(model, (x, y), batch_size=7)
    assert model.training
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert metrics.n == 50
    assert metrics.error == pytest.approx(float((logits.argmax(1) != y).double().mean()))
    assert metrics.loss == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-12)
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        evaluate(model, (x, y), batch_size=0)


def test_recompute_bn_equals_the_statistics_of_the_pre_bn_activations() -> None:
    model, (x, y) = _model(), _data()
    fresh = recompute_bn(model, (x, y), samples=None, batch_size=1000)
    pre = model[1](model[0](x))  # Flatten -> Linear, the BatchNorm's input
    bn = fresh[2]
    torch.testing.assert_close(bn.running_mean, pre.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bn.running_var, pre.var(0, unbiased=True), rtol=1e-12, atol=1e-12)
    assert not fresh.training and bn.momentum == model[2].momentum


def test_recompute_bn_averages_batches_equally_and_leaves_the_input_alone() -> None:
    model, (x, y) = _model(), _data(40)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = recompute_bn(model, (x, y), samples=None, batch_size=10)
    pre = model[1](model[0](x))
    batch_means = torch.stack([pre[i : i + 10].mean(0) for i in range(0, 40, 10)])
    torch.testing.assert_close(fresh[2].running_mean, batch_means.mean(0), rtol=1e-12, atol=1e-12)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_recompute_bn_subset_is_seeded_and_dropout_stays_off() -> None:
    model = nn.Sequential(nn.Linear(6, 5, bias=False), nn.Dropout(0.9), nn.BatchNorm1d(5)).double()
    x, y = _data(200)
    a = recompute_bn(model, (x, y), samples=30, seed=3)
    b = recompute_bn(model, (x, y), samples=30, seed=3)
    c = recompute_bn(model, (x, y), samples=30, seed=4)
    assert torch.equal(a[2].running_mean, b[2].running_mean)
    assert not torch.equal(a[2].running_mean, c[2].running_mean)
    index = torch.randperm(200, generator=torch.Generator().manual_seed(3))[:30]
    torch.testing.assert_close(a[2].running_mean, model[0](x[index]).mean(0))  # no dropout
    with pytest.raises(InvalidArgumentError, match="samples"):
        recompute_bn(model, (x, y), samples=0)
