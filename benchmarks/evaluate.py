"""Batched evaluation benchmark: local energy through `evaluate_sets` against the plain
loop peers use (deepcopy, perturb, recompute BatchNorm, evaluate), measured in one run.

Local energy with --samples x --sigmas perturbations of a 784-512-512-10 BatchNorm MLP on
10k Fashion-MNIST training examples (synthetic data of that shape when it is missing).
The loop runs the same settings (BatchNorm recomputed on the same 2000-input subset, same
batch sizes) on --loop-sets of the perturbations and its time is scaled to all of them.
A second loop uses the settings of typical peer code: statistics over the whole training
set and batches of 128. Also prints the achieved GFLOP/s of the batched forward passes
against one large torch.mm in the same run. Targets: >= 3x, >= 30%.

    .venv/bin/python benchmarks/evaluate.py [--samples 16] [--sigmas 11] [--loop-sets 24]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from common import fashion_mnist_10k
from toroid.evaluate import evaluate, recompute_bn
from toroid.flatness import local_energy
from toroid.manifold.perturb import draw_noise, perturbed_state
from toroid.models import build
from toroid.symmetry import canonicalize
from toroid.train import fit

CONFIG = {"name": "mlp", "in_features": 784, "widths": [512, 512], "num_classes": 10}
FLOPS_PER_EXAMPLE = 2 * (784 * 512 + 512 * 512 + 512 * 10)


def mm_gflops(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--sigmas", type=int, default=11)
    parser.add_argument("--loop-sets", type=int, default=24)
    parser.add_argument("--bn-samples", type=int, default=2000)
    args = parser.parse_args()

    split, source = fashion_mnist_10k(test_size=1000)
    model = fit(build(CONFIG, seed=0), split, epochs=2, progress=False).model
    train = split.train
    sigmas = [0.5 * i / (args.sigmas - 1) for i in range(args.sigmas)]
    perturbed_sets = sum(s > 0 for s in sigmas) * args.samples + 1

    start = time.perf_counter()
    energy = local_energy(
        model,
        train,
        sigmas=sigmas,
        samples=args.samples,
        bn_samples=args.bn_samples,
        progress=False,
    )
    batched = time.perf_counter() - start

    center = canonicalize(model, output="keep")
    state = center.state_dict()
    names = [n for n, _ in center.named_parameters()]
    generator = torch.Generator().manual_seed(0)
    z = draw_noise(state, names, generator)

    def one_set(sigma: float, *, bn_samples: int | None, batch_size: int) -> float:
        net = copy.deepcopy(center)
        net.load_state_dict(perturbed_state(state, sigma, z, kind="multiplicative", spec=None))
        net = recompute_bn(net, train, samples=bn_samples, batch_size=batch_size)
        return evaluate(net, train, batch_size=batch_size).error

    start = time.perf_counter()
    for i in range(args.loop_sets):
        one_set(sigmas[1 + i % (len(sigmas) - 1)], bn_samples=args.bn_samples, batch_size=500)
    loop = (time.perf_counter() - start) / args.loop_sets * perturbed_sets

    peer_sets = max(4, args.loop_sets // 4)
    start = time.perf_counter()
    for i in range(peer_sets):
        one_set(sigmas[1 + i % (len(sigmas) - 1)], bn_samples=None, batch_size=128)
    peer = (time.perf_counter() - start) / peer_sets * perturbed_sets

    examples = perturbed_sets * (args.bn_samples + len(train))
    achieved = examples * FLOPS_PER_EXAMPLE / batched / 1e9
    peak = mm_gflops()
    print(
        f"data: {source}; {args.samples} samples x {args.sigmas} sigmas = "
        f"{perturbed_sets} networks; {torch.get_num_threads()} threads"
    )
    print(f"local energy via evaluate_sets   {batched:8.1f} s")
    print(f"plain loop, same settings        {loop:8.1f} s  (from {args.loop_sets} networks)")
    print(
        f"plain loop, peer settings        {peer:8.1f} s  (from {peer_sets} networks: "
        "statistics over all 10k inputs, batches of 128)"
    )
    ratio = loop / batched
    print(
        f"speedup vs same-settings loop: {ratio:.2f}x  "
        f"[{'PASS' if ratio >= 3 else 'FAIL'}: target >= 3x]"
    )
    print(f"speedup vs peer-settings loop: {peer / batched:.2f}x")
    print(
        f"batched forward passes: {achieved:.1f} GFLOP/s; one 2048^3 torch.mm: {peak:.1f} "
        f"GFLOP/s; ratio {achieved / peak:.0%}  "
        f"[{'PASS' if achieved / peak >= 0.3 else 'FAIL'}: target >= 30%]"
    )
    print(
        "local energy (train):",
        ", ".join(
            f"{s:.2f}: {m:.4f}" for s, m in zip(energy.levels, energy.mean["train"], strict=True)
        ),
    )


if __name__ == "__main__":
    main()
