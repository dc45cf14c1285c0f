"""Networks used to reproduce the PDB weight-compression experiments (Flax NNX).

* :class:`FCNN` -- the fully connected MNIST network 784-512-512-350-10 (ReLU
  hidden layers, logits out). The experiments compress its three hidden kernels,
  listed by :meth:`FCNN.hidden_kernel_paths`.
* :class:`VGG16` and :class:`ResNet18` -- CIFAR-style convolutional networks
  (32x32 NHWC input, 3x3 convolutions, BatchNorm) whose channel counts are scaled
  by ``width`` so that small versions can be trained on a CPU; ``width=1.0`` is
  the usual full-size network.

All kernels are Glorot-uniform initialised and all biases start at zero (the
Keras defaults of the reference recipe). Models return logits; the softmax lives
in the loss. BatchNorm switches between batch statistics and running averages
with ``model.train()`` / ``model.eval()``.

Parameter paths are tuples as produced by ``nnx.to_flat_state(nnx.state(model))``,
e.g. ``('layers', 0, 'kernel')``; :func:`kernel_paths` lists those of every
kernel of a model.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Path = tuple[str | int, ...]

_KERNEL_INIT = nnx.initializers.glorot_uniform()
_BIAS_INIT = nnx.initializers.zeros_init()
# PyTorch-style CIFAR BatchNorm: running-average momentum 0.9, epsilon 1e-5.
_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5

VGG16_PLAN: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)
RESNET18_BLOCKS: tuple[int, ...] = (2, 2, 2, 2)
RESNET18_CHANNELS: tuple[int, ...] = (64, 128, 256, 512)


def scaled(channels: int, width: float) -> int:
    """Channel count ``channels * width`` rounded to the nearest integer, at least 1."""
    return max(1, int(round(channels * width)))


def kernel_paths(model: nnx.Module) -> list[Path]:
    """Paths of every ``kernel`` parameter of ``model`` (dense and convolutional), sorted."""
    return [path for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param)) if path[-1] == "kernel"]


def _dense(rngs: nnx.Rngs, din: int, dout: int) -> nnx.Linear:
    return nnx.Linear(din, dout, kernel_init=_KERNEL_INIT, bias_init=_BIAS_INIT, rngs=rngs)


def _conv(rngs: nnx.Rngs, din: int, dout: int, kernel: int = 3, stride: int = 1) -> nnx.Conv:
    # Followed by BatchNorm, so no bias.
    return nnx.Conv(
        din, dout, (kernel, kernel), strides=stride, padding="SAME", use_bias=False,
        kernel_init=_KERNEL_INIT, rngs=rngs,
    )


def _bn(rngs: nnx.Rngs, features: int) -> nnx.BatchNorm:
    return nnx.BatchNorm(features, momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, rngs=rngs)


class FCNN(nnx.Module):
    """Fully connected ReLU network; default sizes 784-512-512-350-10.

    ``sizes`` lists the input dimension, the hidden widths and the number of
    classes. Layer ``i`` is ``self.layers[i]`` (an ``nnx.Linear`` whose kernel has
    shape ``(sizes[i], sizes[i + 1])``); inputs of any shape ``(batch, ...)`` are
    flattened.
    """

    def __init__(self, rngs: nnx.Rngs, sizes: Sequence[int] = (784, 512, 512, 350, 10)) -> None:
        if len(sizes) < 2:
            raise ValueError(f"sizes needs at least an input and an output size, got {sizes!r}")
        self.sizes = tuple(int(s) for s in sizes)
        self.layers = nnx.List(
            [_dense(rngs, din, dout) for din, dout in zip(self.sizes[:-1], self.sizes[1:])]
        )

    def hidden_kernel_paths(self) -> list[Path]:
        """State paths of the hidden-layer kernels (all but the output layer), in order."""
        return [("layers", i, "kernel") for i in range(len(self.layers) - 1)]

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for layer in self.layers[:-1]:
            x = nnx.relu(layer(x))
        return self.layers[-1](x)


class VGG16(nnx.Module):
    """CIFAR-style VGG16 with BatchNorm.

    Thirteen 3x3 conv-BN-ReLU layers on the plan 64,64,M,128,128,M,256x3,M,512x3,M,
    512x3,M (channels scaled by ``width``; ``M`` = 2x2 max-pool), which takes a
    32x32 input to 1x1, then the classifier Dense(c, c)-ReLU-Dense(c, num_classes)
    with ``c = scaled(512, width)``. ``self.convs[i]``/``self.norms[i]`` is the
    ``i``-th conv layer; ``self.classifier[0]``/``[1]`` are the dense layers.
    """

    def __init__(
        self, rngs: nnx.Rngs, num_classes: int = 10, width: float = 1.0, in_channels: int = 1
    ) -> None:
        self.plan = tuple(v if v == "M" else scaled(v, width) for v in VGG16_PLAN)
        convs, norms = [], []
        channels = in_channels
        for v in self.plan:
            if v != "M":
                convs.append(_conv(rngs, channels, v))
                norms.append(_bn(rngs, v))
                channels = v
        self.convs = nnx.List(convs)
        self.norms = nnx.List(norms)
        self.classifier = nnx.List([_dense(rngs, channels, channels), _dense(rngs, channels, num_classes)])

    def __call__(self, x: jax.Array) -> jax.Array:
        i = 0
        for v in self.plan:
            if v == "M":
                x = nnx.max_pool(x, (2, 2), strides=(2, 2))
            else:
                x = nnx.relu(self.norms[i](self.convs[i](x)))
                i += 1
        x = x.reshape(x.shape[0], -1)
        x = nnx.relu(self.classifier[0](x))
        return self.classifier[1](x)


class BasicBlock(nnx.Module):
    """ResNet basic block: two 3x3 conv-BN layers plus an identity or 1x1 conv-BN shortcut."""

    def __init__(self, rngs: nnx.Rngs, din: int, dout: int, stride: int) -> None:
        self.conv1 = _conv(rngs, din, dout, stride=stride)
        self.bn1 = _bn(rngs, dout)
        self.conv2 = _conv(rngs, dout, dout)
        self.bn2 = _bn(rngs, dout)
        projection = stride != 1 or din != dout
        self.shortcut = _conv(rngs, din, dout, kernel=1, stride=stride) if projection else None
        self.shortcut_bn = _bn(rngs, dout) if projection else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.shortcut is not None:
            x = self.shortcut_bn(self.shortcut(x))
        return nnx.relu(x + y)


class ResNet18(nnx.Module):
    """CIFAR-style ResNet18 with BatchNorm.

    A 3x3 stem conv (stride 1), four stages of two :class:`BasicBlock` each with
    64,128,256,512 channels scaled by ``width`` (strides 1,2,2,2), global average
    pooling and a Dense classifier ``self.fc``. ``self.blocks`` holds the eight
    blocks in order.
    """

    def __init__(
        self, rngs: nnx.Rngs, num_classes: int = 10, width: float = 1.0, in_channels: int = 1
    ) -> None:
        stem = scaled(RESNET18_CHANNELS[0], width)
        self.stem = _conv(rngs, in_channels, stem)
        self.stem_bn = _bn(rngs, stem)
        blocks = []
        channels = stem
        for stage, (n, c) in enumerate(zip(RESNET18_BLOCKS, RESNET18_CHANNELS)):
            dout = scaled(c, width)
            for b in range(n):
                stride = 2 if stage > 0 and b == 0 else 1
                blocks.append(BasicBlock(rngs, channels, dout, stride))
                channels = dout
        self.blocks = nnx.List(blocks)
        self.fc = _dense(rngs, channels, num_classes)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.stem_bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.fc(jnp.mean(x, axis=(1, 2)))
