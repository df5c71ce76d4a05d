"""What each kind of study task does. A runner reads its inputs from the store's weights,
computes, writes its own weights (atomically) and returns its result rows; only the
coordinator writes the database. Runners are deterministic: a task re-run after a crash
gives the same numbers."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from toroid.data import Split, load
from toroid.manifold.distance import distances
from toroid.models import build
from toroid.paths import fit_bend, make_path, profile, retrain_midpoint
from toroid.paths.profile import Profile
from toroid.study.graph import Task
from toroid.study.store import Weights
from toroid.symmetry import spec_for
from toroid.symmetry.align import align
from toroid.symmetry.canonical import canonical_state
from toroid.symmetry.transform import transform_state
from toroid.train import derive_seed, fit

Results = dict[str, list[dict[str, Any]]]


@functools.lru_cache(maxsize=4)
def _data(spec_json: str, device: str) -> Split:
    spec = json.loads(spec_json)
    split = load(
        spec["name"],
        root=spec.get("root"),
        train_size=spec.get("train_size"),
        test_size=spec.get("test_size"),
        seed=int(spec.get("seed", 0)),
    )
    return split.to(device) if device != "cpu" else split


def data_for(spec: Mapping[str, Any], device: str = "cpu") -> Split:
    """The study's dataset, loaded once per process."""
    return _data(json.dumps(dict(spec), sort_keys=True), device)


def _stem(name: str) -> str:
    return name.replace("/", "_")


def _model(store: Weights, stem: str) -> nn.Module:
    state, meta = store.load(stem)
    model = build(meta["model"])
    model.load_state_dict(state)
    return model.eval()


def _save(store: Weights, key: str, model: nn.Module, **meta: Any) -> str:
    from toroid.models import model_config

    return store.save(key, model.state_dict(), {"model": model_config(model), **meta})


def run_train(task: Task, store: Weights) -> Results:
    p = task.params
    training = p["training"]
    split = data_for(p["data"])
    state_dir = store.directory / "train-state" / f"{_stem(p['network'])}-{task.config_hash}"
    # Each network starts from its own initialization: with one init per seed, minimizers
    # of different optimizers would share a basin by construction.
    init_seed = derive_seed(p["seed"], f"init/{p['optimizer_label']}")
    result = fit(
        build(p["model"], seed=init_seed),
        split,
        optimizer=p["optimizer"],
        epochs=training["epochs"],
        batch_size=training["batch_size"],
        schedule=training["schedule"],
        seed=p["seed"],
        device=p["device"],
        stop_at_zero_train_error=training["stop_at_zero_train_error"],
        augment=training["augment"],
        checkpoint_dir=state_dir,
        resume=True,
        progress=False,
    )
    model = result.model.cpu()
    weights = _save(store, task.key, model, optimizer=p["optimizer"], seed=p["seed"])
    test = result.test
    row = {
        "network": p["network"],
        "block": p["block"],
        "optimizer": p["optimizer_label"],
        "seed": p["seed"],
        "epochs": result.epochs,
        "reached_zero_train_error": result.reached_zero_train_error,
        "train_error": result.train.error,
        "train_loss": result.train.loss,
        "test_error": None if test is None else test.error,
        "test_loss": None if test is None else test.loss,
        "grad_evals": result.grad_evals,
        "wall_time": result.wall_time,
        "weights": weights,
    }
    return {"networks": [row]}


def run_canonical(task: Task, store: Weights) -> Results:
    p = task.params
    model = _model(store, _stem(f"train/{p['network']}"))
    state = canonical_state(model.state_dict(), spec_for(model), output="keep")
    model.load_state_dict(state)
    weights = _save(store, task.key, model)
    return {"canonical": [{"network": p["network"], "block": p["block"], "weights": weights}]}


def _canonical(store: Weights, network: str) -> nn.Module:
    return _model(store, _stem(f"canonical/{network}"))


def run_align(task: Task, store: Weights) -> Results:
    p = task.params
    model, reference = _canonical(store, p["network"]), _canonical(store, p["reference"])
    spec = spec_for(reference)
    result = align(model, reference, spec=spec)
    aligned = transform_state(
        canonical_state(model.state_dict(), spec, output="keep"), spec, result.transform()
    )
    model.load_state_dict(aligned)
    weights = _save(store, task.key, model, reference=p["reference"])
    row = {
        "network": p["network"],
        "block": p["block"],
        "reference": p["reference"],
        "similarity_before": result.total_before,
        "similarity_after": result.total_after,
        "weights": weights,
    }
    return {"alignments": [row]}


