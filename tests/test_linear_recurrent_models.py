"""Models on linear recurrences (LRU, minGRU, minLSTM, Mamba): the two scans agree in values and
gradients at length 4096, decoding step by step equals the full pass, the LRU is stable for any
parameters, minGRU / minLSTM follow their recurrences, and the registered models learn.

Legend: b batch, t time, d model width, n state width, v vocabulary.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_inputs

from arch import MODELS
from arch.errors import ConfigError
from arch.linear_mixers import LRU, MinGRU, MinLSTM
from arch.linear_rnn import LinearRecurrentLM
from arch.linear_scan import linear_scan, log_linear_scan, selective_scan
from train.loop import RunConfig, fit
from train.optim import OptimConfig
from train.tasks import Adding

MIXERS = ["lru", "mingru", "minlstm", "mamba"]
VOCAB, D, N = 11, 8, 4
SMALL = dict(vocab_size=VOCAB, num_outputs=VOCAB, features=D, state_size=N, num_layers=2)


def decoded_logits(model: LinearRecurrentLM, variables, tokens) -> jax.Array:
    """The logits [b, t, v] of feeding tokens [b, t] to decode_step one position at a time,
    from an empty cache."""

    def step(cache, token):
        logits, cache = model.apply(variables, cache, token, method=model.decode_step)
        return cache, logits

    return jax.lax.scan(step, model.init_cache(len(tokens)), tokens.T)[1].swapaxes(0, 1)


@pytest.mark.parametrize("mixer", MIXERS)
def test_sequential_and_parallel_scans_agree_at_length_4096(mixer):
    tokens = np.random.default_rng(0).integers(0, VOCAB, (1, 4096)).astype(np.int32)
    model = LinearRecurrentLM(**{**SMALL, "num_layers": 1}, mixer=mixer)
    variables = model.init(jax.random.key(0), tokens[:, :8])

    @jax.jit
    def value_and_grads(variables):
        loss = lambda v, scan: jnp.mean(model.clone(scan=scan).apply(v, tokens) ** 2)
        return {
            scan: jax.value_and_grad(loss)(variables, scan) for scan in ("sequential", "parallel")
        }

    results = value_and_grads(variables)
    (value, grads), (parallel_value, parallel_grads) = results["sequential"], results["parallel"]
    # float32 sums of 4096 terms in two different orders: relative agreement ~1e-5
    chex.assert_trees_all_close(parallel_value, value, rtol=1e-5)
    chex.assert_trees_all_close(parallel_grads, grads, rtol=2e-4, atol=2e-6)


@pytest.mark.parametrize("mixer", MIXERS)
def test_decode_step_equals_the_full_forward_pass(mixer):
    tokens = np.random.default_rng(1).integers(0, VOCAB, (2, 9)).astype(np.int32)
    model = LinearRecurrentLM(**SMALL, mixer=mixer)
    variables = model.init(jax.random.key(0), tokens)

    @jax.jit
    def both(variables):
        return decoded_logits(model, variables, tokens), model.apply(variables, tokens)

    stepped, full = both(variables)
    chex.assert_trees_all_close(stepped, full, rtol=1e-5, atol=1e-5)


def test_lru_eigenvalues_stay_inside_the_unit_circle_for_any_parameters():
    lru = LRU(D, state_size=64)
    variables = lru.init(jax.random.key(0), random_inputs(1, 3, D))
    noise = jax.tree.map(
        lambda p: np.random.default_rng(2).standard_normal(p.shape), variables["params"]
    )
    for scale in (0.0, 1.0, 10.0, 100.0):
        params = jax.tree.map(lambda p, e, s=scale: p + s * e, variables["params"], noise)
        params["nu_log"] = params["nu_log"] - scale  # toward exp(-exp(nu)) -> 1
        magnitudes = jnp.abs(lru.apply({"params": params}, method=lru.eigenvalues))
        assert float(magnitudes.max()) < 1.0
        assert bool(jnp.all(jnp.isfinite(magnitudes)))
    initial = jnp.abs(lru.apply(variables, method=lru.eigenvalues))
    assert float(initial.min()) >= 0.9 and float(initial.max()) <= 0.999  # the ring at init


@pytest.mark.parametrize("cls", [MinGRU, MinLSTM])
def test_min_rnns_follow_their_step_by_step_definition(cls):
    x = random_inputs(2, 7, D)
    layer = cls(D, hidden_size=N)
    variables = layer.init(jax.random.key(0), x)
    params = jax.tree.map(np.asarray, variables["params"])
    sigmoid = lambda v: 1 / (1 + np.exp(-v))
    h = np.zeros((2, N))
    outputs = []
    for t in range(7):
        gates = x[:, t] @ params["gates"]["kernel"] + params["gates"]["bias"]
        if cls is MinGRU:
            z, candidate = np.split(gates, 2, axis=-1)
            z = sigmoid(z)
            h = (1 - z) * h + z * candidate  # h_t = (1 - z_t) h_{t-1} + z_t h~_t
        else:
            f, i, candidate = np.split(gates, 3, axis=-1)
            f, i = sigmoid(f), sigmoid(i)
            h = f / (f + i) * h + i / (f + i) * candidate  # f' h_{t-1} + i' h~_t
        outputs.append(h @ params["output"]["kernel"] + params["output"]["bias"])
    np.testing.assert_allclose(
        layer.apply(variables, x), np.stack(outputs, 1), rtol=2e-5, atol=2e-6
    )


def test_unknown_mixer_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown mixer 'mamba2'"):
        LinearRecurrentLM(**SMALL, mixer="mamba2").init(jax.random.key(0), np.zeros((1, 3), int))


@pytest.mark.parametrize("mixer", ["mingru", "minlstm"])  # the LRU learns it slower: issue 5
def test_the_classifier_learns_the_adding_problem(mixer):
    """Length 50: predicting the mean scores MSE 1/6; a model that adds gets far below."""
    model = MODELS["linear_rnn"](mixer=mixer, features=32, state_size=32, num_layers=1)
    task = Adding(length=50, batch_size=32, num_eval=256)
    run = RunConfig.quiet(400)
    result = fit(model, task, OptimConfig(name="adam", lr=3e-3), run)
    assert result.summary["final"]["test"]["mse"] < 0.03


def test_hand_computed_parameter_count_of_the_default_language_model():
    """d 64, n 64, f 128, 2 layers, vocabulary 256, LRU mixer (its gamma trained: n more per
    layer than the tied form's 116,608)."""
    d, n, f, v = 64, 64, 128, 256
    lru = 3 * n + 2 * d * n + 2 * n * d + d  # nu, theta, gamma; B re / im; C re / im; D
    block = lru + 2 * 2 * d + 2 * (d * f + f) + (f * d + d)  # + 2 LayerNorms + gated MLP
    expected = v * d + 2 * block + 2 * d + (d * v + v)  # embedding, blocks, norm, head
    model = MODELS["linear_rnn_lm"]()
    shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 4), np.int32))
    assert sum(leaf.size for leaf in jax.tree.leaves(shapes)) == expected == 116_736
    tied = jax.eval_shape(
        model.clone(normalisation="tied").init, jax.random.key(0), np.zeros((1, 4), np.int32)
    )
    assert sum(leaf.size for leaf in jax.tree.leaves(tied)) == expected - 2 * n == 116_608


