"""Checkpoints: pickle-free round trips, atomic writes, and clear errors on bad files."""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

import toroid
from toroid import checkpoint, storage
from toroid.errors import CheckpointError
from toroid.models import build, mlp, model_config

SRC = Path(toroid.__file__).resolve().parent
TENSOR_FILE = re.compile(r"^model-[0-9a-f]{16}\.safetensors$")


def _trained_bn_model(model: torch.nn.Module, x: torch.Tensor, steps: int = 3) -> torch.nn.Module:
    """Move parameters and BN running statistics away from their initial values."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        out = model(x + 0.1 * torch.randn(x.shape, generator=gen, dtype=x.dtype))
        loss = out.square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _mlp(seed: int = 0) -> torch.nn.Module:
    return build({"name": "mlp", "in_features": 8, "widths": [5, 4], "num_classes": 3}, seed=seed)


def _inputs(
    shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _assert_state_equal(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert sa[key].shape == sb[key].shape, key
        assert torch.equal(sa[key], sb[key]), key


def _files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def _meta(directory: Path) -> dict:
    return json.loads((directory / "model.json").read_text())


def _write_meta(directory: Path, meta: dict) -> None:
    (directory / "model.json").write_text(json.dumps(meta))


# ---------------------------------------------------------------- round trips


CASES = {
    "mlp": (lambda: mlp(8, [5, 4], 3), (6, 8)),
    "lenet5": (
        lambda: build(
            {"name": "lenet5", "in_channels": 1, "num_classes": 4, "input_size": 28}, seed=0
        ),
        (4, 1, 28, 28),
    ),
    "resnet20": (
        lambda: build({"name": "resnet", "depth": 20, "in_channels": 3, "num_classes": 5}, seed=0),
        (2, 3, 32, 32),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_restores_every_tensor_meta_and_outputs(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    factory, shape = CASES[name]
    x = _inputs(shape)
    model = _trained_bn_model(factory(), x)
    state = model.state_dict()
    bn_stats = [
        k for k in state if k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    ]
    assert bn_stats, "the model should have BatchNorm buffers to check"
    # The BN statistics really moved, so a loader that dropped buffers would be caught.
    assert any(int(state[k]) == 3 for k in bn_stats if k.endswith("num_batches_tracked"))
    assert any(
        not torch.equal(state[k], torch.zeros_like(state[k]))
        for k in bn_stats
        if k.endswith("running_mean")
    )
    model.train()  # saved in train mode; must come back in eval mode
    meta = {
        "data": {"name": "synthetic", "train_size": 10, "options": {"a": [1, 2]}},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "seed": 7,
        "metrics": {"train_error": 0.25, "test_error": None},
        "history": [{"epoch": 1, "lr": 0.1}],
    }
    out = checkpoint.save(model, tmp_path / "ckpt", meta=meta)
    assert out == tmp_path / "ckpt"

    loaded, loaded_meta = checkpoint.load(out)
    _assert_state_equal(model, loaded)
    for key, value in meta.items():
        assert loaded_meta[key] == value
    assert loaded_meta["model"] == model_config(model)
    assert loaded_meta["toroid_version"] == toroid.__version__
    assert loaded_meta["format"] == "toroid-checkpoint"
    assert {"format_version", "git_commit", "saved_at", "tensor_file", "tensor_sha256"} <= set(
        loaded_meta
    )

    on_disk = _meta(out)
    assert on_disk["model"] == model_config(model)
    assert on_disk["toroid_version"] == toroid.__version__
    assert on_disk["format"] == "toroid-checkpoint"

    assert not loaded.training
    assert all(not m.training for m in loaded.modules())
    assert model_config(loaded) == model_config(model)
    model.eval()
    with torch.no_grad():
        expected, got = model(x), loaded(x)
    assert torch.equal(expected, got)
    # eval-mode outputs depend on the running statistics: a fresh model differs
    with torch.no_grad():
        assert not torch.equal(build(model_config(model), seed=0).eval()(x), expected)


def test_float64_round_trip_keeps_dtype(tmp_path: Path) -> None:
    x = _inputs((6, 8), dtype=torch.float64)
    model = _trained_bn_model(mlp(8, [5, 4], 3).double(), x)
    checkpoint.save(model, tmp_path / "ckpt")
    loaded, _ = checkpoint.load(tmp_path / "ckpt")
    floats = [t for t in loaded.state_dict().values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float64 for t in floats)
    _assert_state_equal(model, loaded)
    model.eval()
    with torch.no_grad():
        out = loaded(x)
        assert out.dtype == torch.float64
        assert torch.equal(out, model(x))


# ---------------------------------------------------------------- files on disk


def test_files_are_json_and_hashed_weights_only(tmp_path: Path) -> None:
    directory = tmp_path / "ckpt"
    model = _mlp()
    checkpoint.save(model, directory)
    files = _files(directory)
    assert len(files) == 2 and "model.json" in files, files
    (weights,) = files - {"model.json"}
    assert TENSOR_FILE.match(weights), weights
    meta = _meta(directory)
    assert meta["tensor_file"] == weights
    digest = hashlib.sha256((directory / weights).read_bytes()).hexdigest()
    assert meta["tensor_sha256"] == digest
    assert weights == f"model-{digest[:16]}.safetensors"

    # new weights, second save: the old tensor file is gone, no temporaries remain
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    checkpoint.save(model, directory)
    files2 = _files(directory)
    assert len(files2) == 2 and "model.json" in files2, files2
    (weights2,) = files2 - {"model.json"}
    assert TENSOR_FILE.match(weights2)
    assert weights2 != weights
    assert _meta(directory)["tensor_file"] == weights2
    loaded, _ = checkpoint.load(directory)
    _assert_state_equal(model, loaded)


def test_saving_the_same_weights_twice_keeps_one_file(tmp_path: Path) -> None:
    model = _mlp()
    checkpoint.save(model, tmp_path / "ckpt")
    first = _files(tmp_path / "ckpt")
    checkpoint.save(model, tmp_path / "ckpt")
    assert _files(tmp_path / "ckpt") == first


def test_interrupted_save_leaves_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "ckpt"
    old = _mlp(seed=0)
    checkpoint.save(old, directory, meta={"seed": 0})
    real_replace = os.replace

    def failing_replace(src: str, dst: str | Path) -> None:
        if str(dst).endswith("model.json"):
            raise OSError("disk full (simulated)")
        real_replace(src, dst)

    monkeypatch.setattr(storage.os, "replace", failing_replace)
    new = _mlp(seed=1)
    with pytest.raises(OSError, match="simulated"):
        checkpoint.save(new, directory, meta={"seed": 1})
    monkeypatch.undo()

    assert not [n for n in _files(directory) if n.endswith(".tmp")]
    loaded, meta = checkpoint.load(directory)
    assert meta["seed"] == 0
    _assert_state_equal(old, loaded)


def test_save_refuses_a_file_path(tmp_path: Path) -> None:
    target = tmp_path / "not-a-dir"
    target.write_text("x")
    with pytest.raises(CheckpointError, match="not-a-dir"):
        checkpoint.save(_mlp(), target)


# ---------------------------------------------------------------- error cases


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    directory = tmp_path / "ckpt"
    checkpoint.save(_mlp(), directory, meta={"seed": 0})
    return directory


def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(missing)
    assert str(missing) in str(info.value)


def test_model_json_missing(saved: Path) -> None:
    (saved / "model.json").unlink()
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(saved)
    assert "model.json" in str(info.value)
    assert str(saved) in str(info.value)


def test_invalid_json(saved: Path) -> None:
    (saved / "model.json").write_text('{"format": "toroid-checkpoint", ')
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(saved)
    assert str(saved / "model.json") in str(info.value)
    assert "JSON" in str(info.value)


def test_json_without_tensor_file(saved: Path) -> None:
    (saved / "model.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="tensor_file") as info:
        checkpoint.load(saved)
    assert "model.json" in str(info.value)


def test_tensor_file_missing(saved: Path) -> None:
    weights = _meta(saved)["tensor_file"]
    (saved / weights).unlink()
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(saved)
    assert weights in str(info.value)
    assert "missing" in str(info.value)


def test_tensor_file_corrupted(saved: Path) -> None:
    weights = saved / _meta(saved)["tensor_file"]
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0x01  # one bit in the tensor data (the header comes first)
    weights.write_bytes(bytes(blob))
    # the flipped byte alone still parses as safetensors: only the hash can catch it
    assert load_safetensors(bytes(blob))
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(saved)
    assert str(weights) in str(info.value)
    assert "corrupt" in str(info.value)
    assert "sha256" in str(info.value)


def test_tensor_file_not_safetensors(saved: Path) -> None:
    meta = _meta(saved)
    blob = b"\xff" * 64
    (saved / meta["tensor_file"]).write_bytes(blob)
    meta["tensor_sha256"] = hashlib.sha256(blob).hexdigest()
    _write_meta(saved, meta)
    with pytest.raises(CheckpointError, match="safetensors") as info:
        checkpoint.load(saved)
    assert meta["tensor_file"] in str(info.value)


@pytest.mark.parametrize(
    ("widths", "expect"),
    [([6, 4], "wrong shape"), ([5, 4, 4], "missing"), ([5], "unexpected")],
)
def test_config_that_does_not_match_the_weights(
    saved: Path, widths: list[int], expect: str
) -> None:
    meta = _meta(saved)
    assert meta["model"]["widths"] == [5, 4]
    meta["model"]["widths"] = widths
    _write_meta(saved, meta)  # tensor file and its hash untouched
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(saved)
    message = str(info.value)
    assert "model.json" in message and str(saved) in message
    assert "do not match" in message
    assert expect in message


def test_wrong_shape_message_names_the_tensor_and_shapes(saved: Path) -> None:
    meta = _meta(saved)
    meta["model"]["widths"] = [6, 4]
    _write_meta(saved, meta)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(saved)
    # the first Linear is (5, 8) on disk and (6, 8) in the rebuilt model
    assert "1.weight (5, 8) != (6, 8)" in str(info.value)


def test_unknown_model_name(saved: Path) -> None:
    meta = _meta(saved)
    meta["model"]["name"] = "transformer"
    _write_meta(saved, meta)
    with pytest.raises(CheckpointError, match="cannot rebuild") as info:
        checkpoint.load(saved)
    assert "transformer" in str(info.value)


def test_unknown_format(saved: Path) -> None:
    meta = _meta(saved)
    meta["format"] = "someone-elses-format"
    _write_meta(saved, meta)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(saved)
    assert str(saved / "model.json") in str(info.value)
    assert "someone-elses-format" in str(info.value)


def test_newer_format_version(saved: Path) -> None:
    meta = _meta(saved)
    meta["format_version"] = checkpoint.FORMAT_VERSION + 1
    _write_meta(saved, meta)
    with pytest.raises(CheckpointError, match="upgrade toroid") as info:
        checkpoint.load(saved)
    assert str(saved) in str(info.value)


# ---------------------------------------------------------------- optimizer state


def _adam_setup(seed: int) -> tuple[torch.nn.Module, torch.optim.Adam]:
    model = mlp(8, [5, 4], 3)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    return model, torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.95))


def _adam_step(model: torch.nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(7, 8, generator=gen)
    y = torch.randint(0, 3, (7,), generator=gen)
    model.train()
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def test_flatten_unflatten_adam_state_round_trip() -> None:
    model, opt = _adam_setup(0)
    _adam_step(model, opt, seed=1)
    original = opt.state_dict()
    assert original["state"], "Adam should have per-parameter state after one step"

    tensors: dict[str, torch.Tensor] = {}
    skeleton = storage.flatten_state(original, "optimizer", tensors)
    # through JSON and safetensors bytes, as a checkpoint stores them
    skeleton = json.loads(json.dumps(skeleton))
    tensors = load_safetensors(save_safetensors({k: v.contiguous() for k, v in tensors.items()}))
    restored = storage.unflatten_state(skeleton, tensors)

    assert set(restored) == set(original)
    assert set(restored["state"]) == set(original["state"])
    assert all(isinstance(k, int) for k in restored["state"])
    for index, entry in original["state"].items():
        assert set(restored["state"][index]) == set(entry)
        for name, value in entry.items():
            got = restored["state"][index][name]
            assert isinstance(got, torch.Tensor)
            assert got.dtype == value.dtype and got.shape == value.shape
            assert torch.equal(got, value), (index, name)
    assert restored["param_groups"] == original["param_groups"]
    assert isinstance(restored["param_groups"][0]["betas"], tuple)


def test_restored_adam_takes_identical_next_steps() -> None:
    model_a, opt_a = _adam_setup(0)
    _adam_step(model_a, opt_a, seed=1)

    tensors: dict[str, torch.Tensor] = {}
    skeleton = json.loads(json.dumps(storage.flatten_state(opt_a.state_dict(), "opt", tensors)))
    tensors = load_safetensors(save_safetensors({k: v.contiguous() for k, v in tensors.items()}))

    model_b, opt_b = _adam_setup(99)  # other initial weights and a fresh optimizer
    model_b.load_state_dict(model_a.state_dict())
    opt_b.load_state_dict(storage.unflatten_state(skeleton, tensors))
    _assert_state_equal(model_a, model_b)

    # a fresh Adam (no moments) would step differently: guard against a vacuous check
    model_c, opt_c = _adam_setup(99)
    model_c.load_state_dict(model_a.state_dict())

    for seed in (2, 3, 4):
        _adam_step(model_a, opt_a, seed)
        _adam_step(model_b, opt_b, seed)
        _adam_step(model_c, opt_c, seed)
        _assert_state_equal(model_a, model_b)
    assert not all(
        torch.equal(p, q) for p, q in zip(model_a.parameters(), model_c.parameters(), strict=True)
    )


def test_flatten_refuses_what_needs_pickle() -> None:
    with pytest.raises(CheckpointError, match="opt/x"):
        storage.flatten_state({"x": object()}, "opt", {})


# ---------------------------------------------------------------- no pickle anywhere

_PICKLE_MODULES = {
    "pickle",
    "cPickle",
    "_pickle",
    "dill",
    "cloudpickle",
    "joblib",
    "marshal",
    "shelve",
}


def _pickle_uses(source: str, filename: str) -> list[str]:
    """Lines of `source` that import a pickle-like module, call torch.load without
    weights_only=True, or call numpy.load with allow_pickle=True."""
    problems = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [(node.module or "").split(".")[0]]
            if node.module == "torch" and any(a.name == "load" for a in node.names):
                problems.append(f"{filename}:{node.lineno}: from torch import load")
        else:
            names = []
        problems += [
            f"{filename}:{node.lineno}: imports {n}" for n in names if n in _PICKLE_MODULES
        ]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            owner_name = owner.id if isinstance(owner, ast.Name) else None
            keywords = {k.arg: k.value for k in node.keywords}
            if node.func.attr == "load" and owner_name == "torch":
                flag = keywords.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    problems.append(
                        f"{filename}:{node.lineno}: torch.load without weights_only=True"
                    )
            if node.func.attr == "load" and owner_name in {"np", "numpy"}:
                flag = keywords.get("allow_pickle")
                if flag is not None and not (
                    isinstance(flag, ast.Constant) and flag.value is False
                ):
                    problems.append(f"{filename}:{node.lineno}: numpy.load with allow_pickle")
    return problems


def test_the_pickle_checker_catches_offenders() -> None:
    bad = {
        "import pickle\n": "imports pickle",
        "from pickle import loads\n": "imports pickle",
        "import dill as d\n": "imports dill",
        # Split so that repository-wide greps for unsafe loading do not flag this test.
        "import torch\ntorch." + "load('f')\n": "torch.load",
        "import torch\ntorch." + "load('f', weights_only=False)\n": "torch.load",
        "from torch import load\n": "from torch import load",
        "import numpy as np\nnp.load('f', allow_pickle=True)\n": "allow_pickle",
    }
    for source, expected in bad.items():
        found = _pickle_uses(source, "bad.py")
        assert len(found) == 1 and expected in found[0], (source, found)
    good = "import torch\nimport numpy as np\ntorch.load('f', weights_only=True)\nnp.load('f')\n"
    assert _pickle_uses(good + "'''pickle is mentioned here'''\n", "good.py") == []


def test_no_module_uses_pickle_or_unsafe_torch_load() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 10 and SRC / "checkpoint.py" in files
    problems = [p for f in files for p in _pickle_uses(f.read_text(), str(f.relative_to(SRC)))]
    assert problems == []
    # belt and braces: a plain text search that does not rely on the AST walk
    pattern = re.compile(
        r"^\s*(import\s+pickle|from\s+pickle\s+import)|\bpickle\.(loads?|dumps?)\(", re.M
    )
    assert [f.name for f in files if pattern.search(f.read_text())] == []


@pytest.mark.parametrize("name", ["../outside-0123456789abcdef.safetensors", "", 7, "model.bin"])
def test_tensor_file_must_be_a_plain_name_in_the_directory(saved: Path, name: object) -> None:
    meta = _meta(saved)
    meta["tensor_file"] = name
    _write_meta(saved, meta)
    with pytest.raises(CheckpointError, match=r"expected model-<16 hex digits>\.safetensors"):
        checkpoint.load(saved)


@pytest.mark.parametrize("value", ["mlp", ["mlp"], None])
def test_model_entry_must_be_a_config_object(saved: Path, value: object) -> None:
    meta = _meta(saved)
    meta["model"] = value
    _write_meta(saved, meta)
    with pytest.raises(CheckpointError, match="'model' must be a model config object"):
        checkpoint.load(saved)


@pytest.mark.parametrize("value", ["abc", None, 1.5])
def test_format_version_must_be_an_integer(saved: Path, value: object) -> None:
    meta = _meta(saved)
    meta["format_version"] = value
    _write_meta(saved, meta)
    with pytest.raises(CheckpointError, match="format_version must be an integer"):
        checkpoint.load(saved)


def test_files_follow_the_umask(saved: Path) -> None:
    mask = os.umask(0)
    os.umask(mask)
    for path in saved.iterdir():
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path.name


def test_loading_a_file_path_says_it_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "weights").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        checkpoint.load(tmp_path / "weights")


# ---------------------------------------------------------------- hostile tensor files


def _rewrite_tensors(directory: Path, change: Any) -> None:
    """Rewrite a checkpoint's tensors through `change(tensors)`, with a matching hash."""
    meta = _meta(directory)
    path = directory / meta["tensor_file"]
    tensors = dict(load_safetensors(path.read_bytes()))
    change(tensors)
    blob = save_safetensors(tensors)
    path.write_bytes(blob)
    meta["tensor_sha256"] = hashlib.sha256(blob).hexdigest()
    _write_meta(directory, meta)


