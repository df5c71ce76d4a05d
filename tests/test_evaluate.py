"""Evaluation in eval mode and BatchNorm statistics recomputation, against direct loops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from toroid.errors import InvalidArgumentError
from toroid.evaluate import (
    evaluate,
    evaluate_in_chunks,
    evaluate_many,
    evaluate_many_parts,
    recompute_bn,
    stack_states,
)
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


def _perturbed_states(model: nn.Module, k: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        {
            n: p.detach() * (1 + 0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
            for n, p in model.named_parameters()
        }
        for _ in range(k)
    ]


MANY_CASES = {
    "mlp": (
        lambda: build(
            {"name": "mlp", "in_features": 6, "widths": [7, 5], "num_classes": 3}, seed=0
        ),
        (6,),
    ),
    "lenet5": (lambda: build({"name": "lenet5", "num_classes": 3}, seed=0), (1, 28, 28)),
    "resnet20": (
        lambda: build({"name": "resnet", "depth": 20, "num_classes": 3}, seed=0),
        (3, 8, 8),
    ),
}


@pytest.mark.parametrize("name", list(MANY_CASES))
@pytest.mark.parametrize("bn", ["recompute", "keep"])
def test_evaluate_many_equals_the_one_at_a_time_loop(name: str, bn: str) -> None:
    make, shape = MANY_CASES[name]
    model = make().double().eval()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(90, *shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (90,), generator=gen)
    bn_x = torch.randn(70, *shape, generator=gen, dtype=torch.float64)
    states = _perturbed_states(model, 5)
    many = evaluate_many(
        model,
        stack_states(states),
        (x, y),
        bn=bn,
        bn_data=(bn_x, y[:70]),
        bn_samples=50,
        bn_batch_size=16,
        batch_size=16,
        seed=4,
        max_sets=2,
    )
    assert len(many) == 5 and many.n == 90
    for k, state in enumerate(states):
        single_model = make().double()
        single_model.load_state_dict({**model.state_dict(), **state})
        single = (
            evaluate(
                single_model,
                (x, y),
                bn=bn,
                bn_data=(bn_x, y[:70]),
                bn_samples=50,
                seed=4,
                batch_size=16,
            )
            if bn == "keep"
            else evaluate(
                recompute_bn(single_model, (bn_x, y[:70]), samples=50, batch_size=16, seed=4),
                (x, y),
                batch_size=16,
            )
        )
        assert many[k].error == single.error
        assert many[k].loss == pytest.approx(single.loss, rel=1e-6, abs=1e-12)


def test_evaluate_many_validates_its_input() -> None:
    model = _model()
    x, y = _data()
    stacked = stack_states(_perturbed_states(model, 2))
    with pytest.raises(InvalidArgumentError, match="shape"):
        evaluate_many(model, {"1.weight": torch.zeros(2, 3, 3, dtype=torch.float64)}, (x, y))
    with pytest.raises(InvalidArgumentError, match="does not"):
        evaluate_many(model, {"nope": torch.zeros(2, 1)}, (x, y))
    with pytest.raises(InvalidArgumentError, match="bn must be"):
        evaluate_many(model, stacked, (x, y), bn="maybe")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="disagree"):
        evaluate_many(model, {**stacked, "7.bias": torch.zeros(3, 3, dtype=torch.float64)}, (x, y))


def test_evaluate_recompute_policy_matches_recompute_bn() -> None:
    model, (x, y) = _model(), _data()
    direct = evaluate(recompute_bn(model, (x, y), samples=20, seed=1), (x, y))
    assert evaluate(model, (x, y), bn="recompute", bn_samples=20, seed=1) == direct
    assert evaluate(model, (x, y), bn="keep") != direct


def test_a_last_batchnorm_minibatch_of_one_is_refused_by_both_paths() -> None:
    model, (x, y) = _model(), _data(200)
    with pytest.raises(InvalidArgumentError, match="last minibatch of one input"):
        recompute_bn(model, (x, y), samples=201 - 100, batch_size=50)
    stacked = stack_states(_perturbed_states(model, 2))
    with pytest.raises(InvalidArgumentError, match="last minibatch of one input"):
        evaluate_many(model, stacked, (x, y), bn_samples=101, bn_batch_size=50)


def test_evaluate_many_parts_recomputes_once_for_every_split() -> None:
    model, (x, y) = _model(), _data(60)
    x2, y2 = x[:25] * 2, y[:25]
    stacked = stack_states(_perturbed_states(model, 3))
    parts = evaluate_many_parts(
        model, stacked, {"a": (x, y), "b": (x2, y2)}, bn_data=(x, y), bn_samples=40
    )
    for name, data in (("a", (x, y)), ("b", (x2, y2))):
        single = evaluate_many(model, stacked, data, bn_data=(x, y), bn_samples=40)
        assert torch.equal(parts[name].error, single.error)
        assert torch.allclose(parts[name].loss, single.loss, rtol=1e-12, atol=0)


def test_float64_models_take_float32_inputs() -> None:
    model, (x, y) = _model(), _data()
    as_float = (x.float(), y)
    assert evaluate(model, as_float) == evaluate(model, (x.float().double(), y))
    stacked = stack_states(_perturbed_states(model, 2))
    assert torch.equal(
        evaluate_many(model, stacked, as_float).error,
        evaluate_many(model, stacked, (x.float().double(), y)).error,
    )


def test_stack_states_refuses_mismatched_sets() -> None:
    model = _model()
    states = _perturbed_states(model, 2)
    states[1] = {k: v[..., :1] if v.dim() else v for k, v in states[1].items()}
    with pytest.raises(InvalidArgumentError, match="state 1 differs"):
        stack_states(states)


def test_evaluate_in_chunks_equals_one_call_on_all_sets() -> None:
    model = _model().eval()
    x, y = _data(60)
    states = _perturbed_states(model, 7)
    options = {"bn": "recompute", "bn_data": (x, y), "bn_samples": 40, "bn_batch_size": 10}
    whole = evaluate_many_parts(model, stack_states(states), {"d": (x, y)}, **options)["d"]  # type: ignore[arg-type]
    built: list[tuple[int, int]] = []
    reported: list[int] = []

    def sets(start: int, stop: int) -> dict[str, torch.Tensor]:
        built.append((start, stop))
        return stack_states(states[start:stop])

    chunked = evaluate_in_chunks(
        model,
        sets,
        7,
        {"d": (x, y)},
        chunk_size=3,
        on_chunk=reported.append,
        **options,  # type: ignore[arg-type]
    )["d"]
    assert built == [(0, 3), (3, 6), (6, 7)] and reported == [3, 3, 1]
    assert torch.equal(chunked.error, whole.error) and chunked.n == whole.n
    torch.testing.assert_close(chunked.loss, whole.loss, rtol=1e-12, atol=0)
    with pytest.raises(InvalidArgumentError, match="chunk_size"):
        evaluate_in_chunks(model, sets, 7, {"d": (x, y)}, chunk_size=0)
