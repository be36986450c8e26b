"""Convolutional networks: a LeNet-style CNN, a small ResNet with BatchNorm, and a
single-shot grid detector in the style of YOLO.

Legend: b batch, y height, x width, c channels, k outputs, s grid cells per side.
"""

from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from arch.errors import ConfigError
from arch.layers import Activation, activation_fn

Padding = Literal["SAME", "VALID"]


def as_images(inputs: jax.Array, model: str) -> jax.Array:
    """[b, y, x] or [b, y, x, c] -> [b, y, x, c]; a clear error for anything else."""
    if inputs.ndim == 3:
        return inputs[..., None]  # [b, y, x, 1]
    if inputs.ndim != 4:
        raise ConfigError(
            f"{model} expects images shaped [batch, height, width] or [batch, height, width, "
            f"channels], got shape {tuple(inputs.shape)}; use an image task (e.g. digits)"
        )
    return inputs


class LeNet(nn.Module):
    """LeNet-style CNN: (convolution, activation, max-pool) blocks, then a dense head."""

    num_outputs: int = 10
    channels: tuple[int, ...] = (16, 32)
    kernel_size: int = 3
    stride: int = 1
    padding: Padding = "SAME"
    pool_size: int = 2
    dense_sizes: tuple[int, ...] = (64,)
    activation: Activation = "relu"
    dropout_rate: float = 0.0
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, inputs: jax.Array, *, train: bool = False) -> jax.Array:
        act = activation_fn(self.activation)
        x = as_images(inputs, "LeNet")  # [b, y, x, c]
        window = (self.pool_size, self.pool_size)
        for i, width in enumerate(self.channels):
            kernel = (self.kernel_size, self.kernel_size)
            x = nn.Conv(
                width,
                kernel,
                strides=self.stride,
                padding=self.padding,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"conv_{i}",
            )(x)
            x = act(x)
            x = nn.max_pool(x, window, strides=window, padding="SAME")  # [b, y/p, x/p, c_i]
        x = x.reshape(x.shape[0], -1)  # [b, y*x*c]
        for i, width in enumerate(self.dense_sizes):
            x = act(
                nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype, name=f"dense_{i}")(
                    x
                )
            )
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(
            self.num_outputs, dtype=self.dtype, param_dtype=self.param_dtype, name="head"
        )(x)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm; the input is added back (projected if shapes differ)."""

    channels: int
    stride: int
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        conv = lambda c, k, s, name: nn.Conv(
            c,
            (k, k),
            strides=s,
            padding="SAME",
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )
        # running statistics are kept in float32 whatever the compute dtype
        norm = lambda name: nn.BatchNorm(
            use_running_average=not train,
            momentum=0.9,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )
        residual = x
        y = nn.relu(norm("norm_0")(conv(self.channels, 3, self.stride, "conv_0")(x)))
        y = norm("norm_1")(conv(self.channels, 3, 1, "conv_1")(y))  # [b, y/s, x/s, c]
        if residual.shape != y.shape:
            residual = norm("norm_proj")(conv(self.channels, 1, self.stride, "conv_proj")(residual))
        return nn.relu(y + residual)  # out = relu(F(x) + x)


class ResNet(nn.Module):
    """Small ResNet: a stem convolution, stages of BatchNorm residual blocks, average pool, head."""

    num_outputs: int = 10
    stage_channels: tuple[int, ...] = (16, 32)
    blocks_per_stage: int = 1
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, inputs: jax.Array, *, train: bool = False) -> jax.Array:
        x = as_images(inputs, "ResNet")  # [b, y, x, c]
        x = nn.Conv(
            self.stage_channels[0],
            (3, 3),
            padding="SAME",
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="stem",
        )(x)
        x = nn.relu(
            nn.BatchNorm(
                use_running_average=not train,
                momentum=0.9,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="stem_norm",
            )(x)
        )
        for stage, width in enumerate(self.stage_channels):
            for block in range(self.blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                x = ResidualBlock(
                    channels=width,
                    stride=stride,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    name=f"stage_{stage}_block_{block}",
                )(x, train=train)
        x = jnp.mean(x, axis=(1, 2))  # [b, c]: global average pool
        return nn.Dense(
            self.num_outputs, dtype=self.dtype, param_dtype=self.param_dtype, name="head"
        )(x)


class Detector(nn.Module):
    """Single-shot grid detector (YOLO style): a CNN down to an s x s grid, one box per cell.

    Each (convolution, activation, max-pool) block halves the image, so an image of side n
    becomes a grid of side n / 2^len(channels) (48 -> 6 with the defaults: cells of 8 pixels).
    A 3x3 convolution on the grid mixes neighbouring cells (an object is larger than a cell);
    a 1x1 convolution then predicts, per cell, 5 + num_classes raw numbers: an objectness
    logit, four box numbers and the class logits. What they mean (sigmoid offsets of the box
    centre in the cell, square roots of its size relative to the image), the loss and the
    decoding with non-maximum suppression belong to the task (train/tasks/scenes.py).
    """

    num_classes: int = 4
    channels: tuple[int, ...] = (16, 32, 64)
    grid_channels: int = 64
    activation: Activation = "relu"
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, inputs: jax.Array, *, train: bool = False) -> jax.Array:
        act = activation_fn(self.activation)
        conv = lambda c, k, name: nn.Conv(
            c, (k, k), padding="SAME", dtype=self.dtype, param_dtype=self.param_dtype, name=name
        )
        x = as_images(inputs, "Detector")  # [b, y, x, c]
        for i, width in enumerate(self.channels):
            x = act(conv(width, 3, f"conv_{i}")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")  # [b, y/2, x/2, c_i]
        x = act(conv(self.grid_channels, 3, "grid_conv")(x))  # [b, s, s, c]
        # per cell: objectness logit, 4 box numbers, class logits
        return conv(5 + self.num_classes, 1, "head")(x)  # [b, s, s, 5 + k]
