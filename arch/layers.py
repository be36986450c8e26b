"""Pieces shared by model families: the activation table."""

from collections.abc import Callable
from typing import Literal

import flax.linen as nn
import jax

Activation = Literal["sigmoid", "tanh", "relu", "gelu", "identity"]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "sigmoid": nn.sigmoid,
    "tanh": nn.tanh,
    "relu": nn.relu,
    "gelu": nn.gelu,
    "identity": lambda x: x,
}


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation function called `name`; a clear error for an unknown one."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def flatten_examples(x: jax.Array) -> jax.Array:
    """[b, ...] -> [b, features]: every trailing axis of an example becomes one feature axis."""
    if x.ndim < 2:
        raise ValueError(f"expected a batch of examples [batch, ...features], got shape {x.shape}")
    return x.reshape(x.shape[0], -1)  # [b, f]
