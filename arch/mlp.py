"""Perceptron and multi-layer perceptron.

Legend: b batch, f input features (an example flattened), n hidden units, k outputs.
"""

import flax.linen as nn
import jax

from arch.layers import Activation, activation_fn, flatten_examples


class Perceptron(nn.Module):
    """Single-layer perceptron: one linear map from the inputs to the outputs, no hidden layer."""

    num_outputs: int = 1
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, inputs: jax.Array, *, train: bool = False) -> jax.Array:
        x = flatten_examples(inputs)  # [b, f]
        # y = W x + b: a linear decision boundary, whatever loss it is trained with
        return nn.Dense(
            self.num_outputs, dtype=self.dtype, param_dtype=self.param_dtype, name="head"
        )(x)


class MLP(nn.Module):
    """Multi-layer perceptron: hidden layers of configurable width and activation, with dropout."""

    num_outputs: int = 10
    hidden_sizes: tuple[int, ...] = (128,)
    activation: Activation = "relu"
    dropout_rate: float = 0.0
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, inputs: jax.Array, *, train: bool = False) -> jax.Array:
        act = activation_fn(self.activation)
        x = flatten_examples(inputs)  # [b, f]
        for i, width in enumerate(self.hidden_sizes):
            # h_i = act(W_i h_{i-1} + b_i)
            x = nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype, name=f"hidden_{i}")(
                x
            )
            x = act(x)  # [b, n_i]
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(
            self.num_outputs, dtype=self.dtype, param_dtype=self.param_dtype, name="head"
        )(x)
