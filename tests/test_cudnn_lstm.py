"""cuDNN's fused LSTM (arch/cudnn_lstm.py): our weights packed into its layout compute our LSTM
(checked on any backend through JAX's reference for that layout), when the RNN layer takes
the fast path, and the kernel itself against the scan where a GPU is present."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arch.cudnn_lstm import cudnn_lstm, use_cudnn
from arch.errors import ConfigError
from arch.rnn_cells import GRUCell, LSTMCell
from arch.rnn_layer import RNN

GPU = jax.default_backend() == "gpu"
B, T, F, N = 3, 11, 5, 7


def setup(fast_path: str = "scan"):
    layer = RNN(LSTMCell(N, parent=None), fast_path=fast_path)
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], (B, T, F))
    state = (jax.random.normal(keys[1], (B, N)), jax.random.normal(keys[2], (B, N)))
    params = layer.init(keys[3], x)["params"]
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(keys[3], p.shape), params)
    return layer, params, x, state


def test_packed_weights_through_the_reference_equal_our_scan_values_and_gradients():
    layer, params, x, state = setup()
    weights = params["cell"]

    def ours(weights, x, state):
        return layer.apply({"params": {"cell": weights}}, x, initial_state=state)

    def packed(weights, x, state):
        return cudnn_lstm(weights, state, x, reference=True)

    for a, b in zip(
        jax.tree.leaves(ours(weights, x, state)),
        jax.tree.leaves(packed(weights, x, state)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    def loss(run):
        def value(weights, x, state):
            outputs, (c, h) = run(weights, x, state)
            return (outputs * jnp.arange(N)).sum() + (c * h).sum()

        return jax.grad(value, argnums=(0, 1, 2))(weights, x, state)

    for a, b in zip(jax.tree.leaves(loss(ours)), jax.tree.leaves(loss(packed)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_auto_takes_the_fast_path_only_where_it_applies():
    lstm, gru, x = LSTMCell(N, parent=None), GRUCell(N, parent=None), jnp.zeros((B, T, F))
    assert not use_cudnn("scan", lstm, x, None, False)
    assert use_cudnn("auto", lstm, x, None, False) == GPU
    assert not use_cudnn("auto", gru, x, None, False)
    assert not use_cudnn("auto", lstm, x, jnp.ones((B, T)), False)
    assert not use_cudnn("auto", lstm, x, None, True)
    assert not use_cudnn("auto", lstm, x.astype(jnp.bfloat16), None, False)


def test_forcing_cudnn_where_it_cannot_run_names_every_obstacle():
    gru, x = GRUCell(N, parent=None), jnp.zeros((B, T, F))
    with pytest.raises(ConfigError, match=r"runs LSTM cells only \(got GRUCell\).*padding mask"):
        use_cudnn("cudnn", gru, x, jnp.ones((B, T)), False)
    if not GPU:
        with pytest.raises(ConfigError, match="needs an NVIDIA GPU"):
            use_cudnn("cudnn", LSTMCell(N, parent=None), x, None, False)
    with pytest.raises(ConfigError, match="unknown RNN fast_path 'cuda'"):
        use_cudnn("cuda", gru, x, None, False)


def test_on_cpu_auto_runs_the_scan():
    layer, params, x, state = setup("auto")
    jaxpr = str(jax.make_jaxpr(lambda p: layer.apply({"params": p}, x))(params))
    assert ("rnn_fwd" in jaxpr) == GPU and ("scan" in jaxpr) != GPU


@pytest.mark.skipif(not GPU, reason="cuDNN's LSTM needs an NVIDIA GPU")
def test_cudnn_kernel_equals_the_scan_lstm_values_and_gradients():
    scan, params, x, state = setup("scan")
    fast = RNN(LSTMCell(N, parent=None), fast_path="cudnn")

    def run(layer):
        def loss(params, x, state):
            outputs, (c, h) = layer.apply({"params": params}, x, initial_state=state)
            return (outputs * jnp.arange(N)).sum() + (c * h).sum(), outputs

        return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(params, x, state)

    for a, b in zip(jax.tree.leaves(run(scan)), jax.tree.leaves(run(fast)), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4)  # cuDNN may use TF32
