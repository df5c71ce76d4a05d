"""Throughput of `toroid.train.fit_population`: one population trained with
engine="vmap" (all members' gradients in one vectorized pass per round), the same
population with engine="loop" (one network after another), and the same members as
sequential `fit` calls.

Workloads: 18 BatchNorm MLPs 784-256-256-10 (the six optimizer presets x 3 seeds) on 2000
and on 10,000 Fashion-MNIST training examples (synthetic data of the same shape when it
is not installed), and LeNet-5 (BatchNorm) x 8 seeds with sgd on 2000 examples; a fixed
number of epochs (no stopping at zero training error, so every mode does the same work).
The three modes are timed alternately, in a rotating order, in each of --repeats
repetitions; the speedups are per repetition (modes timed next to each other), and
medians over repetitions are printed. Each repetition also times one large torch.mm
(--mm-size, default 2048) as the machine's reference GFLOP/s. The last repetition's
weights are compared across modes: "loop" must equal `fit` bit for bit, "vmap" up to
floating-point rounding, which training amplifies (the largest difference of a tensor
relative to its largest magnitude is printed).

With --study PRESET (e.g. default) it times instead the training stage of that study
preset, once per mode: every network alone (one job each, how a study trained before
populations), the study's jobs with the loop engine (the CPU default: a block's networks
one after another in one job), and its vmap populations; each mode trains every network of
the preset to its own stopping rule, as the study does.

    .venv/bin/python benchmarks/population.py [--quick] [--device cpu|cuda] [--epochs 3]
        [--repeats 3] [--seeds 3] [--lenet-seeds 8] [--sizes 2000,10000]
        [--lenet-sizes 2000] [--test-size 1000] [--mm-size 2048] [--study default]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from toroid.data import Split, TensorData, dataset_status, load
from toroid.errors import TrainingDivergedError
from toroid.models import build
from toroid.optim import PRESETS, default_batch_size
from toroid.train import Member, TrainResult, derive_seed, fit, fit_population

MLP = {
    "name": "mlp",
    "in_features": 784,
    "widths": [256, 256],
    "num_classes": 10,
    "batchnorm": True,
}
LENET = {"name": "lenet5", "in_channels": 1, "num_classes": 10, "input_size": 28, "batchnorm": True}
MODES = ("vmap", "loop", "fit")
FLOP_FORMULA = (
    "FLOPs = 6 x MACs per example x mean minibatch size x gradient evaluations, summed over "
    "members; MACs of the Linear and Conv2d layers only (2 forward, 4 backward; BatchNorm, "
    "ReLU, pooling, loss and optimizer updates not counted)"
)


@dataclass(frozen=True)
class Timing:
    call: float  # the whole call(s): set-up, training loop, final train/test evaluation
    loop: float  # the training loop only (TrainResult.wall_time)
    results: tuple[TrainResult | TrainingDivergedError, ...]


def fashion_mnist(train_size: int, test_size: int, device: str) -> tuple[Split, str]:
    """`train_size` class-balanced Fashion-MNIST training examples, or synthetic data of
    the same shape when the files are not installed; and a label."""
    if dataset_status("fashion-mnist").available:
        split = load("fashion-mnist", train_size=train_size, test_size=test_size, seed=0)
        return split.to(device), f"Fashion-MNIST {train_size}"
    split = load(
        "synthetic",
        input_shape=(1, 28, 28),
        num_classes=10,
        train_samples=train_size,
        test_samples=test_size,
    )
    return split.to(device), f"synthetic {train_size} x 784 (Fashion-MNIST not installed)"


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(size: int, device: str, repeats: int = 5) -> float:
    """GFLOP/s of one size x size by size x size torch.mm (2 size^3 FLOPs), best of
    `repeats` after a warm-up."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device)
    b = torch.randn(size, size, generator=gen).to(device)
    torch.mm(a, b)
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def macs_per_example(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of the model's Linear and Conv2d layers for one input."""
    total = 0

    def count(module: nn.Module, _: Any, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += module.in_features * module.out_features
        elif isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups
            for k in module.kernel_size:
                per_output *= k
            total += output[0].numel() * per_output

    hooks = [
        m.register_forward_hook(count)
        for m in model.modules()
        if isinstance(m, nn.Linear | nn.Conv2d)
    ]
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for hook in hooks:
            hook.remove()
    return total


def members_for(config: dict[str, Any], presets: Sequence[str], seeds: int) -> list[Member]:
    return [
        Member(config, optimizer=preset, seed=seed) for preset in presets for seed in range(seeds)
    ]


def run_mode(
    mode: str, members: Sequence[Member], split: Split, *, epochs: int, device: str
) -> Timing:
    synchronize(device)
    start = time.perf_counter()
    if mode == "fit":
        results: list[TrainResult | TrainingDivergedError] = []
        for member in members:
            model = build(dict(member.model), seed=derive_seed(member.seed, "init"))  # type: ignore[arg-type]
            try:
                results.append(
                    fit(
                        model,
                        split,
                        optimizer=member.optimizer,
                        epochs=epochs,
                        seed=member.seed,
                        device=device,
                        stop_at_zero_train_error=False,
                        progress=False,
                    )
                )
            except TrainingDivergedError as exc:
                results.append(exc)
        synchronize(device)
        call = time.perf_counter() - start
        loop = sum(r.wall_time for r in results if isinstance(r, TrainResult))
        return Timing(call, loop, tuple(results))
    population = fit_population(
        members,
        split,
        epochs=epochs,
        device=device,
        stop_at_zero_train_error=False,
        engine=mode,  # type: ignore[arg-type]
        progress=False,
    )
    synchronize(device)
    call = time.perf_counter() - start
    # Every member's wall_time is the population's loop time while it trained.
    loop = max(r.wall_time for r in population if isinstance(r, TrainResult))
    return Timing(call, loop, population)


def flops(results: Sequence[TrainResult | TrainingDivergedError], macs: int, n_train: int) -> float:
    total = 0.0
    for r in results:
        if not isinstance(r, TrainResult):
            continue
        total += 6.0 * macs * r.grad_evals * mean_batch(r, n_train)
    return total


def mean_batch(result: TrainResult, n_train: int) -> float:
    """The mean minibatch size of a result's gradient evaluations: the training set over
    the minibatches of one pass (the last one smaller, or merged when it holds one
    example)."""
    size = default_batch_size(result.optimizer)
    passes = -(-n_train // size)
    if n_train % size == 1 and passes > 1:
        passes -= 1
    return n_train / passes


def max_difference(a: nn.Module, b: nn.Module) -> float:
    """The largest difference between two models' parameters and buffers, each tensor's
    relative to its largest magnitude in `b` (0: bit-identical)."""
    sa, sb = a.state_dict(), b.state_dict()
    worst = 0.0
    for name, tensor in sa.items():
        if tensor.is_floating_point():
            scale = float(sb[name].abs().max()) or 1.0
            worst = max(worst, float((tensor - sb[name]).abs().max()) / scale)
        elif not torch.equal(tensor, sb[name]):
            worst = float("inf")
    return worst


def compare(
    title: str,
    members: Sequence[Member],
    split: Split,
    source: str,
    *,
    epochs: int,
    repeats: int,
    mm_size: int,
    device: str,
    progress: Callable[[str], None],
) -> None:
    model = build(dict(members[0].model), seed=0)  # type: ignore[arg-type]
    macs = macs_per_example(model, split.train.x.shape[1:])
    n_train = len(split.train)
    # One untimed call of each mode on two members and a slice of the data: one-time
    # costs (lazy initialization of kernels, vmap's first tracing) stay out of the timings.
    head = min(n_train, 256)
    warm = Split(
        TensorData(split.train.x[:head], split.train.y[:head]),
        TensorData(split.test.x[:10], split.test.y[:10]),
        split.meta,
    )
    for mode in MODES:
        run_mode(mode, members[:2], warm, epochs=1, device=device)
    times: dict[str, list[Timing]] = {m: [] for m in MODES}
    mm: list[float] = []
    for rep in range(repeats):
        order = MODES[rep % len(MODES) :] + MODES[: rep % len(MODES)]
        for mode in order:
            timing = run_mode(mode, members, split, epochs=epochs, device=device)
            times[mode].append(timing)
            progress(
                f"  {title}, {n_train}: repetition {rep + 1}/{repeats}, {mode}: "
                f"call {timing.call:.2f} s, loop {timing.loop:.2f} s"
            )
        mm.append(matmul_gflops(mm_size, device))
        progress(f"  torch.mm: {mm[-1]:.1f} GFLOP/s")
    mm_median = statistics.median(mm)

    print(f"\n== {title}: {len(members)} members on {source}, {epochs} epochs ==")
    print(f"MACs per example: {macs:,}; {repeats} repetitions, medians")
    print(f"{'mode':<28}{'call s':>9}{'loop s':>9}{'GFLOP':>9}{'GFLOP/s':>9}{'of mm':>8}")
    labels = {
        "vmap": 'fit_population("vmap")',
        "loop": 'fit_population("loop")',
        "fit": f"{len(members)} sequential fit calls",
    }
    for mode in MODES:
        call = statistics.median(t.call for t in times[mode])
        loop = statistics.median(t.loop for t in times[mode])
        work = flops(times[mode][-1].results, macs, n_train) / 1e9
        rate = statistics.median(
            flops(t.results, macs, n_train) / 1e9 / t.loop for t in times[mode]
        )
        print(
            f"{labels[mode]:<28}{call:9.2f}{loop:9.2f}{work:9.1f}{rate:9.1f}{rate / mm_median:8.2f}"
        )
    print(f"torch.mm {mm_size}x{mm_size}: {mm_median:.1f} GFLOP/s (median of {repeats})")
    for numerator, denominator in (("fit", "vmap"), ("loop", "vmap"), ("fit", "loop")):
        call = statistics.median(
            a.call / b.call for a, b in zip(times[numerator], times[denominator], strict=True)
        )
        loop = statistics.median(
            a.loop / b.loop for a, b in zip(times[numerator], times[denominator], strict=True)
        )
        each = ", ".join(
            f"{a.loop / b.loop:.2f}"
            for a, b in zip(times[numerator], times[denominator], strict=True)
        )
        print(
            f"speedup {denominator} over {numerator}: {call:.2f}x whole call, "
            f"{loop:.2f}x training loop (per repetition: {each})"
        )
    last = {mode: times[mode][-1].results for mode in MODES}
    diverged = {
        mode: sum(isinstance(r, TrainingDivergedError) for r in results)
        for mode, results in last.items()
    }
    if any(diverged.values()):
        print(f"diverged members: {diverged}")
    trained = [
        (member, a, b, c)
        for member, a, b, c in zip(members, last["vmap"], last["loop"], last["fit"], strict=True)
        if isinstance(a, TrainResult) and isinstance(b, TrainResult) and isinstance(c, TrainResult)
    ]
    loop_same = all(max_difference(b.model, c.model) == 0.0 for _, _, b, c in trained)
    vmap_diff = max((max_difference(a.model, c.model) for _, a, _, c in trained), default=0.0)
    per_preset: dict[str, float] = {}
    for member, a, _, c in trained:
        name = str(member.optimizer)
        per_preset[name] = max(per_preset.get(name, 0.0), max_difference(a.model, c.model))
    print(f"weights, loop vs fit: {'bit-identical' if loop_same else 'DIFFERENT'}")
    # Relative to each tensor's largest magnitude, the largest over tensors and members.
    print(
        f"weights, vmap vs fit: max relative difference {vmap_diff:.3g} ("
        + ", ".join(f"{k} {v:.2g}" for k, v in per_preset.items())
        + ")"
    )


def study_training_stage(preset: str, progress: Callable[[str], None]) -> None:
    """Wall time of a study preset's training stage: alone, loop-engine jobs, vmap
    populations (each once, in that order)."""
    import tempfile

    import yaml

    from toroid.study.config import preset_text, validate_config
    from toroid.study.graph import Task, build_graph
    from toroid.study.populations import jobs
    from toroid.study.tasks import TrainParams, train_networks

    raw = yaml.safe_load(preset_text(preset))

    def train_tasks(engine: str) -> list[Task]:
        config = dict(raw)
        for block in ("main", "binary"):
            section = config if block == "main" else config.get("binary")
            if section is not None:
                section["training"] = {**section.get("training", {}), "engine": engine}
        graph = build_graph(validate_config(config))
        return [t for t in graph if isinstance(t.params, TrainParams)]

    def timed(label: str, units: Sequence[Sequence[Task]]) -> float:
        with tempfile.TemporaryDirectory() as directory:
            started = time.perf_counter()
            failed = 0
            for unit in units:
                outcomes = train_networks([(t.params, t.key, t.hash) for t in unit], directory)
                failed += sum(error is not None for _, _, error in outcomes)
            seconds = time.perf_counter() - started
        sizes = ",".join(str(len(u)) for u in units)
        progress(f"  {label:<28} {seconds:8.1f} s  ({len(units)} jobs of {sizes}; {failed} failed)")
        return seconds

    loop_tasks, vmap_tasks = train_tasks("loop"), train_tasks("vmap")
    print(f"\n== training stage of the {preset!r} study preset: {len(loop_tasks)} networks ==")
    alone = timed("every network alone", [[t] for t in loop_tasks])
    by_key = {t.key: t for t in loop_tasks}
    loop = timed("loop-engine jobs", jobs(loop_tasks, slots=1, population_sizes={}, by_key=by_key))
    by_key = {t.key: t for t in vmap_tasks}
    vmap = timed("vmap populations", jobs(vmap_tasks, slots=1, population_sizes={}, by_key=by_key))
    print(f"speedup over alone: loop-engine jobs {alone / loop:.2f}x, vmap populations "
          f"{alone / vmap:.2f}x")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (under a minute)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda when available")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3, help="seeds per MLP preset")
    parser.add_argument("--lenet-seeds", type=int, default=8)
    parser.add_argument("--sizes", default="2000,10000", help="MLP training-set sizes")
    parser.add_argument("--lenet-sizes", default="2000", help="LeNet-5 training-set sizes")
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--mm-size", type=int, default=2048)
    parser.add_argument("--study", default=None, help="time this study preset's training stage")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.quick:
        args.epochs, args.repeats, args.seeds, args.lenet_seeds = 1, 1, 1, 2
        args.sizes, args.lenet_sizes, args.test_size, args.mm_size = "500", "500", 200, 1024
    sizes = [int(s) for s in args.sizes.split(",") if s]

    def progress(line: str) -> None:
        print(line, flush=True)

    if args.study is not None:
        print(f"device cpu, {torch.get_num_threads()} threads, torch {torch.__version__}")
        study_training_stage(args.study, progress)
        return

    print(
        f"device {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"{args.epochs} epochs, no stopping at zero training error"
    )
    print(FLOP_FORMULA)
    print("call s: the whole calls; loop s: training loops only; GFLOP/s over loop s")
    lenet_sizes = [int(s) for s in args.lenet_sizes.split(",") if s]
    # Smallest training sets first: the cheap comparisons are printed early.
    workloads = sorted(
        [(size, "mlp") for size in sizes] + [(size, "lenet") for size in lenet_sizes]
    )
    for size, kind in workloads:
        split, source = fashion_mnist(size, args.test_size, args.device)
        if kind == "mlp":
            title = f"BN MLP 784-256-256-10, presets x {args.seeds} seeds"
            members = members_for(MLP, PRESETS, args.seeds)
        else:
            title = f"LeNet-5 (BN), sgd x {args.lenet_seeds} seeds"
            members = members_for(LENET, ("sgd",), args.lenet_seeds)
        compare(
            title,
            members,
            split,
            source,
            epochs=args.epochs,
            repeats=args.repeats,
            mm_size=args.mm_size,
            device=args.device,
            progress=progress,
        )


if __name__ == "__main__":
    main()
