"""`toroid train`, `toroid info`, `toroid datasets`: thin commands over the library."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console
from rich.table import Table

from toroid import __version__, checkpoint, progress
from toroid.cli.app import app
from toroid.cli.data import checkpoint_data
from toroid.data import DATASET_SIZES, DATASETS, dataset_status, load
from toroid.errors import InvalidArgumentError
from toroid.evaluate import evaluate
from toroid.models import BUILDERS, build
from toroid.optim import default_batch_size, optimizer_names, resolve_optimizer
from toroid.train import SCHEDULES, derive_seed, fit

console = Console()


def _choice(label: str, value: str, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise InvalidArgumentError(f"{label} must be one of {', '.join(valid)}, got {value!r}")
    return value


def check_device(device: str, option: str = "--device") -> str:
    """Refuse, before any work, a device this machine does not have; the one-line error
    lists the devices that are valid here."""
    valid = ["cpu"]
    cuda = torch.cuda.is_available()
    if cuda:
        valid += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        valid.append("mps")
    try:
        parsed: torch.device | None = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        parsed = None
    usable = parsed is not None and (
        (parsed.type == "cpu" and parsed.index in (None, 0))
        or (
            parsed.type == "cuda"
            and cuda
            and (parsed.index is None or parsed.index < torch.cuda.device_count())
        )
        or (parsed.type == "mps" and "mps" in valid and parsed.index in (None, 0))
    )
    if not usable:
        why = "" if cuda else " (no CUDA device is available on this machine)"
        raise InvalidArgumentError(
            f"{option} {device!r} is not a device here; valid here: {', '.join(valid)}{why}"
        )
    return device


def _writable_ancestor(path: Path, start: Path, option: str, what: str) -> None:
    """Refuse `path` unless the nearest existing ancestor of `start` is a writable directory."""
    probe = start
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise InvalidArgumentError(f"{option} {path} cannot be created: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InvalidArgumentError(
            f"{option} {path}: {what} {probe} is not writable (read-only?); choose another place"
        )


def check_output_dir(path: Path, option: str = "--out") -> None:
    """Refuse, before any work, an output directory that cannot be created or written."""
    if path.exists() and not path.is_dir():
        raise InvalidArgumentError(f"{option} {path} exists and is not a directory")
    _writable_ancestor(path, path, option, "the directory")


def check_output_file(path: Path, option: str) -> None:
    """Refuse, before any work, an output file whose directory cannot be written."""
    if path.exists() and path.is_dir():
        raise InvalidArgumentError(f"{option} {path} is a directory; give a file name")
    _writable_ancestor(path, path.parent, option, "its directory")


@contextmanager
def writing(path: Path, option: str) -> Iterator[None]:
    """Turn an OSError while writing `path` (a read-only file system, a full disk, a place
    that changed since it was checked) into a one-line error naming it."""
    try:
        yield
    except OSError as exc:
        where = exc.filename if exc.filename is not None else path
        raise InvalidArgumentError(
            f"{option} {path} cannot be written: {exc.strerror or exc} ({where})"
        ) from exc


def _parse_widths(text: str) -> list[int]:
    try:
        widths = [int(w) for w in text.split(",") if w.strip()]
    except ValueError as exc:
        raise InvalidArgumentError(
            f"--widths must be comma-separated integers such as 500,500, got {text!r}"
        ) from exc
    if not widths or any(w <= 0 for w in widths):
        raise InvalidArgumentError(f"--widths must be positive integers, got {text!r}")
    return widths


def _parse_hparams(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs as a dict; VALUE is read as JSON (0.1, true, "sgd", [0.9, 0.99]) and
    taken as a plain string when it is not JSON (base=adam)."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip() or key.strip() == "name":
            raise InvalidArgumentError(
                f"--hparam must be KEY=VALUE with KEY a hyperparameter such as rho, got {item!r}"
            )
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        parsed[key.strip()] = value
    return parsed


def model_config_for(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    widths: list[int],
    depth: int | None,
    width: float,
    batchnorm: bool,
    activation: str | None,
    binary: bool = False,
) -> dict[str, Any]:
    """The config of model `name` sized for a dataset's inputs and classes. `activation`
    None: the model's default (relu; sign for binary networks)."""
    if binary and name not in ("mlp", "lenet5"):
        raise InvalidArgumentError(f"--binary needs --model mlp or lenet5, got {name!r}")
    # Only set keys reach the config, so float models keep the configs they always had.
    chosen = {
        **({} if activation is None else {"activation": activation}),
        **({"binary": True} if binary else {}),
    }
    if name == "mlp":
        return {
            "name": "mlp",
            "in_features": math.prod(input_shape),
            "widths": widths,
            "num_classes": num_classes,
            "batchnorm": batchnorm,
            **chosen,
        }
    if len(input_shape) != 3:
        raise InvalidArgumentError(
            f"model {name!r} needs image inputs (C, H, W); this dataset has shape {input_shape}"
        )
    channels = input_shape[0]
    if name == "lenet5":
        return {
            "name": "lenet5",
            "in_channels": channels,
            "num_classes": num_classes,
            "input_size": input_shape[-1],
            "batchnorm": batchnorm,
            **chosen,
        }
    if name == "vgg":
        return {
            "name": "vgg",
            "depth": depth or 11,
            "width": width,
            "in_channels": channels,
            "num_classes": num_classes,
            "batchnorm": batchnorm,
        }
    if name == "vit":
        if input_shape[1] != input_shape[2]:
            raise InvalidArgumentError(
                f"model 'vit' needs square images; this dataset has shape {input_shape}"
            )
        # The vit's defaults (patch 7, dim 64, depth 2, 4 heads) fit 28x28 images.
        return {
            "name": "vit",
            "in_channels": channels,
            "image_size": input_shape[-1],
            "num_classes": num_classes,
        }
    if name != "resnet":
        raise InvalidArgumentError(
            f"--model must be one of mlp, lenet5, vgg, resnet, vit, got {name!r}"
        )
    if width != int(width):
        raise InvalidArgumentError(f"resnet --width must be a whole number, got {width}")
    return {
        "name": "resnet",
        "depth": depth or 20,
        "width": int(width),
        "in_channels": channels,
        "num_classes": num_classes,
    }


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write (and resume from).")],
    model: Annotated[str, typer.Option(help=f"One of {', '.join(BUILDERS)}.")] = "mlp",
    dataset: Annotated[str, typer.Option(help=f"One of {', '.join(DATASETS)}.")] = "fashion-mnist",
    data_root: Annotated[
        Path | None, typer.Option(help="Directory holding the dataset files.")
    ] = None,
    train_size: Annotated[int | None, typer.Option(help="Class-balanced training subset.")] = None,
    test_size: Annotated[int | None, typer.Option(help="Class-balanced test subset.")] = None,
    widths: Annotated[str, typer.Option(help="MLP hidden widths, comma-separated.")] = "500,500",
    depth: Annotated[
        int | None, typer.Option(help="VGG (11/13/16) or ResNet (20/32/18) depth.")
    ] = None,
    width: Annotated[float, typer.Option(help="Channel multiplier of VGG / ResNet.")] = 1.0,
    batchnorm: Annotated[bool, typer.Option(help="BatchNorm after hidden layers.")] = True,
    activation: Annotated[
        str | None, typer.Option(help="relu, tanh or sign (MLP, LeNet-5; default relu).")
    ] = None,
    binary: Annotated[
        bool, typer.Option(help="Binary weights and sign activations (MLP, LeNet-5).")
    ] = False,
    optimizer: Annotated[
        str,
        typer.Option(help=f"Preset: {', '.join(optimizer_names())}."),
    ] = "sgd",
    lr: Annotated[
        float | None, typer.Option(help="Learning rate (default: the optimizer's).")
    ] = None,
    momentum: Annotated[float | None, typer.Option(help="SGD momentum.")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Weight decay.")] = None,
    hparam: Annotated[
        list[str] | None,
        typer.Option(help="Optimizer hyperparameter KEY=VALUE (e.g. rho=0.1); repeatable."),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Minibatch size (default: the preset's, else 128).")
    ] = None,
    epochs: Annotated[int, typer.Option(help="Maximum number of epochs.")] = 30,
    schedule: Annotated[str, typer.Option(help=f"One of {', '.join(SCHEDULES)}.")] = "cosine",
    stop_at_zero: Annotated[bool, typer.Option(help="Stop at zero training error.")] = True,
    augment: Annotated[bool, typer.Option(help="Random crops and flips (images).")] = False,
    seed: Annotated[int, typer.Option(help="Seed of initialization and minibatch order.")] = 0,
    data_seed: Annotated[
        int, typer.Option(help="Seed of the class-balanced subsets (keep it fixed across runs).")
    ] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    resume: Annotated[bool, typer.Option(help="Continue the training state in OUT.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Train a minimizer and save it as a checkpoint directory."""
    _choice("--model", model, tuple(BUILDERS))
    _choice("--dataset", dataset, DATASETS)
    if activation is not None:
        _choice("--activation", activation, ("relu", "tanh", "sign"))
    _choice("--schedule", schedule, SCHEDULES)
    check_device(device)
    check_output_dir(out)
    opt_config = resolve_optimizer(
        {"name": optimizer, **_parse_hparams(hparam or [])},
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
    )
    batch = default_batch_size(opt_config) if batch_size is None else batch_size
    split = load(
        dataset, root=data_root, train_size=train_size, test_size=test_size, seed=data_seed
    )
    config = model_config_for(
        model,
        split.input_shape,
        split.num_classes,
        widths=_parse_widths(widths),
        depth=depth,
        width=width,
        batchnorm=batchnorm,
        activation=activation,
        binary=binary,
    )
    net = build(config, seed=derive_seed(seed, "init"))
    progress.enable(not quiet)
    with writing(out, "--out"):  # fit saves its training state in OUT every epoch
        result = fit(
            net,
            split,
            optimizer=opt_config,
            epochs=epochs,
            batch_size=batch,
            schedule=schedule,  # type: ignore[arg-type]
            seed=seed,
            device=device,
            stop_at_zero_train_error=stop_at_zero,
            augment=augment,
            checkpoint_dir=out,
            resume=resume,
        )
    data_meta = {
        "name": dataset,
        "train_size": train_size,
        "test_size": test_size,
        "seed": data_seed,
        "root": str(data_root.resolve()) if data_root is not None else None,
        "input_shape": list(split.input_shape),
        "num_classes": split.num_classes,
        "normalization": split.meta["normalization"],
    }
    metrics = {
        "train_error": result.train.error,
        "train_loss": result.train.loss,
        "test_error": result.test_error,
        "test_loss": None if result.test is None else result.test.loss,
    }
    with writing(out, "--out"):
        checkpoint.save(
            result.model,
            out,
            meta={
                "data": data_meta,
                "optimizer": dict(result.optimizer),
                "seed": seed,
                "training": {
                    "epochs": result.epochs,
                    "max_epochs": epochs,
                    "batch_size": batch,
                    "schedule": schedule,
                    "augment": augment,
                    "wall_time": result.wall_time,
                    "grad_evals": result.grad_evals,
                    "reached_zero_train_error": result.reached_zero_train_error,
                },
                "metrics": metrics,
                "history": [asdict(r) for r in result.history],
            },
        )
    test = "n/a" if result.test_error is None else f"{result.test_error:.4f}"
    console.print(
        f"train error {result.train_error:.4f}  test error {test}  "
        f"epochs {result.epochs}  time {result.wall_time:.1f} s  -> {out}",
        soft_wrap=True,
    )
    if not result.reached_zero_train_error:
        console.print(
            "[yellow]note: training error did not reach zero; raise --epochs or tune --lr[/]"
        )


@app.command()
def info(
    ckpt: Annotated[Path, typer.Argument(help="Checkpoint directory.")],
    recompute: Annotated[bool, typer.Option(help="Reload the data and recompute errors.")] = True,
) -> None:
    """Show a checkpoint's metadata and its recomputed train/test error."""
    net, meta = checkpoint.load(ckpt)
    # The data is read before anything is printed, so that a bad entry is the only output.
    recomputing = recompute and meta.get("data") is not None
    split = checkpoint_data(meta, net, ckpt, need="") if recomputing else None
    table = Table(show_header=False, box=None)
    table.add_row("model", str(meta.get("model")))
    table.add_row("parameters", f"{sum(p.numel() for p in net.parameters()):,}")
    for key in ("data", "optimizer", "seed", "training", "metrics"):
        if key in meta:
            table.add_row(key, str(meta[key]))
    table.add_row("toroid", f"{meta.get('toroid_version')} (commit {meta.get('git_commit')})")
    table.add_row("saved", str(meta.get("saved_at")))
    console.print(table)
    if split is None:
        return
    train_m, test_m = evaluate(net, split.train), evaluate(net, split.test)
    console.print(
        f"recomputed: train error {train_m.error:.4f} (loss {train_m.loss:.4f})  "
        f"test error {test_m.error:.4f} (loss {test_m.loss:.4f})"
    )


@app.command()
def datasets(
    root: Annotated[Path | None, typer.Option(help="Also look in this directory.")] = None,
) -> None:
    """List the datasets, whether each is available here, and their sizes.

    File-based sets are looked up in --root, then $TOROID_DATA/<name>, then the system
    location (/usr/share/datasets/<name>)."""
    table = Table("name", "available", "train", "test", "where")
    for name in DATASETS:
        status = dataset_status(name, root=root)
        n_train, n_test = DATASET_SIZES[name]
        table.add_row(
            name, "yes" if status.available else "no", f"{n_train:,}", f"{n_test:,}", status.where
        )
    console.print(table)


def _version(value: bool) -> None:
    if value:
        console.print(f"toroid {__version__}")
        raise typer.Exit()


@app.callback()
def root_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """toroid: the loss landscape of deep classifiers with all parameter symmetries removed."""