def _energy_rows(
    params: Mapping[str, Any], noise: str, levels: Sequence[float], result: Any
) -> list[dict[str, Any]]:
    """One row per split and noise level (sigma, or flip probability) of a local energy."""
    return [
        {
            "network": params["network"],
            "block": params["block"],
            "split": split,
            "noise": noise,
            "sigma": level,
            "mean": result.mean[split][i],
            "stderr": result.stderr[split][i],
            "base": result.base[split],
            "raw": list(result.raw[split][i]),
        }
        for split in result.mean
        for i, level in enumerate(levels)
    ]


def run_energy(task: Task, store: Weights) -> Results:
    from toroid.flatness import local_energy

    p, spec = task.params, task.params["spec"]
    model = _canonical(store, p["network"])
    result = local_energy(
        model,
        data_for(p["data"]),
        sigmas=spec["sigmas"],
        samples=spec["samples"],
        noise=spec["noise"],
        split=spec["split"],
        bn_samples=spec["bn_samples"],
        device=p["device"],
        progress=False,
    )
    return {"local_energy": _energy_rows(p, result.noise, result.sigmas, result)}


def run_distance(task: Task, store: Weights) -> Results:
    p = task.params
    a, b = _canonical(store, p["a"]), _canonical(store, p["b"])
    # One alignment for every kind.
    results = distances(a, b, kinds=p["kinds"], spec=spec_for(a))
    rows = [
        {
            "a": p["a"],
            "b": p["b"],
            "block": p["block"],
            "kind": kind,
            "value": r.value,
            "aligned": True,
        }
        for kind, r in results.items()
    ]
    return {"distances": rows}


def _profile_row(a: str, b: str, block: str, path: str, curve: Profile) -> dict[str, Any]:
    has_test = curve.test_error is not None
    return {
        "a": a,
        "b": b,
        "block": block,
        "path": path,
        "ts": list(curve.ts),
        "train_error": list(curve.train_error),
        "train_loss": list(curve.train_loss),
        "test_error": list(curve.test_error) if curve.test_error is not None else None,
        "test_loss": list(curve.test_loss) if curve.test_loss is not None else None,
        "barrier_train": curve.barrier("max_minus_mean", "train_error"),
        "barrier_test": curve.barrier("max_minus_mean", "test_error") if has_test else None,
        "max_train_error": max(curve.train_error),
    }


def run_profile(task: Task, store: Weights) -> Results:
    p, spec = task.params, task.params["spec"]
    a, b = _canonical(store, p["a"]), _canonical(store, p["b"])
    curve = profile(
        make_path(p["path"], a, b),
        data_for(p["data"]),
        points=spec["points"],
        refine=spec["refine"],
        bn_samples=spec["bn_samples"],
        device=p["device"],
        progress=False,
    )
    return {"profiles": [_profile_row(p["a"], p["b"], p["block"], p["path"], curve)]}


def run_bend(task: Task, store: Weights) -> Results:
    p, spec = task.params, task.params["spec"]
    a, b = _canonical(store, p["a"]), _canonical(store, p["b"])
    data = data_for(p["data"])
    if spec["method"] == "retrain":
        fitted = retrain_midpoint(
            a,
            b,
            data,
            optimizer={"name": "sgd", "lr": spec["lr"]},
            epochs=spec["epochs"],
            device=p["device"],
            progress=False,
        )
    else:
        fitted = fit_bend(
            a,
            b,
            data,
            kind=spec["kind"],
            epochs=spec["epochs"],
            lr=spec["lr"],
            device=p["device"],
            progress=False,
        )
    weights = _save(store, task.key, fitted.bend, method=spec["method"])
    curve = profile(fitted.path, data, points=spec["points"], device=p["device"], progress=False)
    path_kind = "polychain" if spec["method"] == "retrain" else spec["kind"]
    bend_row = {
        "a": p["a"],
        "b": p["b"],
        "block": p["block"],
        "method": spec["method"],
        "kind": path_kind,
        "epochs": fitted.epochs,
        "grad_evals": fitted.grad_evals,
        "wall_time": fitted.wall_time,
        "weights": weights,
    }
    return {
        "bends": [bend_row],
        "profiles": [_profile_row(p["a"], p["b"], p["block"], path_kind, curve)],
    }


