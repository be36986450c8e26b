"""Vision Transformer (Dosovitskiy et al. 2021): an image read as a sequence of patches.

Legend: b batch, y / x image rows / columns, c channels, p patch size, n patches
(y/p * x/p), d model width.
"""

import flax.linen as nn
import jax

from arch.errors import ConfigError
from arch.transformer import TransformerClassifier


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """images [b, y, x, c] (or [b, y, x]) -> non-overlapping patches [b, n, p*p*c], row-major."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ConfigError(
            f"ViT expects images [batch, height, width, channels], got {images.shape}"
        )
    batch, height, width, channels = images.shape
    p = patch_size
    if height % p or width % p:
        raise ConfigError(f"image {height}x{width} is not divisible into {p}x{p} patches")
    patches = images.reshape(batch, height // p, p, width // p, p, channels)
    patches = patches.transpose(0, 1, 3, 2, 4, 5)  # [b, y/p, x/p, p, p, c]
    return patches.reshape(batch, (height // p) * (width // p), p * p * channels)  # [b, n, ppc]


class ViT(TransformerClassifier):
    """Vision Transformer: p x p patches -> linear patch embedding -> [CLS] token + learned
    positions -> Transformer encoder -> the [CLS] encoding -> class logits."""

    patch_size: int = 2
    """2: an 8x8 digit becomes 16 patches of 4 pixels."""
    max_len: int = 64

    @nn.compact
    def __call__(self, inputs: jax.Array, *, train: bool = False) -> jax.Array:
        """images [b, y, x, c] -> logits [b, num_outputs]."""
        # pixels are intensities, never token ids, whatever their dtype (e.g. uint8)
        patches = patchify(inputs, self.patch_size).astype(self.dtype)  # [b, n, p*p*c]
        return self.classify(self.embed(patches, name="patch_embedding"), None, train)
