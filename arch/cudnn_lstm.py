"""cuDNN's fused LSTM (`jax.experimental.rnn`): the RNN layer's fast path on NVIDIA GPUs.

cuDNN runs the whole sequence (forward, and backward through its own custom VJP) as one fused
kernel, which a `jax.lax.scan` of separate matrix products and gates cannot match. It holds the
weights as one flat vector in its own layout; `cudnn_weights` packs ours into it (our gate
order i, f, g, o is cuDNN's and PyTorch's; our one bias becomes b_ih, with b_hh = 0).
`jax.experimental.rnn.lstm_ref` is JAX's pure reference for the same layout, so the packing is
tested on any backend and the kernel itself where a GPU is present (tests/test_cudnn_lstm.py).

Legend: b batch, t time, f input features, n hidden size.
"""

from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax.experimental import rnn

from arch.errors import ConfigError

FastPath = Literal["auto", "scan", "cudnn"]
FAST_PATHS = ("auto", "scan", "cudnn")


def cudnn_weights(weights: dict[str, jax.Array]) -> jax.Array:
    """Our LSTM weights (input_kernel [f, 4n], recurrent_kernel [n, 4n], bias [4n]) as cuDNN's
    flat vector for one unidirectional layer: W_ih [4n, f], W_hh [4n, n], b_ih, b_hh [4n]."""
    bias = weights["bias"].astype(jnp.float32)
    return jnp.concatenate(
        [
            weights["input_kernel"].astype(jnp.float32).T.ravel(),
            weights["recurrent_kernel"].astype(jnp.float32).T.ravel(),
            bias,
            jnp.zeros_like(bias),
        ]
    )


def cudnn_lstm(
    weights: dict[str, jax.Array],
    state: tuple[jax.Array, jax.Array],
    inputs: jax.Array,
    *,
    reference: bool = False,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """inputs [b, t, f], state (C_0, h_0) [b, n] -> (outputs h [b, t, n], (C_t, h_t)), all
    float32, through cuDNN (`reference`: through `lstm_ref`, JAX's pure version of the same
    computation on the same packed weights, which runs on any backend)."""
    batch, time, features = inputs.shape
    hidden = weights["recurrent_kernel"].shape[0]
    c0, h0 = (s.astype(jnp.float32)[None] for s in state)  # [layers * directions = 1, b, n]
    flat = cudnn_weights(weights)
    lengths = jnp.full((batch,), time, jnp.int32)
    x = inputs.astype(jnp.float32)
    if reference:
        unpacked = rnn.unpack_lstm_weights(flat, features, hidden, 1, False)
        y, h_n, c_n = rnn.lstm_ref(x, h0, c0, *unpacked, lengths, features, hidden, 1, 0.0, False)
    else:
        y, h_n, c_n = rnn.lstm(x, h0, c0, flat, lengths, features, hidden, 1, 0.0, False)
    return y, (c_n[0], h_n[0])


def use_cudnn(fast_path: FastPath, cell: Any, inputs: jax.Array, mask: Any, reverse: bool) -> bool:
    """Whether the RNN layer runs cuDNN: "scan" never; "auto" when it can (a GPU, an LSTM cell
    computing in float32 with float32 inputs, no padding mask, forward direction); "cudnn"
    always, with an error naming what stands in the way."""
    if fast_path not in FAST_PATHS:
        raise ConfigError(f"unknown RNN fast_path {fast_path!r}; choose one of {FAST_PATHS}")
    if fast_path == "scan":
        return False
    obstacles = []
    if jax.default_backend() != "gpu":
        obstacles.append(f"it needs an NVIDIA GPU (backend is {jax.default_backend()!r})")
    if type(cell).__name__ != "LSTMCell":
        obstacles.append(f"it runs LSTM cells only (got {type(cell).__name__})")
    if getattr(cell, "dtype", "float32") != "float32" or inputs.dtype != jnp.float32:
        obstacles.append("it computes in float32 only")
    if mask is not None:
        obstacles.append("it takes no padding mask here")
    if reverse:
        obstacles.append("it runs forward only here")
    if fast_path == "cudnn" and obstacles:
        raise ConfigError("RNN fast_path='cudnn' cannot run: " + "; ".join(obstacles))
    return not obstacles
