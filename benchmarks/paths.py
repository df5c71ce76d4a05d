"""Path experiment and profile benchmark, measured in one run.

Two SGD-trained 784-500-500-10 BatchNorm MLPs on 10k Fashion-MNIST (zero training error):
the train-error barrier (max_minus_mean) of the raw linear path, the aligned linear path,
the geodesic, and the single-bend chain through a fitted bend (and through the re-trained
geodesic midpoint). Then a 21-point profile with BatchNorm recomputation through
`evaluate_many` against the point-by-point loop (load the point, recompute BatchNorm,
evaluate) with the same settings and with the settings of typical peer code (statistics
over all training inputs, batches of 128). Target: >= 3x.

    .venv/bin/python benchmarks/paths.py [--epochs 60] [--bend-epochs 30] [--points 21]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from common import fashion_mnist_10k
from toroid.evaluate import evaluate, recompute_bn
from toroid.models import build
from toroid.paths import fit_bend, geodesic, linear, profile, retrain_midpoint, uniform_ts
from toroid.train import fit

CONFIG = {"name": "mlp", "in_features": 784, "widths": [500, 500], "num_classes": 10}


def point_by_point(path: object, split: object, ts: tuple[float, ...], **settings: object) -> float:
    """Seconds for the loop peers write: one network per point, BatchNorm recomputed, then
    evaluated on the training and test sets."""
    start = time.perf_counter()
    for t in ts:
        net = copy.deepcopy(path.template)  # type: ignore[attr-defined]
        net.load_state_dict(path.state_at(t))  # type: ignore[attr-defined]
        net = recompute_bn(
            net,
            split.train,  # type: ignore[attr-defined]
            samples=settings["bn_samples"],  # type: ignore[arg-type]
            batch_size=settings["batch_size"],  # type: ignore[arg-type]
        )
        evaluate(net, split.train, batch_size=settings["batch_size"])  # type: ignore[arg-type,attr-defined]
        evaluate(net, split.test, batch_size=settings["batch_size"])  # type: ignore[arg-type,attr-defined]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--bend-epochs", type=int, default=30)
    parser.add_argument("--points", type=int, default=21)
    parser.add_argument("--loop-points", type=int, default=7)
    args = parser.parse_args()

    split, source = fashion_mnist_10k(test_size=2000)
    started = time.perf_counter()
    minimizers = [
        fit(
            build(CONFIG, seed=seed),
            split,
            optimizer={"name": "sgd", "lr": 0.05},
            epochs=args.epochs,
            schedule="cosine",
            seed=seed,
            progress=False,
        )
        for seed in (0, 1)
    ]
    train_seconds = time.perf_counter() - started
    a, b = (m.model for m in minimizers)
    print(f"data: {source}; {torch.get_num_threads()} threads")
    for seed, m in enumerate(minimizers):
        print(
            f"minimizer {seed}: {m.epochs} epochs, train error {m.train.error:.4f}, "
            f"test error {m.test_error:.4f}"
        )
    print(f"training both: {train_seconds:.1f} s")

    started = time.perf_counter()
    fitted = fit_bend(a, b, split, epochs=args.bend_epochs, progress=False)
    bend_seconds = time.perf_counter() - started
    started = time.perf_counter()
    retrained = retrain_midpoint(
        a, b, split, optimizer={"name": "sgd", "lr": 0.05}, epochs=args.epochs, progress=False
    )
    retrain_seconds = time.perf_counter() - started
    paths = {
        "raw linear": linear(a, b, raw=True),
        "aligned linear": linear(a, b),
        "geodesic": geodesic(a, b),
        "chain (fitted bend)": fitted.path,
        "chain (re-trained midpoint)": retrained.path,
    }
    ts = uniform_ts(args.points)
    print(
        f"\nbarriers over {args.points} points (BatchNorm recomputed at every point); bend fit "
        f"{bend_seconds:.1f} s ({args.bend_epochs} epochs), midpoint re-training "
        f"{retrain_seconds:.1f} s ({retrained.epochs} epochs)"
    )
    print(f"{'path':30s} {'train max-mean':>15s} {'max train err':>14s} {'test max-mean':>14s}")
    profiles = {}
    for name, path in paths.items():
        curve = profile(path, split, ts=ts, progress=False)
        profiles[name] = curve
        print(
            f"{name:30s} {curve.barrier('max_minus_mean'):15.4f} "
            f"{curve.barrier('max'):14.4f} "
            f"{curve.barrier('max_minus_mean', 'test_error'):14.4f}"
        )
    for name in ("chain (fitted bend)", "chain (re-trained midpoint)"):
        zero = all(e == 0.0 for e in profiles[name].train_error)
        print(f"{name}: zero training error at every evaluated point: {zero}")

    path = paths["aligned linear"]
    started = time.perf_counter()
    profile(path, split, ts=ts, progress=False)
    batched = time.perf_counter() - started
    loop_ts = ts[:: max(1, len(ts) // args.loop_points)][: args.loop_points]
    same = point_by_point(path, split, loop_ts, bn_samples=2000, batch_size=500)
    same *= len(ts) / len(loop_ts)
    peer = point_by_point(path, split, loop_ts[:3], bn_samples=None, batch_size=128)
    peer *= len(ts) / 3
    print(f"\n{len(ts)}-point profile (train 10k + test 2k), BatchNorm recomputed per point:")
    print(f"evaluate_many (affine family)      {batched:7.1f} s")
    print(f"point-by-point, same settings      {same:7.1f} s  (from {len(loop_ts)} points)")
    print(
        f"point-by-point, peer settings      {peer:7.1f} s  (from 3 points: statistics over "
        "all 10k inputs, batches of 128)"
    )
    print(f"speedup vs same-settings loop: {same / batched:.2f}x")
    ratio = peer / batched
    print(
        f"speedup vs peer-settings loop: {ratio:.2f}x  "
        f"[{'PASS' if ratio >= 3 else 'FAIL'}: target >= 3x]"
    )


if __name__ == "__main__":
    main()
