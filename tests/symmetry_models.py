"""Tiny float64 models for the symmetry tests: the built-in ones and models the tests
define themselves, every BatchNorm with random running statistics and affine parameters
(never the init values 0/1, so that a wrong absorption or compensation shows)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from toroid.models import Sign, lenet5, mlp, resnet, vgg
from toroid.symmetry import SymmetrySpec, spec_for, symmetry_spec


@contextmanager
def one_thread() -> Iterator[None]:
    """Tiny float64 models run fastest on one thread, and far faster than on two threads
    fighting another process for two cores; the previous setting is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def randomize_batchnorms_(model: nn.Module, seed: int) -> nn.Module:
    """Random running mean/var and gamma/beta for every BatchNorm (gamma mostly positive,
    some negative, as after training)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.copy_(torch.randn(n, generator=gen, dtype=torch.float64))
                module.running_var.copy_(0.2 + 2 * torch.rand(n, generator=gen).double())
                if module.affine:
                    gamma = 0.5 + torch.rand(n, generator=gen, dtype=torch.float64)
                    flip = torch.rand(n, generator=gen) < 0.2
                    module.weight.copy_(torch.where(flip, -gamma, gamma))
                    module.bias.copy_(0.5 * torch.randn(n, generator=gen, dtype=torch.float64))
    return model


def prepare(model: nn.Module, seed: int) -> nn.Module:
    model = model.double().eval()
    return randomize_batchnorms_(model, seed)


def seeded(builder: Callable[[], nn.Module], seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = builder()
    return prepare(model, seed + 1000)


# ---------------------------------------------------------------- test-defined models


class OddMLP(nn.Module):
    """Odd widths 7, 5, 3; biases in front of BatchNorm (folded into the running mean), a
    layer without BatchNorm, and a Dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 7)
        self.bn1 = nn.BatchNorm1d(7, eps=0.05)
        self.fc2 = nn.Linear(7, 5)
        self.drop = nn.Dropout(0.3)
        self.fc3 = nn.Linear(5, 3)
        self.bn3 = nn.BatchNorm1d(3)
        self.out = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.fc1(x)))
        x = self.drop(torch.relu(self.fc2(x)))
        x = self.bn3(self.fc3(x)).relu()
        out: torch.Tensor = self.out(x)
        return out


class Block(nn.Module):
    """A basic residual block written with functional forms; `projection` adds a 1x1 conv +
    BN shortcut (and a stride)."""

    def __init__(self, cin: int, cout: int, *, projection: bool, plain_relu: bool) -> None:
        super().__init__()
        stride = 2 if projection else 1
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, eps=0.02)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if projection
            else None
        )
        self.plain_relu = plain_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.shortcut is None else self.shortcut(x)
        if self.plain_relu:
            return torch.relu(out + skip)
        return F.relu(skip + out)


