"""`toroid path`, `toroid bend`: thin commands over `toroid.paths`."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from toroid import __version__, checkpoint, progress
from toroid.cli.app import app
from toroid.cli.commands import _choice, check_output_dir, writing
from toroid.cli.data import checkpoint_data, common_dtype, load_same_architecture
from toroid.cli.measure_commands import PLOT_FORMATS, _check_output, _write_json
from toroid.errors import InvalidArgumentError
from toroid.paths import (
    BARRIER_KINDS,
    BEND_INITS,
    BEND_KINDS,
    PATH_KINDS,
    BendFit,
    Profile,
    fit_bend,
    make_path,
    profile,
    retrain_midpoint,
)
from toroid.storage import atomic_write_bytes

console = Console()
BEND_METHODS = ("fit", "retrain")


def _same_data(meta_a: dict[str, Any], meta_b: dict[str, Any], a: Path, b: Path) -> None:
    if meta_a.get("data") != meta_b.get("data"):
        raise InvalidArgumentError(
            f"{a} and {b} were trained on different data ({meta_a.get('data')} vs "
            f"{meta_b.get('data')}); paths between them need one training set"
        )


def _profile_table(result: Profile, title: str) -> Table:
    table = Table(title=title)
    table.add_column("t", justify="right")
    metrics = [m for m in ("train_error", "train_loss", "test_error", "test_loss")]
    metrics = [m for m in metrics if getattr(result, m) is not None]
    for metric in metrics:
        table.add_column(metric.replace("_", " "), justify="right")
    for i, t in enumerate(result.ts):
        table.add_row(f"{t:.4g}", *(f"{getattr(result, m)[i]:.4f}" for m in metrics))
    return table


def _plot(result: Profile, path: Path, title: str) -> None:
    """Errors (left axis) and losses (right axis) against t, written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    errors = figure.add_subplot()
    losses = errors.twinx()
    for split, color in (("train", "tab:blue"), ("test", "tab:orange")):
        error = getattr(result, f"{split}_error")
        if error is None:
            continue
        errors.plot(result.ts, error, marker="o", markersize=3, color=color, label=f"{split} error")
        losses.plot(
            result.ts,
            getattr(result, f"{split}_loss"),
            linestyle="--",
            color=color,
            alpha=0.6,
            label=f"{split} loss",
        )
    errors.set_xlabel("t")
    errors.set_ylabel("error")
    losses.set_ylabel("loss (dashed)")
    errors.set_title(title)
    errors.grid(alpha=0.3)
    handles = errors.get_legend_handles_labels()
    more = losses.get_legend_handles_labels()
    errors.legend(handles[0] + more[0], handles[1] + more[1], fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lower().lstrip("."), dpi=120)
    with writing(path, "--plot"):
        atomic_write_bytes(path, buffer.getvalue())


