"""Evaluation in eval mode and BatchNorm statistics recomputation, against direct loops."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from toroid.errors import InvalidArgumentError
from toroid.evaluate import (
    AffineFamily,
    EvalPlan,
    ManyMetrics,
    evaluate,
    evaluate_sets,
    in_chunks,
    multiplicative_family,
    recompute_bn,
    stack_states,
)
from toroid.manifold.perturb import draw_noise, perturbed_state
from toroid.models import build
from toroid.symmetry.transform import with_state


def _one(
    model: nn.Module,
    sets: object,
    data: tuple[torch.Tensor, torch.Tensor],
    *,
    bn_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    **plan: object,
) -> ManyMetrics:
    """`evaluate_sets` on one dataset, BatchNorm recomputed on it unless `bn_data` says."""
    return evaluate_sets(
        model,
        sets,  # type: ignore[arg-type]
        {"data": data},
        bn_data=data if bn_data is None else bn_data,
        plan=EvalPlan(**plan),  # type: ignore[arg-type]
    )["data"]


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
def test_evaluate_sets_equals_the_one_at_a_time_loop(name: str, bn: str) -> None:
    make, shape = MANY_CASES[name]
    model = make().double().eval()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(90, *shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (90,), generator=gen)
    bn_x = torch.randn(70, *shape, generator=gen, dtype=torch.float64)
    states = _perturbed_states(model, 5)
    many = _one(
        model,
        stack_states(states),
        (x, y),
        bn_data=(bn_x, y[:70]),
        bn=bn,
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


def test_evaluate_sets_validates_its_input() -> None:
    model = _model()
    x, y = _data()
    stacked = stack_states(_perturbed_states(model, 2))
    with pytest.raises(InvalidArgumentError, match="shape"):
        _one(model, {"1.weight": torch.zeros(2, 3, 3, dtype=torch.float64)}, (x, y))
    with pytest.raises(InvalidArgumentError, match="does not"):
        _one(model, {"nope": torch.zeros(2, 1)}, (x, y))
    with pytest.raises(InvalidArgumentError, match="disagree"):
        _one(model, {**stacked, "7.bias": torch.zeros(3, 3, dtype=torch.float64)}, (x, y))
    with pytest.raises(InvalidArgumentError, match="needs bn_data"):
        evaluate_sets(model, stacked, {"d": (x, y)})
    with pytest.raises(InvalidArgumentError, match="parts is empty"):
        evaluate_sets(model, stacked, {}, bn_data=(x, y))
    with pytest.raises(InvalidArgumentError, match="no chunks"):
        evaluate_sets(model, iter([]), {"d": (x, y)}, bn_data=(x, y))
    with pytest.raises(InvalidArgumentError, match="chunk size"):
        list(in_chunks(7, 0, lambda a, b: (a, b)))


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("bn", "maybe", "bn must be 'keep' or 'recompute', got 'maybe'"),
        ("bn_samples", 0, "bn_samples must be a positive integer or None"),
        ("bn_samples", 2.5, "got 2.5"),
        ("bn_batch_size", -1, "bn_batch_size must be a positive integer, got -1"),
        ("batch_size", 0, "batch_size must be a positive integer, got 0"),
        ("max_sets", True, "max_sets must be a positive integer, got True"),
        ("seed", "3", "seed must be an integer, got '3'"),
        ("device", "gpu7", "device must be a torch device"),
    ],
)
def test_eval_plan_refuses_bad_values_in_one_line(field: str, value: object, needle: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        EvalPlan(**{field: value})  # type: ignore[arg-type]
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_eval_plan_defaults_are_the_documented_ones() -> None:
    plan = EvalPlan()
    assert (plan.bn, plan.bn_samples, plan.bn_batch_size, plan.batch_size) == (
        "recompute",
        2000,
        500,
        500,
    )
    assert (plan.seed, plan.max_sets, plan.device) == (0, 16, None)
    assert EvalPlan(bn_samples=None, device="cpu") == EvalPlan(bn_samples=None, device="cpu")
    assert len({EvalPlan(), EvalPlan(), EvalPlan(seed=1)}) == 2  # a hashable setting


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
        _one(model, stacked, (x, y), bn_samples=101, bn_batch_size=50)


def test_evaluate_sets_recomputes_once_for_every_split() -> None:
    model, (x, y) = _model(), _data(60)
    x2, y2 = x[:25] * 2, y[:25]
    stacked = stack_states(_perturbed_states(model, 3))
    parts = evaluate_sets(
        model, stacked, {"a": (x, y), "b": (x2, y2)}, bn_data=(x, y), plan=EvalPlan(bn_samples=40)
    )
    for name, data in (("a", (x, y)), ("b", (x2, y2))):
        single = _one(model, stacked, data, bn_data=(x, y), bn_samples=40)
        assert torch.equal(parts[name].error, single.error)
        assert torch.allclose(parts[name].loss, single.loss, rtol=1e-12, atol=0)


def test_float64_models_take_float32_inputs() -> None:
    model, (x, y) = _model(), _data()
    as_float = (x.float(), y)
    assert evaluate(model, as_float) == evaluate(model, (x.float().double(), y))
    stacked = stack_states(_perturbed_states(model, 2))
    assert torch.equal(
        _one(model, stacked, as_float).error,
        _one(model, stacked, (x.float().double(), y)).error,
    )


def test_stack_states_refuses_mismatched_sets() -> None:
    model = _model()
    states = _perturbed_states(model, 2)
    states[1] = {k: v[..., :1] if v.dim() else v for k, v in states[1].items()}
    with pytest.raises(InvalidArgumentError, match="state 1 differs"):
        stack_states(states)


def test_lazy_chunks_equal_one_call_on_all_sets() -> None:
    model = _model().eval()
    x, y = _data(60)
    states = _perturbed_states(model, 7)
    plan = EvalPlan(bn_samples=40, bn_batch_size=10)
    whole = evaluate_sets(model, stack_states(states), {"d": (x, y)}, bn_data=(x, y), plan=plan)
    built: list[tuple[int, int]] = []
    reported: list[int] = []

    def sets(start: int, stop: int) -> dict[str, torch.Tensor]:
        built.append((start, stop))
        return stack_states(states[start:stop])

    chunks = in_chunks(7, 3, sets)
    assert built == []  # nothing is built before it is evaluated
    chunked = evaluate_sets(
        model, chunks, {"d": (x, y)}, bn_data=(x, y), plan=plan, on_chunk=reported.append
    )
    assert built == [(0, 3), (3, 6), (6, 7)] and reported == [3, 3, 1]
    assert torch.equal(chunked["d"].error, whole["d"].error) and chunked["d"].n == whole["d"].n
    torch.testing.assert_close(chunked["d"].loss, whole["d"].loss, rtol=1e-12, atol=0)


@pytest.mark.parametrize("layout", ["stacked", "family"])
@pytest.mark.parametrize("lazy", [False, True])
def test_evaluate_sets_equals_a_slow_per_set_loop(
    layout: str, lazy: bool, input_layer_reuses: list[int]
) -> None:
    """The independent baseline: every set loaded into its own model, its BatchNorm
    statistics recomputed with `recompute_bn`'s settings, then `evaluate`d alone, on two
    splits; against `evaluate_sets` on stacked states and on the same sets as an affine
    family (input layer reused), in one call or in lazy chunks that cut through max_sets."""
    model = build(
        {"name": "mlp", "in_features": 6, "widths": [7, 5], "num_classes": 3}, seed=0
    ).double()
    gen = torch.Generator().manual_seed(5)
    train = (torch.randn(64, 6, generator=gen, dtype=torch.float64), torch.randint(0, 3, (64,)))
    test = (torch.randn(30, 6, generator=gen, dtype=torch.float64), torch.randint(0, 3, (30,)))
    state = model.state_dict()
    names = [n for n, _ in model.named_parameters()]
    noise = [draw_noise(state, names, gen) for _ in range(3)]
    entries: list[tuple[float, int] | None] = [(s, d) for d in range(3) for s in (0.2, 0.7)]
    entries.append(None)
    family = multiplicative_family({n: state[n] for n in names}, noise, entries)
    states = [
        {n: state[n] for n in names}
        if entry is None
        else {
            n: v
            for n, v in perturbed_state(
                state, entry[0], noise[entry[1]], kind="multiplicative", spec=None
            ).items()
            if n in names
        }
        for entry in entries
    ]

    def chunk(start: int, stop: int) -> AffineFamily | dict[str, torch.Tensor]:
        return family.rows(start, stop) if layout == "family" else stack_states(states[start:stop])

    plan = EvalPlan(bn_samples=40, bn_batch_size=16, batch_size=16, seed=3, max_sets=2)
    sets = in_chunks(len(entries), 3, chunk) if lazy else chunk(0, len(entries))
    fast = evaluate_sets(model, sets, {"train": train, "test": test}, bn_data=train, plan=plan)
    assert bool(input_layer_reuses) == (layout == "family")
    for k, params in enumerate(states):
        one = with_state(model, {**state, **params})
        for name, part in (("train", train), ("test", test)):
            single = evaluate(
                one,
                part,
                bn="recompute",
                bn_data=train,
                bn_samples=40,
                bn_batch_size=16,
                seed=3,
                batch_size=16,
            )
            assert float(fast[name].error[k]) == single.error
            assert float(fast[name].loss[k]) == pytest.approx(single.loss, rel=1e-10, abs=1e-14)
    assert fast["train"].error.unique().numel() > 1  # the sets really differ
    # A plan's device moves the sets (a family too) and the model's tensors there.
    sets = in_chunks(len(entries), 3, chunk) if lazy else chunk(0, len(entries))
    moved = evaluate_sets(
        model, sets, {"test": test}, bn_data=train, plan=replace(plan, device="cpu")
    )
    assert torch.equal(moved["test"].error, fast["test"].error)