class TinyResNet(nn.Module):
    """stem -> 3 identity blocks (one residual stream of 4 channels across stem and three
    blocks) -> projection block -> identity block (a second stream of 6 channels), then
    avg-pool and `x.view(x.size(0), -1)` into the classifier (block 4 per channel)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.blocks = nn.Sequential(
            Block(4, 4, projection=False, plain_relu=True),
            Block(4, 4, projection=False, plain_relu=False),
            Block(4, 4, projection=False, plain_relu=True),
            Block(4, 6, projection=True, plain_relu=False),
            Block(6, 6, projection=False, plain_relu=True),
        )
        self.fc = nn.Linear(6 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = self.blocks(x)
        x = F.avg_pool2d(x, 2)
        x = x.view(x.size(0), -1)
        out: torch.Tensor = self.fc(x)
        return out


class ConvFlatten(nn.Module):
    """conv -> BN -> ReLU -> maxpool -> dropout -> conv -> BN -> ReLU -> adaptive avg-pool to
    3x3 -> torch.flatten -> Linear (each channel owns 9 input columns) -> ReLU -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(3)
        self.pool = nn.MaxPool2d(2)
        self.drop = nn.Dropout2d(0.2)
        self.conv2 = nn.Conv2d(3, 5, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(5)
        self.avg = nn.AdaptiveAvgPool2d(3)
        self.fc1 = nn.Linear(5 * 9, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.pool(torch.relu(self.bn1(self.conv1(x)))))
        x = self.avg(F.relu(self.bn2(self.conv2(x))))
        x = torch.flatten(x, 1)
        out: torch.Tensor = self.fc2(F.relu(self.fc1(x)))
        return out


class Conv1dNet(nn.Module):
    """Conv1d on (1, 40) inputs: conv -> BN -> ReLU -> maxpool -> conv (bias, no BN) ->
    ReLU -> avgpool -> Flatten -> Linear (block 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 4, 5, bias=False),
            nn.BatchNorm1d(4),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(4, 6, 3),
            nn.ReLU(),
            nn.AvgPool1d(2),
            nn.Flatten(),
        )
        self.fc = nn.Linear(6 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.features(x))
        return out


def leaky_hardtanh() -> nn.Module:
    """LeakyReLU (homogeneous), Hardtanh after BatchNorm and without it (odd)."""
    return nn.Sequential(
        nn.Linear(6, 7),
        nn.LeakyReLU(0.1),
        nn.Linear(7, 5, bias=False),
        nn.BatchNorm1d(5),
        nn.Hardtanh(),
        nn.Linear(5, 4),
        nn.Hardtanh(-2.0, 2.0),
        nn.Linear(4, 3),
    )


def sign_net() -> nn.Module:
    """toroid's Sign activation after BatchNorm and without it."""
    return nn.Sequential(
        nn.Linear(6, 8, bias=False),
        nn.BatchNorm1d(8),
        Sign(),
        nn.Linear(8, 5),
        Sign(),
        nn.Linear(5, 3),
    )


class SignFunctional(nn.Module):
    """torch.sign (the functional form of the sign activation) after BatchNorm and without."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8, bias=False)
        self.bn1 = nn.BatchNorm1d(8)
        self.fc2 = nn.Linear(8, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.sign(self.bn1(self.fc1(x)))
        x = self.fc2(x).sign()
        out: torch.Tensor = self.out(x)
        return out


class ResidualMLP(nn.Module):
    """x + relu(W x + b): one Linear both reads and writes the residual stream."""

    def __init__(self) -> None:
        super().__init__()
        self.l0 = nn.Linear(6, 5)
        self.l1 = nn.Linear(5, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.l0(x))
        x = x + torch.relu(self.l1(x))
        out: torch.Tensor = self.out(x)
        return out


# ---------------------------------------------------------------- the catalogue


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    builtin: bool = True
    sign: bool = False  # piecewise-constant activations: compare outputs, not scales
    eval_shape: tuple[int, ...] | None = None  # input shape for function checks

    def model(self, seed: int = 0) -> nn.Module:
        """The seeded model, built once per session: tests must not modify it in place
        (the symmetry functions all return copies)."""
        key = (self.name, seed)
        if key not in _MODELS:
            _MODELS[key] = seeded(self.build, seed)
        return _MODELS[key]

    def inputs(self, n: int = 16, seed: int = 123) -> torch.Tensor:
        """Random inputs for function checks (small images where the model allows)."""
        gen = torch.Generator().manual_seed(seed)
        shape = self.eval_shape or self.input_shape
        return torch.randn(n, *shape, generator=gen, dtype=torch.float64)

    def spec(self, model: nn.Module | None = None) -> SymmetrySpec:
        """The spec of this architecture (derived once per session)."""
        if self.name not in _SPECS:
            model = model if model is not None else self.model()
            if self.builtin:
                _SPECS[self.name] = spec_for(model)
            else:
                gen = torch.Generator().manual_seed(7)
                x = torch.randn(2, *self.input_shape, generator=gen, dtype=torch.float64)
                _SPECS[self.name] = symmetry_spec(model, x)
        return _SPECS[self.name]


_MODELS: dict[tuple[str, int], nn.Module] = {}
_SPECS: dict[str, SymmetrySpec] = {}


CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case("mlp_bn", lambda: mlp(12, [9, 7], 4), (12,)),
        Case("mlp_plain", lambda: mlp(12, [9, 7], 4, batchnorm=False), (12,)),
        Case("tanh_bn", lambda: mlp(12, [9, 7], 4, activation="tanh"), (12,)),
        Case("tanh_plain", lambda: mlp(12, [9, 7], 4, batchnorm=False, activation="tanh"), (12,)),
        Case("lenet5", lambda: lenet5(), (1, 28, 28)),
        Case("vgg11", lambda: vgg(11, width=0.125), (3, 32, 32), eval_shape=(3, 8, 8)),
        Case("resnet20", lambda: resnet(20), (3, 32, 32), eval_shape=(3, 8, 8)),
        Case("odd_mlp", OddMLP, (6,), builtin=False),
        Case("tiny_resnet", TinyResNet, (3, 8, 8), builtin=False),
        Case("conv_flatten", ConvFlatten, (2, 12, 12), builtin=False),
        Case("conv1d", Conv1dNet, (1, 40), builtin=False),
        Case("leaky_hardtanh", leaky_hardtanh, (6,), builtin=False),
        Case("sign_fn_net", SignFunctional, (6,), builtin=False),
        Case("sign_net", sign_net, (6,), builtin=False, sign=True),
        Case("residual_mlp", ResidualMLP, (6,), builtin=False),
    )
}

# the cases every generic test runs on (sign_net and residual_mlp hit src bugs, see the
# xfail tests in test_symmetry_models.py)
CONTINUOUS = [name for name, c in CASES.items() if name not in ("sign_net", "residual_mlp")]


def assert_states_close(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], *, atol: float = 1e-8
) -> None:
    """Tensor by tensor: same keys, same shapes, max abs difference within `atol`."""
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].shape == b[key].shape, key
        if a[key].is_floating_point():
            diff = float((a[key] - b[key]).abs().max()) if a[key].numel() else 0.0
            assert diff <= atol, f"{key}: max abs difference {diff:.3e} > {atol:.0e}"
        else:
            assert torch.equal(a[key], b[key]), key


def max_state_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(
        float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point() and a[k].numel()
    )


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    out: torch.Tensor = model(x)
    return out


def assert_undoes_planted_permutations(
    permutations: dict[str, torch.Tensor], planted: dict[str, torch.Tensor], seed: int
) -> None:
    """The permutations an alignment found are the inverses of the planted ones, group by
    group (`seed` names the planted transform in the failure)."""
    for name, perm in planted.items():
        assert torch.equal(permutations[name], torch.argsort(perm)), (seed, name)


# ---------------------------------------------------------------- token models (attention)


class AttentionClassifier(nn.Module):
    """(batch, tokens, 5) -> [embed Linear 5 -> `width`, then ReLU when `embed_relu`] ->
    MultiheadAttention (`heads` heads) as self-attention -> [Linear `width` -> 7 when
    `mix`] -> activation -> mean over tokens (or the first token) -> Linear 3. Sequence-first
    attention (`batch_first=False`) gets (tokens, batch, channels) by a transpose and is
    pooled in that layout (`x.mean(dim=0)`, `x[0]`)."""

    def __init__(
        self,
        *,
        batch_first: bool = True,
        bias: bool = True,
        act: str = "relu",
        pool: str = "mean",
        heads: int = 3,
        width: int = 6,
        mix: bool = True,
        embed_relu: bool = False,
    ) -> None:
        super().__init__()
        self.batch_first, self.pool, self.embed_relu = batch_first, pool, embed_relu
        self.act: Callable[[torch.Tensor], torch.Tensor] = torch.relu if act == "relu" else F.gelu
        self.embed = nn.Linear(5, width)
        self.attn = nn.MultiheadAttention(width, heads, bias=bias, batch_first=batch_first)
        self.mix = nn.Linear(width, 7) if mix else None
        self.head = nn.Linear(7 if mix else width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        if self.embed_relu:
            x = torch.relu(x)
        if not self.batch_first:
            x = x.transpose(0, 1)
        x = self.attn(x, x, x, need_weights=False)[0]
        if self.mix is not None:
            x = self.mix(x)
        x = self.act(x)
        if self.pool == "mean":
            x = x.mean(dim=1 if self.batch_first else 0)
        elif self.batch_first:
            x = x[:, 0]
        else:
            x = x[0]
        out: torch.Tensor = self.head(x)
        return out


class TokenMLP(nn.Module):
    """(batch, tokens, 5) -> Linear 6 -> ReLU -> Linear 4 -> GELU -> mean over tokens ->
    Linear 3: Linear layers on token tensors, without attention."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(5, 6), nn.Linear(6, 4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.fc2(torch.relu(self.fc1(x))))
        out: torch.Tensor = self.out(torch.mean(x, 1))
        return out