def run_flip_energy(task: Task, store: Weights) -> Results:
    from toroid.flatness.flip_energy import flip_energy

    p, spec = task.params, task.params["spec"]
    model = _canonical(store, p["network"])
    result = flip_energy(
        model,
        data_for(p["data"]),
        ps=spec["flip_probs"],
        samples=spec["samples"],
        split="both",
        bn_samples=spec["bn_samples"],
        device=p["device"],
        progress=False,
    )
    return {"local_energy": _energy_rows(p, "flip", result.ps, result)}


def _flip_row(a: str, b: str, block: str, path: str, ts: Any, curves: Any) -> dict[str, Any]:
    """A profile row from mean curves; barriers as for continuous paths, of the mean."""
    from toroid.paths.profile import barrier

    row: dict[str, Any] = {"a": a, "b": b, "block": block, "path": path, "ts": list(ts)}
    for split in ("train", "test"):
        curve = curves.get(split)
        row[f"{split}_error"] = None if curve is None else list(curve)
        row[f"{split}_loss"] = None
        row[f"barrier_{split}"] = None if curve is None else barrier(ts, curve)
    row["max_train_error"] = max(curves["train"])
    return row


def run_flip_path(task: Task, store: Weights) -> Results:
    from toroid.paths.flip import flip_path

    p, spec = task.params, task.params["spec"]
    a, b = _canonical(store, p["a"]), _canonical(store, p["b"])
    result = flip_path(
        a,
        b,
        data=data_for(p["data"]),
        orders=spec["flip_orders"],
        points=spec["flip_points"],
        split="both",
        bn_samples=spec["bn_samples"],
        device=p["device"],
        progress=False,
    )
    curves = {split: result.mean_profile(split) for split in result.error}
    row = _flip_row(p["a"], p["b"], p["block"], "flip", result.t, curves)
    # The mean barrier over orders, not the barrier of the mean profile.
    row["barrier_train"] = result.mean_barrier("train")
    if "test" in result.error:
        row["barrier_test"] = result.mean_barrier("test")
    row["max_train_error"] = result.max_barrier("train", kind="max")
    return {"profiles": [row]}


def run_flip_chain(task: Task, store: Weights) -> Results:
    from toroid.paths.flip_chain import flip_chain

    p, spec, training = task.params, task.params["spec"], task.params["training"]
    a, b = _canonical(store, p["a"]), _canonical(store, p["b"])
    chain = flip_chain(
        a,
        b,
        data_for(p["data"]),
        optimizer=p["optimizer"],
        epochs=training["epochs"],
        batch_size=training["batch_size"],
        schedule=training["schedule"],
        orders=spec["flip_orders"],
        points=spec["flip_points"],
        bn_samples=spec["bn_samples"],
        device=p["device"],
        progress=False,
    )
    weights = _save(store, task.key, chain.bend, method="retrain")
    curves = {}
    ts: tuple[float, ...] = ()
    for split in chain.first.error:
        ts, curves[split] = chain.mean_profile(split)
    row = _flip_row(p["a"], p["b"], p["block"], "flip-chain", ts, curves)
    row["max_train_error"] = chain.max_error("train")
    bend_row = {
        "a": p["a"],
        "b": p["b"],
        "block": p["block"],
        "method": "retrain",
        "kind": "flip-chain",
        "epochs": chain.epochs,
        "grad_evals": None,
        "wall_time": None,
        "weights": weights,
    }
    return {"bends": [bend_row], "profiles": [row]}


RUNNERS: dict[str, Callable[[Task, Weights], Results]] = {
    "train": run_train,
    "canonical": run_canonical,
    "align": run_align,
    "energy": run_energy,
    "distance": run_distance,
    "profile": run_profile,
    "bend": run_bend,
    "flip_energy": run_flip_energy,
    "flip_path": run_flip_path,
    "flip_chain": run_flip_chain,
}


def execute(task: Task, directory: str | Path) -> tuple[Results, float]:
    """Run one task against the store in `directory` (any process); its rows and seconds."""
    started = time.perf_counter()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        results = RUNNERS[task.kind](task, Weights(directory))
    return results, time.perf_counter() - started
