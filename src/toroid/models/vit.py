"""A small Vision Transformer: patches -> tokens, pre-LayerNorm encoder blocks, a
LayerNorm and a linear head on the class token or the mean token."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from toroid.errors import InvalidArgumentError
from toroid.models.config import (
    attach_config,
    check_choice,
    check_positive,
    initialization_seed,
)

Pool = Literal["cls", "mean"]
POOLS: tuple[Pool, ...] = ("cls", "mean")
# Standard deviation of the initial position embedding and class token: small, but not
# zero, so that tokens and positions are told apart from the first step.
EMBEDDING_STD = 0.02


def _small_random(*shape: int) -> nn.Parameter:
    """Uniform values of standard deviation EMBEDDING_STD. Uniform, not normal: on the
    meta device (where studies and checkpoints build a model's skeleton) normal sampling
    first imports hundreds of torch modules, which takes seconds."""
    bound = EMBEDDING_STD * math.sqrt(3)
    return nn.Parameter(nn.init.uniform_(torch.empty(*shape), -bound, bound))


class PatchEmbedding(nn.Module):
    """Cuts (batch, C, H, W) images into non-overlapping patch x patch squares, flattens
    each to C * patch * patch values (channel-major, then rows, then columns), and maps it
    with one Linear: (batch, tokens, dim), tokens in row-major order of the patch grid."""

    def __init__(self, in_channels: int, image_size: int, patch: int, dim: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.grid = image_size // patch
        self.patch = patch
        self.linear = nn.Linear(in_channels * patch * patch, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, g, p = self.in_channels, self.grid, self.patch
        # Reshapes with constants only (-1 for the batch): torch.fx traces them as-is.
        patches = x.reshape(-1, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5)
        tokens: torch.Tensor = self.linear(patches.reshape(-1, g * g, c * p * p))
        return tokens


class EncoderBlock(nn.Module):
    """Pre-LayerNorm transformer block: x + attention(norm1(x)), then
    x + mlp(norm2(x)) with mlp = Linear -> GELU -> Linear."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, norm_eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        attended: torch.Tensor = self.attention(h, h, h, need_weights=False)[0]
        x = x + attended
        mixed: torch.Tensor = self.mlp(self.norm2(x))
        return x + mixed


class VisionTransformer(nn.Module):
    """Patch embedding, [class token], position embedding, `depth` encoder blocks, a final
    LayerNorm, then a Linear head on the class token (`pool='cls'`) or on the mean over
    tokens (`pool='mean'`)."""

    def __init__(
        self,
        *,
        in_channels: int,
        image_size: int,
        patch: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        pool: Pool,
        norm_eps: float,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.pool = pool
        self.embedding = PatchEmbedding(in_channels, image_size, patch, dim)
        tokens = (image_size // patch) ** 2 + (1 if pool == "cls" else 0)
        self.class_token = _small_random(1, 1, dim) if pool == "cls" else None
        self.position = _small_random(1, tokens, dim)
        self.blocks = nn.Sequential(
            *(EncoderBlock(dim, heads, mlp_dim, norm_eps) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embedding(x)
        if self.class_token is not None:
            x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.blocks(x + self.position)
        x = self.norm(x)
        pooled = x[:, 0] if self.pool == "cls" else x.mean(dim=1)
        logits: torch.Tensor = self.head(pooled)
        return logits


def _check_count(label: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{label} must be a positive integer, got {value!r}")


def vit(
    *,
    in_channels: int = 1,
    image_size: int = 28,
    num_classes: int = 10,
    patch: int = 7,
    dim: int = 64,
    depth: int = 2,
    heads: int = 4,
    mlp_dim: int = 128,
    pool: Pool = "cls",
    norm_eps: float = 1e-5,
    seed: int | None = None,
) -> VisionTransformer:
    """A Vision Transformer for square `image_size` x `image_size` images with
    `in_channels` channels, cut into (image_size / patch)^2 patch tokens of width `dim`;
    `depth` pre-LayerNorm blocks with `heads` attention heads and an MLP of width
    `mlp_dim`; `pool` 'cls' (a learned class token) or 'mean' (mean over tokens). No
    dropout: forwards are deterministic. The defaults (16 tokens of width 64, 2 blocks,
    ~68k parameters) suit 28x28 Fashion-MNIST on a CPU.

    `seed`: the initialization is drawn from it, leaving the global generator as it was;
    None (the default) draws from the global generator.
    """
    if seed is not None:
        with initialization_seed(seed):
            return vit(
                in_channels=in_channels,
                image_size=image_size,
                num_classes=num_classes,
                patch=patch,
                dim=dim,
                depth=depth,
                heads=heads,
                mlp_dim=mlp_dim,
                pool=pool,
                norm_eps=norm_eps,
            )
    for label, value in (
        ("in_channels", in_channels),
        ("image_size", image_size),
        ("num_classes", num_classes),
        ("patch", patch),
        ("dim", dim),
        ("depth", depth),
        ("heads", heads),
        ("mlp_dim", mlp_dim),
    ):
        _check_count(label, value)
    if image_size % patch:
        raise InvalidArgumentError(f"patch must divide image_size {image_size}, got patch={patch}")
    if dim % heads:
        raise InvalidArgumentError(f"heads must divide dim {dim}, got heads={heads}")
    check_choice("pool", pool, POOLS)
    if (
        isinstance(norm_eps, bool)
        or not isinstance(norm_eps, int | float)
        or not math.isfinite(norm_eps)
    ):
        raise InvalidArgumentError(f"norm_eps must be a positive number, got {norm_eps!r}")
    check_positive("norm_eps", norm_eps)
    model = VisionTransformer(
        in_channels=in_channels,
        image_size=image_size,
        patch=patch,
        dim=dim,
        depth=depth,
        heads=heads,
        mlp_dim=mlp_dim,
        pool=pool,
        norm_eps=float(norm_eps),
        num_classes=num_classes,
    )
    return attach_config(  # type: ignore[return-value]
        model,
        {
            "name": "vit",
            "in_channels": in_channels,
            "image_size": image_size,
            "num_classes": num_classes,
            "patch": patch,
            "dim": dim,
            "depth": depth,
            "heads": heads,
            "mlp_dim": mlp_dim,
            "pool": pool,
            "norm_eps": float(norm_eps),
        },
    )
