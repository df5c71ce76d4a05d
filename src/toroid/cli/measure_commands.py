"""`toroid flatness`, `toroid distance`: thin commands over `toroid.flatness` and
`toroid.manifold`."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from toroid import __version__, checkpoint, progress
from toroid.cli.app import app
from toroid.cli.commands import _choice, check_output_file, writing
from toroid.cli.data import checkpoint_data, load_same_architecture
from toroid.errors import InvalidArgumentError
from toroid.flatness import LocalEnergy, local_energy
from toroid.grid import parse_grid
from toroid.manifold.distance import KINDS, SCOPES, Distance, distance
from toroid.manifold.perturb import NOISES
from toroid.storage import atomic_write_bytes

console = Console()

SPLITS = ("train", "test", "both")
PLOT_FORMATS = ("png", "pdf", "svg")


def parse_sigmas(text: str) -> tuple[float, ...]:
    """The sigmas of `--sigmas` (`toroid.grid.parse_grid`: `start:stop:count`, both ends
    included, or a comma list). They must be >= 0 and strictly increasing."""
    values = parse_grid(text, name="--sigmas")
    if any(v < 0 for v in values):
        raise InvalidArgumentError(f"--sigmas must be finite numbers >= 0, got {text!r}")
    if any(b <= a for a, b in pairwise(values)):
        raise InvalidArgumentError(f"--sigmas must be strictly increasing, got {text!r}")
    return values


def _check_output(path: Path | None, option: str, formats: tuple[str, ...] = ()) -> None:
    """Refuse, before any work, an output path that cannot be written as asked."""
    if path is None:
        return
    check_output_file(path, option)
    if formats and path.suffix.lower().lstrip(".") not in formats:
        valid = ", ".join(f".{f}" for f in formats)
        raise InvalidArgumentError(f"{option} {path} must end in one of {valid}")


def _write_json(path: Path, record: Mapping[str, Any], option: str = "--json") -> None:
    with writing(path, option):
        atomic_write_bytes(path, (json.dumps(record, indent=2, allow_nan=False) + "\n").encode())


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _energy_table(result: LocalEnergy, title: str) -> Table:
    table = Table(title=title)
    table.add_column("sigma", justify="right")
    for name in result.mean:
        table.add_column(f"{name} dE", justify="right")
        table.add_column(f"{name} stderr", justify="right")
    for i, sigma in enumerate(result.levels):
        cells = [f"{sigma:.4g}"]
        for name in result.mean:
            cells += [f"{result.mean[name][i]:.4f}", f"{result.stderr[name][i]:.4f}"]
        table.add_row(*cells)
    return table


def _plot(result: LocalEnergy, path: Path, title: str) -> None:
    """dE against sigma with standard-error bars, one curve per split, written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.0, 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, mean in result.mean.items():
        errors = None if result.samples < 2 else result.stderr[name]
        axes.errorbar(
            result.levels, mean, yerr=errors, marker="o", markersize=3, capsize=3, label=name
        )
    axes.set_xlabel("sigma (relative perturbation size)")
    axes.set_ylabel("dE (mean error increase)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(title="split")
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lower().lstrip("."), dpi=120)
    with writing(path, "--plot"):
        atomic_write_bytes(path, buffer.getvalue())