@app.command("path")
def path_command(
    a: Annotated[Path, typer.Argument(help="Checkpoint directory (t = 0).")],
    b: Annotated[Path, typer.Argument(help="Checkpoint directory (t = 1), same architecture.")],
    kind: Annotated[
        str, typer.Option(help="geodesic, linear, raw-linear, polychain or bezier.")
    ] = "geodesic",
    points: Annotated[int, typer.Option(help="Evenly spaced t from 0 to 1.")] = 21,
    bend: Annotated[
        Path | None, typer.Option(help="Bend checkpoint for polychain and bezier (toroid bend).")
    ] = None,
    refine: Annotated[int, typer.Option(help="Rounds of extra points around the maximum.")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the alignment and BatchNorm subset.")] = 0,
    bn_samples: Annotated[
        int, typer.Option(help="Training inputs that BatchNorm statistics are recomputed on.")
    ] = 2000,
    repair: Annotated[
        bool,
        typer.Option(
            help="REPAIR (Jordan et al. 2023): also renormalize, at every point, the units no "
            "BatchNorm follows to the mean and sd interpolated from the ends' (same inputs)."
        ),
    ] = False,
    plot: Annotated[
        Path | None, typer.Option(help="Write a plot of the profile (.png, .pdf, .svg).")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the profile and barriers as JSON.")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Errors and losses along a path from A to B (canonical coordinates, B aligned to A;
    raw-linear: the original ones), BatchNorm recomputed at every point (with --repair,
    the other units REPAIRed too), and its barriers."""
    _choice("--kind", kind, PATH_KINDS)
    if points < 2:
        raise InvalidArgumentError(f"--points must be at least 2, got {points}")
    if refine < 0:
        raise InvalidArgumentError(f"--refine must be >= 0, got {refine}")
    if bn_samples < 1:
        raise InvalidArgumentError(f"--bn-samples must be at least 1, got {bn_samples}")
    needs_bend = kind in ("polychain", "bezier")
    if needs_bend and bend is None:
        raise InvalidArgumentError(
            f"--kind {kind} needs --bend BEND (make one with `toroid bend A B -o BEND`)"
        )
    if not needs_bend and bend is not None:
        raise InvalidArgumentError(f"--bend is for polychain and bezier paths, not {kind}")
    _check_output(plot, "--plot", PLOT_FORMATS)
    _check_output(json_out, "--json")
    net_a, meta_a, net_b, meta_b = load_same_architecture(a, b, command="path")
    _same_data(meta_a, meta_b, a, b)
    bend_net = None
    if bend is not None:
        bend_net, bend_meta = checkpoint.load(bend)
        if bend_net.state_dict().keys() != net_a.state_dict().keys():
            raise InvalidArgumentError(f"the bend {bend} has another architecture than {a}")
        entry = bend_meta.get("bend")
        fitted_for = entry.get("kind") if isinstance(entry, dict) else None
        if fitted_for is not None and fitted_for != kind:
            raise InvalidArgumentError(
                f"the bend {bend} was fitted for a {fitted_for} path; use --kind {fitted_for}"
            )
        net_a, net_b, bend_net = common_dtype(net_a, net_b, bend_net)
    data = checkpoint_data(
        meta_a, net_a, a, need="path needs the dataset the models were trained on"
    )
    progress.enable(not quiet)
    route = make_path(kind, net_a, net_b, bend=bend_net, seed=seed)
    result = profile(
        route,
        data,
        points=points,
        refine=refine,
        seed=seed,
        bn_samples=bn_samples,
        bn="repair" if repair else "recompute",
    )
    title = f"{kind} path {a.name} -> {b.name}" + (" (REPAIR)" if repair else "")
    console.print(_profile_table(result, title))
    for metric in ("train_error", "test_error"):
        if getattr(result, metric) is None:
            continue
        values = "  ".join(f"{k} {result.barrier(k, metric):.4f}" for k in BARRIER_KINDS)
        console.print(f"{metric} barrier: {values}", soft_wrap=True, markup=False, highlight=False)
    if json_out is not None:
        record = {
            "a": str(a),
            "b": str(b),
            "bend": None if bend is None else str(bend),
            "seed": seed,
            "bn_samples": bn_samples,
            **result.to_dict(),
            "data": meta_a.get("data"),
            "toroid_version": __version__,
        }
        _write_json(json_out, record)
        console.print(f"-> {json_out}", soft_wrap=True, markup=False, highlight=False)
    if plot is not None:
        _plot(result, plot, title)
        console.print(f"-> {plot}", soft_wrap=True, markup=False, highlight=False)


@app.command("bend")
def bend_command(
    a: Annotated[Path, typer.Argument(help="Checkpoint directory (t = 0).")],
    b: Annotated[Path, typer.Argument(help="Checkpoint directory (t = 1), same architecture.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint directory to write.")],
    kind: Annotated[str, typer.Option(help="polychain or bezier (method fit).")] = "polychain",
    method: Annotated[
        str,
        typer.Option(help="fit: train the bend on the whole path; retrain: the midpoint alone."),
    ] = "fit",
    init: Annotated[
        str, typer.Option(help="Start of fit: geodesic_midpoint or linear_midpoint.")
    ] = "geodesic_midpoint",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 10,
    lr: Annotated[float, typer.Option(help="Learning rate (fit: SGD with momentum 0.9).")] = 0.05,
    batch_size: Annotated[int, typer.Option(help="Minibatch size.")] = 128,
    seed: Annotated[int, typer.Option(help="Seed of alignment, minibatches and t.")] = 0,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Fit the bend of a single-bend chain (or Bezier curve) between A and B and save it;
    `toroid path A B --kind polychain --bend OUT` then profiles the chain."""
    _choice("--kind", kind, BEND_KINDS)
    _choice("--method", method, BEND_METHODS)
    _choice("--init", init, BEND_INITS)
    if method == "retrain" and kind != "polychain":
        raise InvalidArgumentError("--method retrain makes a polychain bend; use --kind polychain")
    if epochs < 1 or batch_size < 1:
        raise InvalidArgumentError(
            f"--epochs and --batch-size must be positive, got {epochs} and {batch_size}"
        )
    check_output_dir(out)
    net_a, meta_a, net_b, meta_b = load_same_architecture(a, b, command="bend")
    _same_data(meta_a, meta_b, a, b)
    data = checkpoint_data(
        meta_a, net_a, a, need="bend needs the dataset the models were trained on"
    )
    progress.enable(not quiet)
    fitted: BendFit
    if method == "fit":
        fitted = fit_bend(
            net_a,
            net_b,
            data,
            kind=kind,  # type: ignore[arg-type]
            init=init,  # type: ignore[arg-type]
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
        )
    else:
        fitted = retrain_midpoint(
            net_a,
            net_b,
            data,
            optimizer={"name": "sgd", "lr": lr},
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
        )
    meta = {
        "data": meta_a.get("data"),
        "bend": {
            "kind": kind,
            "method": method,
            "a": str(a),
            "b": str(b),
            "settings": dict(fitted.settings),
            "losses": list(fitted.losses),
            "grad_evals": fitted.grad_evals,
            "wall_time": fitted.wall_time,
        },
    }
    with writing(out, "--out"):
        checkpoint.save(fitted.bend, out, meta=meta)
    last = f"{fitted.losses[-1]:.4f}" if fitted.losses else "n/a"
    console.print(
        f"{kind} bend ({method}) of {a.name} and {b.name}: {fitted.epochs} epochs, last loss "
        f"{last}, {fitted.wall_time:.1f} s -> {out}",
        soft_wrap=True,
        markup=False,
        highlight=False,
    )
