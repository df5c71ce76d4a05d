"""`toroid spec`, `toroid canon`, `toroid align`: thin commands over `toroid.symmetry`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from toroid import checkpoint
from toroid.cli.app import app
from toroid.cli.commands import _choice, check_output_dir, writing
from toroid.cli.data import checkpoint_data, load_same_architecture
from toroid.errors import InvalidArgumentError
from toroid.storage import has_bundle
from toroid.symmetry import align as align_models
from toroid.symmetry import canonicalize, is_canonical, spec_for
from toroid.symmetry.align import WEIGHT_MATCHING_VERSION

console = Console()

OUTPUT_MODES = ("normalize", "keep")
METHODS = ("weight", "activation")
# Keys that `checkpoint.save` (and the storage layer) write themselves.
_WRITTEN_BY_SAVE = frozenset(
    {
        "format",
        "format_version",
        "model",
        "toroid_version",
        "git_commit",
        "saved_at",
        "tensor_file",
        "tensor_sha256",
    }
)


def _refuse_existing(out: Path, force: bool) -> None:
    """An output directory that already holds a checkpoint (or training state) is only
    overwritten with --force."""
    if force or not out.is_dir():
        return
    for stem, what in (("model", "a checkpoint"), ("train-state", "training state")):
        if has_bundle(out, stem):
            raise InvalidArgumentError(
                f"{out} already holds {what}; pass --force to overwrite it, or choose another -o"
            )


def _carried_meta(meta: Mapping[str, Any], *, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """The source metadata (data, optimizer, seed, metrics, ...) to carry into a derived
    checkpoint, without what `checkpoint.save` writes itself and the keys in `drop`."""
    return {k: v for k, v in meta.items() if k not in _WRITTEN_BY_SAVE and k not in drop}


@app.command()
def spec(
    ckpt: Annotated[Path, typer.Argument(help="Checkpoint directory.")],
) -> None:
    """Print the symmetry spec of a checkpoint's model: unit groups and cells."""
    net, meta = checkpoint.load(ckpt)
    symmetry = spec_for(net)
    typer.echo(f"model: {meta.get('model')}")
    typer.echo(symmetry.describe())


@app.command()
def canon(
    ckpt: Annotated[Path, typer.Argument(help="Checkpoint directory.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint directory to write.")],
    output: Annotated[
        str,
        typer.Option(help="normalize: output layer scaled to unit norm too; keep: logits kept."),
    ] = "normalize",
    force: Annotated[bool, typer.Option(help="Overwrite a checkpoint already in OUT.")] = False,
) -> None:
    """Write the canonical form of a checkpoint's model (every symmetry removed)."""
    _choice("--output", output, OUTPUT_MODES)
    check_output_dir(out)
    _refuse_existing(out, force)
    net, meta = checkpoint.load(ckpt)
    symmetry = spec_for(net)
    canonical = canonicalize(net, spec=symmetry, output=output)  # type: ignore[arg-type]
    record = _carried_meta(meta, drop=("canonical",))
    record["canonical"] = {"output": output, "source": str(ckpt)}
    with writing(out, "--out"):
        checkpoint.save(canonical, out, meta=record)
    console.print(f"is_canonical: {is_canonical(canonical, symmetry)}", soft_wrap=True)
    console.print(
        f"canonical form of {ckpt} (unit groups {len(symmetry.groups)}, "
        f"cell families {len(symmetry.cells)}, output {output}) -> {out}",
        soft_wrap=True,
        markup=False,
        highlight=False,
    )


@app.command()
def align(
    ckpt: Annotated[Path, typer.Argument(help="Checkpoint directory to align.")],
    to: Annotated[Path, typer.Option("--to", help="Reference checkpoint directory.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint directory to write.")],
    method: Annotated[
        str, typer.Option(help="weight (weight matching) or activation (on training data).")
    ] = "weight",
    max_iter: Annotated[int, typer.Option(help="Coordinate-descent sweeps at most.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the coordinate-descent order.")] = 0,
    starts: Annotated[
        int,
        typer.Option(help="Weight-matching starts; the most similar result is kept (>= 1)."),
    ] = 4,
    samples: Annotated[
        int, typer.Option(help="Training inputs to correlate on (--method activation).")
    ] = 1000,
    force: Annotated[bool, typer.Option(help="Overwrite a checkpoint already in OUT.")] = False,
) -> None:
    """Align a checkpoint's units to a reference's (same architecture) and save the aligned
    canonical model; prints the similarity per unit group before and after."""
    _choice("--method", method, METHODS)
    if max_iter < 1:
        raise InvalidArgumentError(f"--max-iter must be at least 1, got {max_iter}")
    if samples < 1:
        raise InvalidArgumentError(f"--samples must be at least 1, got {samples}")
    if starts < 1:
        raise InvalidArgumentError(f"--starts must be at least 1, got {starts}")
    check_output_dir(out)
    _refuse_existing(out, force)
    net, meta, reference, _ = load_same_architecture(ckpt, to, command="align")
    symmetry = spec_for(reference)
    data = None
    if method == "activation":
        train = checkpoint_data(
            meta, net, ckpt, need="--method activation needs it; use --method weight"
        ).train
        data = (train.x[:samples], train.y[:samples])
    result = align_models(
        net,
        reference,
        method=method,  # type: ignore[arg-type]
        data=data,
        spec=symmetry,
        max_iter=max_iter,
        seed=seed,
        starts=starts,
    )
    table = Table(title=f"align {ckpt} to {to} ({method})")
    table.add_column("group")
    for column in ("units", "before", "after"):
        table.add_column(column, justify="right")
    for group in symmetry.groups:
        table.add_row(
            group.name,
            str(group.size),
            f"{result.similarity_before[group.name]:.4f}",
            f"{result.similarity_after[group.name]:.4f}",
        )
    table.add_section()
    table.add_row("total", "", f"{result.total_before:.4f}", f"{result.total_after:.4f}")
    console.print(table)
    record = _carried_meta(meta, drop=("canonical", "alignment"))
    record["alignment"] = {
        "reference": str(to),
        "source": str(ckpt),
        "method": method,
        "iterations": result.iterations,
        "total_before": result.total_before,
        "total_after": result.total_after,
        "seed": seed,
        "starts": starts if method == "weight" else None,
        "start": result.start if method == "weight" else None,
        "weight_matching": WEIGHT_MATCHING_VERSION if method == "weight" else None,
        "samples": samples if method == "activation" else None,
    }
    with writing(out, "--out"):
        checkpoint.save(result.model, out, meta=record)
    console.print(
        f"iterations {result.iterations}  total similarity {result.total_before:.4f} -> "
        f"{result.total_after:.4f}  -> {out}",
        soft_wrap=True,
        markup=False,
        highlight=False,
    )
