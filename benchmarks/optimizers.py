"""Flatness and generalization of the optimizer presets: each preset x seed trains the MLP
of `make demo` (784-500-500-10, BatchNorm) on 10k Fashion-MNIST to zero training error
(cosine schedule, stopping at the first epoch with zero eval-mode training error), then
measures the test error and the local energy (multiplicative noise on the canonical
network, training set, DESIGN.md's BatchNorm policy) at two sigmas. Prints every run, then
per preset the mean and standard error over seeds, the gradient evaluations and epochs.

The literature expects rsgd, esgd and sam flatter (smaller dE) and better on the test set
than sgd, and sgd flatter than adam and sgd-large-batch. Epoch caps: --epochs for every
preset, times EPOCH_FACTOR where a preset takes fewer steps per epoch (sgd-large-batch:
8x larger minibatches; rsgd: its y = 3 replicas share one pass).

    .venv/bin/python benchmarks/optimizers.py [--presets sgd,sam,...] [--seeds 3]
        [--widths 500,500] [--epochs 60] [--sigmas 0.1,0.25] [--le-samples 8]
        [--test-size 10000] [--json out]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from typing import Any

import torch

from common import fashion_mnist_10k
from toroid.flatness import local_energy
from toroid.models import build
from toroid.optim import PRESETS, default_batch_size
from toroid.train import derive_seed, fit

CONFIG = {"name": "mlp", "in_features": 784, "widths": [500, 500], "num_classes": 10}
EPOCH_FACTOR = {"sgd-large-batch": 4, "rsgd": 3}


def run(preset: str, seed: int, split: Any, args: argparse.Namespace) -> dict[str, Any]:
    epochs = args.epochs * EPOCH_FACTOR.get(preset, 1)
    started = time.perf_counter()
    result = fit(
        build({**CONFIG, "widths": args.widths}, seed=derive_seed(seed, "init")),
        split,
        optimizer={"name": preset, **args.hparams},
        epochs=epochs,
        schedule="cosine",
        seed=seed,
        progress=False,
    )
    energy = local_energy(
        result.model,
        split.train,
        sigmas=args.sigmas,
        samples=args.le_samples,
        noise="multiplicative",
        split="train",
        seed=seed,
        progress=False,
    )
    return {
        "preset": preset,
        "seed": seed,
        "batch_size": default_batch_size(preset),
        "max_epochs": epochs,
        "epochs": result.epochs,
        "grad_evals": result.grad_evals,
        "zero_train_error": result.reached_zero_train_error,
        "train_error": result.train.error,
        "test_error": result.test_error,
        "local_energy": list(energy.mean["train"]),
        "local_energy_stderr": list(energy.stderr["train"]),
        "seconds": time.perf_counter() - started,
    }


def mean_se(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}" if values else "-"
    se = statistics.stdev(values) / math.sqrt(len(values))
    return f"{statistics.fmean(values):.4f} ± {se:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--widths", default="500,500", help="hidden widths of the MLP")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--sigmas", default="0.1,0.25")
    parser.add_argument("--le-samples", type=int, default=8)
    parser.add_argument("--test-size", type=int, default=10000)
    parser.add_argument("--json", default=None, help="also write every run to this file")
    parser.add_argument(
        "--hparam",
        action="append",
        default=[],
        help="KEY=VALUE for every preset run (e.g. gamma0=0.03), to tune within published ranges",
    )
    args = parser.parse_args()
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    unknown = sorted(set(presets) - set(PRESETS))
    if unknown:
        parser.error(f"unknown presets {unknown}; valid: {', '.join(PRESETS)}")
    args.sigmas = [float(s) for s in args.sigmas.split(",")]
    args.widths = [int(w) for w in args.widths.split(",")]
    args.hparams = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.hparam)}

    split, source = fashion_mnist_10k(test_size=args.test_size)
    print(
        f"data: {source}, test {len(split.test)}; MLP 784-{'-'.join(map(str, args.widths))}-10 "
        f"BN; {args.seeds} seeds; "
        f"max epochs {args.epochs} (x {EPOCH_FACTOR}); local energy: multiplicative, "
        f"train, {args.le_samples} samples; {torch.get_num_threads()} threads"
    )
    runs = []
    for preset in presets:
        for seed in range(args.seeds):
            r = run(preset, seed, split, args)
            runs.append(r)
            energies = "  ".join(
                f"dE({s:g}) {e:.4f}" for s, e in zip(args.sigmas, r["local_energy"], strict=True)
            )
            print(
                f"{preset:16s} seed {seed}  epochs {r['epochs']:3d}/{r['max_epochs']}  "
                f"grad evals {r['grad_evals']:6d}  train {r['train_error']:.4f}  "
                f"test {r['test_error']:.4f}  {energies}  {r['seconds']:.0f} s",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"source": source, "sigmas": args.sigmas, "runs": runs}, f, indent=1)

    header = ["preset", "batch", "zero train err", "epochs", "grad evals", "test error"]
    header += [f"dE(sigma={s:g})" for s in args.sigmas]
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for preset in presets:
        mine = [r for r in runs if r["preset"] == preset]
        row = [
            preset,
            str(mine[0]["batch_size"]),
            f"{sum(r['zero_train_error'] for r in mine)}/{len(mine)}",
            f"{statistics.fmean(r['epochs'] for r in mine):.1f}",
            f"{statistics.fmean(r['grad_evals'] for r in mine):.0f}",
            mean_se([r["test_error"] for r in mine]),
        ]
        row += [mean_se([r["local_energy"][i] for r in mine]) for i in range(len(args.sigmas))]
        print("| " + " | ".join(row) + " |")
    print("mean ± standard error over seeds; dE on the training set")


if __name__ == "__main__":
    main()