@pytest.mark.parametrize("mixer", MIXERS)
def test_every_parameter_follows_param_dtype(mixer):
    model = LinearRecurrentLM(**SMALL, mixer=mixer, param_dtype="bfloat16")
    shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 4), np.int32))
    assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype("bfloat16")}


def test_log_space_scan_equals_the_plain_scan_on_positive_inputs():
    rng = np.random.default_rng(3)
    a = rng.uniform(0.5, 1.0, (2, 4096, 4)).astype(np.float32)
    b = rng.uniform(0.01, 1.0, (2, 4096, 4)).astype(np.float32)
    plain = jax.jit(linear_scan)(a, b)
    logged = jax.jit(log_linear_scan)(np.log(a), np.log(b))
    # the log form cancels two terms of size |A_t| = |sum log a| up to ~1.2e3: its relative
    # error grows like |A_t| * eps (6e-8), 3e-4 measured at t ~ 3500; the plain scan's is ~1e-6
    np.testing.assert_allclose(logged, plain, rtol=1e-3)


@pytest.mark.parametrize("mixer", ["mingru", "minlstm"])
def test_log_space_models_agree_across_scans_and_decoding(mixer):
    tokens = np.random.default_rng(4).integers(0, VOCAB, (2, 300)).astype(np.int32)
    model = LinearRecurrentLM(**SMALL, mixer=mixer, log_space=True)
    variables = model.init(jax.random.key(0), tokens[:, :4])

    @jax.jit
    def outputs(variables):
        stepped = decoded_logits(model, variables, tokens)
        parallel = model.clone(scan="parallel").apply(variables, tokens)
        return model.apply(variables, tokens), parallel, stepped

    sequential, parallel, stepped = outputs(variables)
    chex.assert_trees_all_close(parallel, sequential, rtol=1e-3, atol=1e-3)  # see above
    chex.assert_trees_all_close(stepped, sequential, rtol=1e-5, atol=1e-5)


