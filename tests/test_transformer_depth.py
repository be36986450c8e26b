"""Deep-Transformer options (arch/transformer_layers.py): rematerialisation per block and
scan-over-layers compute the same function and gradients as the plain stack; the scanned
program does not grow with depth."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arch import MODELS
from arch.errors import ConfigError

SIZES = dict(features=32, num_heads=2, vocab_size=16, num_outputs=16, max_len=16)
TOKENS = jax.random.randint(jax.random.key(0), (2, 16), 0, 16)


def stack_layers(params: dict, layers: int) -> dict:
    """The plain stack's parameters (blocks_0, blocks_1, ...) in scan_layers' layout."""
    decoder = dict(params["decoder"])
    blocks = [decoder.pop(f"blocks_{i}") for i in range(layers)]
    decoder["layers"] = jax.tree.map(lambda *a: jnp.stack(a), *blocks)
    return {**params, "decoder": decoder}


def value_and_grad(model, params):
    loss = lambda p: (model.apply({"params": p}, TOKENS).astype(jnp.float32) ** 2).mean()
    return jax.value_and_grad(loss)(params)


@pytest.mark.parametrize(("remat", "scan"), [(True, False), (False, True), (True, True)])
def test_remat_and_scan_layers_compute_the_plain_stacks_values_and_gradients(remat, scan):
    plain = MODELS["gpt"](num_layers=3, **SIZES)
    params = plain.init(jax.random.key(1), TOKENS)["params"]
    other = MODELS["gpt"](num_layers=3, remat=remat, scan_layers=scan, **SIZES)
    given = stack_layers(params, 3) if scan else params
    assert jax.tree.structure(other.init(jax.random.key(1), TOKENS)["params"]) == (
        jax.tree.structure(given)
    )
    (loss, grads), (other_loss, other_grads) = (
        value_and_grad(plain, params),
        value_and_grad(other, given),
    )
    np.testing.assert_allclose(other_loss, loss, rtol=1e-6)
    expected = stack_layers(grads, 3) if scan else grads
    for a, b in zip(jax.tree.leaves(other_grads), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_scanned_parameters_carry_a_leading_layer_axis():
    model = MODELS["gpt"](num_layers=4, scan_layers=True, **SIZES)
    params = flax.traverse_util.flatten_dict(
        model.init(jax.random.key(0), TOKENS)["params"], sep="/"
    )
    assert params["decoder/layers/feed_forward/hidden/kernel"].shape == (4, 32, 128)


def test_the_scanned_program_does_not_grow_with_depth():
    def equations(layers: int, scan: bool) -> int:
        model = MODELS["gpt"](num_layers=layers, scan_layers=scan, **SIZES)
        params = jax.eval_shape(model.init, jax.random.key(0), TOKENS)["params"]
        return len(jax.make_jaxpr(lambda p: value_and_grad(model, p))(params).eqns)

    assert equations(2, True) == equations(8, True)
    assert equations(8, False) > 2 * equations(2, False)


def test_remat_recomputes_in_the_backward_pass():
    model = MODELS["gpt"](num_layers=2, remat=True, **SIZES)
    params = jax.eval_shape(model.init, jax.random.key(0), TOKENS)["params"]
    text = str(jax.make_jaxpr(lambda p: value_and_grad(model, p))(params))
    assert "remat" in text or "checkpoint" in text


def test_decoding_a_scanned_stack_is_a_clear_error():
    model = MODELS["gpt"](num_layers=2, scan_layers=True, **SIZES)
    variables = model.init(jax.random.key(0), TOKENS)
    with pytest.raises(ConfigError, match="decoding with a cache needs scan_layers=False"):
        model.apply(variables, model.init_cache(2, 16), TOKENS[:, 0], method=model.decode_step)