@app.command()
def flatness(
    ckpt: Annotated[Path, typer.Argument(help="Checkpoint directory.")],
    sigmas: Annotated[
        str,
        typer.Option(help="start:stop:count (both ends included) or a comma list."),
    ] = "0:0.5:11",
    samples: Annotated[int, typer.Option(help="Noise draws per sigma.")] = 8,
    split: Annotated[str, typer.Option(help="train, test or both.")] = "both",
    noise: Annotated[
        str, typer.Option(help="multiplicative: theta (1 + sigma z); spherical: on each cell.")
    ] = "multiplicative",
    seed: Annotated[int, typer.Option(help="Seed of the noise and the BatchNorm subset.")] = 0,
    bn_samples: Annotated[
        int, typer.Option(help="Training inputs that BatchNorm statistics are recomputed on.")
    ] = 2000,
    plot: Annotated[
        Path | None, typer.Option(help="Write a plot of dE against sigma (.png, .pdf, .svg).")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the results as JSON.")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Local energy of a checkpoint: the mean increase dE of the error when its weights are
    perturbed by relative noise of size sigma, on the data named in its metadata."""
    values = parse_sigmas(sigmas)
    if samples < 1:
        raise InvalidArgumentError(f"--samples must be at least 1, got {samples}")
    _choice("--split", split, SPLITS)
    _choice("--noise", noise, NOISES)
    if bn_samples < 1:
        raise InvalidArgumentError(f"--bn-samples must be at least 1, got {bn_samples}")
    _check_output(plot, "--plot", PLOT_FORMATS)
    _check_output(json_out, "--json")
    net, meta = checkpoint.load(ckpt)
    data = checkpoint_data(
        meta, net, ckpt, need="flatness needs the dataset the model was trained on"
    )
    progress.enable(not quiet)
    result = local_energy(
        net,
        data,
        sigmas=values,
        samples=samples,
        noise=noise,  # type: ignore[arg-type]
        split=split,  # type: ignore[arg-type]
        seed=seed,
        bn_samples=bn_samples,
    )
    title = f"local energy of {ckpt.name} ({noise} noise)"
    console.print(_energy_table(result, f"{title}, {samples} samples"))
    base = "  ".join(f"{name} {value:.4f}" for name, value in result.base.items())
    console.print(f"base error: {base}", soft_wrap=True, markup=False, highlight=False)
    if json_out is not None:
        record = {
            "checkpoint": str(ckpt),
            "sigmas": list(result.levels),
            "noise": result.noise,
            "samples": result.samples,
            "split": split,
            "seed": seed,
            "bn_samples": bn_samples,
            "base": dict(result.base),
            "mean": {k: list(v) for k, v in result.mean.items()},
            "stderr": {k: [_finite_or_none(e) for e in v] for k, v in result.stderr.items()},
            "raw": {k: [list(r) for r in v] for k, v in result.raw.items()},
            "data": meta.get("data"),
            "toroid_version": __version__,
        }
        _write_json(json_out, record)
        console.print(f"-> {json_out}", soft_wrap=True, markup=False, highlight=False)
    if plot is not None:
        _plot(result, plot, title)
        console.print(f"-> {plot}", soft_wrap=True, markup=False, highlight=False)


@app.command("distance")
def distance_command(
    a: Annotated[Path, typer.Argument(help="Checkpoint directory.")],
    b: Annotated[Path, typer.Argument(help="Checkpoint directory (same architecture).")],
    kind: Annotated[str, typer.Option(help="geodesic, mean_angle or overlap.")] = "geodesic",
    per_layer: Annotated[bool, typer.Option(help="Also the distance per cell family.")] = False,
    align: Annotated[
        bool, typer.Option(help="Align B's units to A's first (weight matching).")
    ] = True,
    seed: Annotated[int, typer.Option(help="Seed of the alignment.")] = 0,
    over: Annotated[
        str,
        typer.Option(help="Cells summed: auto (binary weights of binary networks), all, binary."),
    ] = "auto",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the result as JSON.")
    ] = None,
) -> None:
    """Distance between two networks on the toroid (both canonicalized; B aligned to A)."""
    _choice("--kind", kind, KINDS)
    _choice("--over", over, SCOPES)
    _check_output(json_out, "--json")
    net_a, _, net_b, _ = load_same_architecture(a, b, command="distance")
    result: Distance = distance(
        net_a,
        net_b,
        kind=kind,  # type: ignore[arg-type]
        per_layer=per_layer,
        align=align,
        seed=seed,
        over=over,  # type: ignore[arg-type]
    )
    console.print(
        str(replace(result, per_layer=None)), soft_wrap=True, markup=False, highlight=False
    )
    if result.per_layer is not None:
        table = Table(title=f"per cell family ({kind})")
        table.add_column("cell family")
        table.add_column(kind, justify="right")
        for name, value in result.per_layer.items():
            table.add_row(name, f"{value:.6g}")
        console.print(table)
    if json_out is not None:
        record = {
            "a": str(a),
            "b": str(b),
            "kind": result.kind,
            "value": result.value,
            "aligned": result.aligned,
            "cells": result.cells,
            "over": result.over,
            "per_layer": None if result.per_layer is None else dict(result.per_layer),
            "seed": seed,
            "toroid_version": __version__,
        }
        _write_json(json_out, record)
        console.print(f"-> {json_out}", soft_wrap=True, markup=False, highlight=False)


__all__ = ["parse_sigmas"]