def _cast_all(dtype: torch.dtype) -> Any:
    def change(tensors: dict[str, torch.Tensor]) -> None:
        for key, tensor in tensors.items():
            if tensor.is_floating_point():
                tensors[key] = tensor.to(dtype)

    return change


def test_float64_weights_load_as_float64(saved: Path) -> None:
    original = {k: v.clone() for k, v in checkpoint.load(saved)[0].state_dict().items()}
    _rewrite_tensors(saved, _cast_all(torch.float64))
    model, _ = checkpoint.load(saved)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, original[key].to(tensor.dtype)), key
    x = _inputs((4, 8), dtype=torch.float64)
    assert model(x).dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_are_widened_to_float32(saved: Path, dtype: torch.dtype) -> None:
    _rewrite_tensors(saved, _cast_all(dtype))
    stored = dict(load_safetensors((saved / _meta(saved)["tensor_file"]).read_bytes()))
    model, _ = checkpoint.load(saved)
    for key, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            assert tensor.dtype == torch.float32, key
            assert torch.equal(tensor, stored[key].float()), key
    assert model(_inputs((4, 8))).dtype == torch.float32


def test_mixed_float_dtypes_are_refused(saved: Path) -> None:
    def change(tensors: dict[str, torch.Tensor]) -> None:
        tensors["1.weight"] = tensors["1.weight"].double()

    _rewrite_tensors(saved, change)
    with pytest.raises(CheckpointError, match="mix float dtypes") as info:
        checkpoint.load(saved)
    assert "F64 (1.weight)" in str(info.value) and "F32" in str(info.value)


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.uint8])
def test_a_weight_of_a_non_float_dtype_is_refused(saved: Path, dtype: torch.dtype) -> None:
    def change(tensors: dict[str, torch.Tensor]) -> None:
        tensors["1.weight"] = tensors["1.weight"].to(dtype)

    _rewrite_tensors(saved, change)
    with pytest.raises(CheckpointError, match=r"tensor 1\.weight has dtype"):
        checkpoint.load(saved)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("key", ["1.weight", "5.running_var", "7.bias"])
