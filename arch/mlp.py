"""Perceptron and multi-layer perceptron.

Legend: b batch, f input features (an example flattened), n hidden units, k outputs.
"""

import flax.linen as nn
import jax

from arch.layers import Activation, activation_fn, dense, flatten_examples


class Perceptron(nn.Module):
    """Single-layer perceptron: one linear map from the inputs to the outputs, no hidden layer."""

    num_outputs: int = 1
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, inputs: jax.Array, *, train: bool = False) -> jax.Array:
        x = flatten_examples(inputs)  # [b, f]
        # y = W x + b: a linear decision boundary, whatever loss it is trained with
        head = dense(self.num_outputs, ("input", "classes"), self.dtype, self.param_dtype, "head")
        return head(x)


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
            # h_i = act(W_i h_{i-1} + b_i); Megatron pairs: even layers split their outputs
            # ("mlp"), odd ones their inputs, so a pair needs one reduction under tensor splits
            axes = ("input" if i == 0 else "hidden", "mlp") if i % 2 == 0 else ("mlp", "hidden")
            x = dense(width, axes, self.dtype, self.param_dtype, f"hidden_{i}")(x)
            x = act(x)  # [b, n_i]
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        inputs_axis = "input" if not self.hidden_sizes else "hidden"
        head = dense(
            self.num_outputs, (inputs_axis, "classes"), self.dtype, self.param_dtype, "head"
        )
        return head(x)
