"""Built-in classifiers as plain torch.nn modules, each carrying the config that rebuilds it."""

from toroid.models.build import BUILDERS, build
from toroid.models.config import attach_config, model_config
from toroid.models.layers import BinaryConv2d, BinaryLinear, Sign, is_binary
from toroid.models.lenet import lenet5
from toroid.models.mlp import mlp
from toroid.models.resnet import BasicBlock, ResNet, resnet
from toroid.models.vgg import vgg
from toroid.models.vit import EncoderBlock, PatchEmbedding, VisionTransformer, vit

__all__ = [
    "BUILDERS",
    "BasicBlock",
    "BinaryConv2d",
    "BinaryLinear",
    "EncoderBlock",
    "PatchEmbedding",
    "ResNet",
    "Sign",
    "VisionTransformer",
    "attach_config",
    "build",
    "is_binary",
    "lenet5",
    "mlp",
    "model_config",
    "resnet",
    "vgg",
    "vit",
]