def test_min_gru_log_space_candidate_is_positive_g():
    """g(v) = v + 0.5 for v >= 0, sigmoid(v) below: h~ > 0, so every state stays positive."""
    x = random_inputs(2, 7, D)
    layer = MinGRU(D, hidden_size=N, log_space=True)
    variables = layer.init(jax.random.key(0), x)
    params = jax.tree.map(np.asarray, variables["params"])
    gates = x @ params["gates"]["kernel"] + params["gates"]["bias"]
    z, candidate = np.split(gates, 2, axis=-1)
    g = np.where(candidate >= 0, candidate + 0.5, 1 / (1 + np.exp(-candidate)))
    z = 1 / (1 + np.exp(-z))
    a, b = layer.apply(variables, x, method=layer.coefficients)
    np.testing.assert_allclose(a, 1 - z, rtol=1e-5)
    np.testing.assert_allclose(b, z * g, rtol=1e-5)


def test_mamba_expand_sets_its_channels_and_decoding_follows():
    tokens = np.random.default_rng(5).integers(0, VOCAB, (2, 6)).astype(np.int32)
    model = LinearRecurrentLM(**SMALL, mixer="mamba", expand=3)
    variables = model.init(jax.random.key(0), tokens)
    assert variables["params"]["blocks_0"]["mix"]["conv"].shape == (4, 3 * D)  # [w, e]
    window, h = model.init_cache(2)[0]
    assert window.shape == (2, 3, 3 * D) and h.shape == (2, 3 * D, N)
    logits, _ = model.apply(variables, model.init_cache(2), tokens[:, 0], method=model.decode_step)
    chex.assert_trees_all_close(logits, model.apply(variables, tokens[:, :1])[:, 0], atol=1e-5)


def selective_scan_inputs(time: int, batch: int = 2, e: int = 6, n: int = 4) -> tuple:
    """delta [b, t, e] (positive), A [e, n] (negative), x [b, t, e], B, C [b, t, n]."""
    rng = np.random.default_rng(6)
    normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    delta = np.log1p(np.exp(normal(batch, time, e))) * 0.1  # softplus, as the layer's steps
    a = -np.broadcast_to(np.arange(1.0, n + 1, dtype=np.float32), (e, n))
    return delta, a, normal(batch, time, e), normal(batch, time, n), normal(batch, time, n)


@pytest.mark.parametrize("time", [37, 64, 5])  # part of a chunk over; whole chunks; < 1 chunk
def test_the_recomputed_selective_scan_equals_storing_every_state(time):
    inputs = selective_scan_inputs(time)
    weights = np.random.default_rng(7).standard_normal(inputs[2].shape).astype(np.float32)

    def value_and_grads(chunk):
        loss = lambda *v: (selective_scan(*v, method="sequential", chunk=chunk) * weights).sum()
        out = selective_scan(*inputs, method="sequential", chunk=chunk)
        return out, jax.grad(loss, argnums=(0, 1, 2, 3, 4))(*inputs)

    (out, grads), (stored_out, stored_grads) = value_and_grads(16), value_and_grads(None)
    chex.assert_shape(out, inputs[2].shape)
    chex.assert_trees_all_equal(out, stored_out)  # the same steps in the same order
    # A's gradient sums over the steps chunk by chunk: float32 rounding apart, the same
    chex.assert_trees_all_equal(grads[:1] + grads[2:], stored_grads[:1] + stored_grads[2:])
    chex.assert_trees_all_close(grads[1], stored_grads[1], rtol=1e-6, atol=1e-6)


def test_recomputing_the_selective_scan_keeps_a_fraction_of_the_memory():
    inputs = selective_scan_inputs(1024, batch=4, e=64, n=16)

    def temporaries(chunk):
        loss = lambda *v: selective_scan(*v, method="sequential", chunk=chunk).sum()
        compiled = jax.jit(jax.grad(loss, argnums=(0, 2))).lower(*inputs).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    # storing keeps the [b, e, n] state of all 1024 steps (16 MiB in float32); 32-step chunks
    # keep 32 chunk starts plus one chunk's states while it is redone
    stored, recomputed = temporaries(None), temporaries(32)
    assert stored >= 4 * 64 * 16 * 4 * 1024
    assert recomputed < stored / 4