def test_non_finite_weights_are_refused(saved: Path, value: float, key: str) -> None:
    def change(tensors: dict[str, torch.Tensor]) -> None:
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[-1] = value

    _rewrite_tensors(saved, change)
    with pytest.raises(CheckpointError, match=f"tensor {re.escape(key)} holds") as info:
        checkpoint.load(saved)
    assert str(saved) in str(info.value)
    assert ("NaN" if math.isnan(value) else "infinite") in str(info.value)


@pytest.mark.parametrize("width", [10**9, 300_000])
def test_enormous_width_is_refused_from_the_header_before_building(
    saved: Path, width: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    built_on: list[str] = []
    real_build = checkpoint.build

    def watched_build(config: Any, **kwargs: Any) -> torch.nn.Module:
        built_on.append(torch.empty(0).device.type)
        return real_build(config, **kwargs)

    read: list[str] = []
    real_read = storage.read_bundle

    def watched_read(directory: Path, stem: str) -> Any:
        read.append(stem)
        return real_read(directory, stem)

    monkeypatch.setattr(checkpoint, "build", watched_build)
    monkeypatch.setattr(checkpoint, "read_bundle", watched_read)
    meta = _meta(saved)
    meta["model"]["widths"] = [width, 4]
    _write_meta(saved, meta)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(saved)
    assert f"1.weight (5, 8) != ({width}, 8)" in str(info.value)
    assert set(built_on) <= {"meta"}, built_on  # nothing of the real size was allocated
    assert read == []  # the tensor data was not even read


def _swap_tensor_file(directory: Path, make: Any) -> Path:
    path = directory / _meta(directory)["tensor_file"]
    path.unlink()
    make(path)
    return path


def test_a_tensor_file_linked_to_dev_zero_is_refused(saved: Path) -> None:
    path = _swap_tensor_file(saved, lambda p: os.symlink("/dev/zero", p))
    with pytest.raises(CheckpointError, match="not a regular file") as info:
        checkpoint.load(saved)
    assert str(path) in str(info.value)
    with pytest.raises(CheckpointError, match="not a regular file"):
        storage.read_bundle(saved, "model")


def test_a_tensor_file_that_is_a_fifo_is_refused_without_blocking(saved: Path) -> None:
    _swap_tensor_file(saved, lambda p: os.mkfifo(p))
    with pytest.raises(CheckpointError, match="not a regular file"):
        checkpoint.load(saved)


def test_a_tensor_file_that_is_a_directory_is_refused(saved: Path) -> None:
    _swap_tensor_file(saved, lambda p: p.mkdir())
    with pytest.raises(CheckpointError, match="not a regular file"):
        checkpoint.load(saved)


def test_a_tensor_file_larger_than_its_header_says_is_refused(saved: Path) -> None:
    meta = _meta(saved)
    path = saved / meta["tensor_file"]
    blob = path.read_bytes() + b"\0" * 4096
    path.write_bytes(blob)
    meta["tensor_sha256"] = hashlib.sha256(blob).hexdigest()
    _write_meta(saved, meta)
    with pytest.raises(CheckpointError, match="larger than its header says"):
        checkpoint.load(saved)
    with pytest.raises(CheckpointError, match="larger than its header says"):
        storage.read_bundle(saved, "model")


def test_a_truncated_tensor_file_is_refused(saved: Path) -> None:
    path = saved / _meta(saved)["tensor_file"]
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match="truncated") as info:
        checkpoint.load(saved)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "blob",
    [b"", b"\x05\x00", (2**62).to_bytes(8, "little") + b"{}", (4).to_bytes(8, "little") + b"[1]x"],
    ids=["empty", "short", "huge-header", "header-not-object"],
)
def test_tensor_files_with_broken_headers_are_refused(saved: Path, blob: bytes) -> None:
    meta = _meta(saved)
    (saved / meta["tensor_file"]).write_bytes(blob)
    meta["tensor_sha256"] = hashlib.sha256(blob).hexdigest()
    _write_meta(saved, meta)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        checkpoint.load(saved)


def test_read_header_describes_the_tensors_without_reading_them(saved: Path) -> None:
    header, meta = storage.read_header(saved, "model")
    tensors, meta_full = storage.read_bundle(saved, "model")
    assert meta == meta_full
    assert set(header) == set(tensors)
    for key, tensor in tensors.items():
        assert header[key].shape == tuple(tensor.shape), key
    assert header["1.weight"].dtype == "F32"


def test_oversized_metadata_is_refused_before_it_is_read(
    saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "_MAX_META_BYTES", 64)
    with pytest.raises(CheckpointError, match="at most 64 bytes") as info:
        checkpoint.load(saved)
    assert str(saved / "model.json") in str(info.value)
