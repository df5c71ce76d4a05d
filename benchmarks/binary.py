"""Binary-network experiment: does the continuous picture (flatter minima generalize
better, lie closer together and are joined by lower barriers) hold for +-1 networks?

Binary MLPs (784-256-256-10, sign activations, BatchNorm thresholds) on a Fashion-MNIST
subset small enough to reach zero training error, trained with Adam and SGD
(BinaryConnect-style, latent weights), 3 seeds each. Per network: test error and flip
local energy (each binary weight flipped with probability p). Per pair: the overlap
(normalized Hamming) distance after alignment and the flip-path barrier (mean over random
orders); per pair of one optimizer: the two-segment chain through the re-trained flip
midpoint. Prints a table per optimizer and Spearman correlations.

    .venv/bin/python benchmarks/binary.py [--train-size 2000] [--epochs 80] [--seeds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from itertools import combinations

import torch
from scipy.stats import spearmanr

from toroid.data import dataset_status, load
from toroid.flatness.flip_energy import flip_energy
from toroid.manifold.distance import distance
from toroid.models import build
from toroid.paths.flip import flip_path
from toroid.paths.flip_chain import flip_chain
from toroid.train import derive_seed, fit

OPTIMIZERS = {"adam": {"name": "adam", "lr": 0.01}, "sgd": {"name": "sgd", "lr": 0.5}}
PS = (0.01, 0.02, 0.05)


def mean_se(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}"
    se = statistics.stdev(values) / len(values) ** 0.5
    return f"{statistics.mean(values):.4f} ± {se:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--orders", type=int, default=4)
    args = parser.parse_args()

    name = "fashion-mnist" if dataset_status("fashion-mnist").available else "synthetic"
    options = {"input_shape": (1, 28, 28), "num_classes": 10} if name == "synthetic" else {}
    split = load(name, train_size=args.train_size, test_size=2000, seed=0, **options)
    config = {
        "name": "mlp",
        "in_features": 784,
        "widths": [args.width, args.width],
        "num_classes": 10,
        "binary": True,
    }
    started = time.perf_counter()
    nets: dict[tuple[str, int], torch.nn.Module] = {}
    rows: dict[tuple[str, int], dict[str, float]] = {}
    for label, optimizer in OPTIMIZERS.items():
        for seed in range(args.seeds):
            model = build(config, seed=derive_seed(seed, f"init/{label}"))
            result = fit(
                model,
                split,
                optimizer=optimizer,
                epochs=args.epochs,
                schedule="cosine",
                seed=seed,
                progress=False,
            )
            energy = flip_energy(
                result.model, split, ps=PS, samples=8, split="train", progress=False
            )
            nets[label, seed] = result.model
            rows[label, seed] = {
                "epochs": result.epochs,
                "train_error": result.train.error,
                "test_error": result.test_error or 0.0,
                **{f"dE@{p}": energy.mean["train"][i] for i, p in enumerate(PS)},
            }
    trained = time.perf_counter() - started
    print(f"data: {name} {args.train_size} training examples; {trained:.0f} s to train and measure")

    pair_rows = []
    for a, b in combinations(sorted(nets), 2):
        overlap = distance(nets[a], nets[b], kind="overlap").value
        path = flip_path(
            nets[a],
            nets[b],
            data=split,
            orders=args.orders,
            points=11,
            split="train",
            progress=False,
        )
        pair_rows.append((a, b, overlap, path.mean_barrier()))
    chains = {}
    for label in OPTIMIZERS:
        for s, t in combinations(range(args.seeds), 2):
            chain = flip_chain(
                nets[label, s],
                nets[label, t],
                split,
                optimizer=OPTIMIZERS[label],
                epochs=args.epochs,
                orders=args.orders,
                points=11,
                progress=False,
            )
            chains[label, s, t] = chain.max_error("train")

    print(
        f"\n{'optimizer':10s} {'zero err':>8s} {'test error':>18s} "
        + " ".join(f"{'dE@' + str(p):>18s}" for p in PS)
        + f" {'overlap within':>15s} {'flip barrier':>13s} {'chain max err':>14s}"
    )
    for label in OPTIMIZERS:
        mine = [rows[label, s] for s in range(args.seeds)]
        within = [r for r in pair_rows if r[0][0] == r[1][0] == label]
        chain = [v for k, v in chains.items() if k[0] == label]
        print(
            f"{label:10s} {sum(r['train_error'] == 0 for r in mine):>5d}/{len(mine)} "
            f"{mean_se([r['test_error'] for r in mine]):>18s} "
            + " ".join(f"{mean_se([r[f'dE@{p}'] for r in mine]):>18s}" for p in PS)
            + f" {mean_se([r[2] for r in within]):>15s} {mean_se([r[3] for r in within]):>13s}"
            f" {mean_se(chain):>14s}"
        )
    across = [r for r in pair_rows if r[0][0] != r[1][0]]
    print(
        f"across optimizers: overlap {mean_se([r[2] for r in across])}, "
        f"flip barrier {mean_se([r[3] for r in across])}"
    )

    flat = {k: r["dE@0.02"] for k, r in rows.items()}
    keys = sorted(rows)
    rho, p_value = spearmanr([flat[k] for k in keys], [rows[k]["test_error"] for k in keys])
    print(
        f"\nflatness (dE at p=0.02) vs test error over {len(keys)} networks: "
        f"Spearman rho {rho:.2f} (p {p_value:.2f})"
    )
    pair_flat = [(flat[a] + flat[b]) / 2 for a, b, _, _ in pair_rows]
    rho_d, p_d = spearmanr(pair_flat, [r[2] for r in pair_rows])
    rho_b, p_b = spearmanr(pair_flat, [r[3] for r in pair_rows])
    print(
        f"pair flatness vs overlap distance: rho {rho_d:.2f} (p {p_d:.2f}); "
        f"vs flip barrier: rho {rho_b:.2f} (p {p_b:.2f})"
    )
    print(
        f"chains reaching zero training error at every point: "
        f"{sum(v == 0 for v in chains.values())}/{len(chains)}"
    )
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
