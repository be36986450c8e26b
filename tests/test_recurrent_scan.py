"""The RNN layer's hand-written backward pass (arch/rnn_layer.py) against autodiff.

Legend: b batch, t time, f input features, n hidden units.
"""

import chex
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import BATCH, CELLS, HIDDEN, TIME, random_inputs

from arch.errors import ConfigError
from arch.rnn_cells import GRUCell, LSTMCell
from arch.rnn_layer import RNN

SEPARABLE = ["elman", "elman_relu", "lstm", "gru_reset_after"]


def mask_with_gaps() -> np.ndarray:
    """[b, t]: a full row, a row padded at the end, a row with a padded step in the middle."""
    mask = np.ones((BATCH, TIME), np.float32)
    mask[1, 4:] = 0
    mask[2, 2] = 0
    return mask


def gradients(layer: RNN, variables: dict, inputs, mask, state) -> tuple:
    """Value and gradients (weights, inputs, initial state) of a loss that weights every output
    and every leaf of the final state differently."""
    output_weights = random_inputs(BATCH, TIME, HIDDEN, seed=4)

    def loss(variables, x, state):
        outputs, final = layer.apply(variables, x, mask, state)
        finals = sum(jnp.sum(leaf * (k + 2)) for k, leaf in enumerate(jax.tree.leaves(final)))
        return jnp.sum(outputs * output_weights) + finals

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(variables, inputs, state)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", SEPARABLE)
def test_custom_backward_equals_autodiff(name, reverse, inputs, cell_variables):
    cell = CELLS[name]()
    state = jax.tree.map(lambda a: a + 0.3, cell.initial_state(BATCH))  # a non-zero start
    results = {
        custom: gradients(
            RNN(CELLS[name](), reverse=reverse, backward="custom" if custom else "autodiff"),
            cell_variables[name],
            inputs,
            mask_with_gaps(),
            state,
        )
        for custom in (False, True)
    }
    (value, grads), (custom_value, custom_grads) = results[False], results[True]
    chex.assert_trees_all_close(custom_value, value, rtol=1e-6)
    chex.assert_trees_all_close(custom_grads, grads, rtol=1e-5, atol=1e-6)
    weight_grads, input_grads, _ = grads
    for leaf in jax.tree.leaves(weight_grads):
        assert float(jnp.max(jnp.abs(leaf))) > 1e-3  # every weight receives a gradient
    # a padded input step gets no gradient at all
    assert float(jnp.max(jnp.abs(input_grads[1, 4:]))) == 0.0
    assert float(jnp.max(jnp.abs(input_grads[2, 2]))) == 0.0


@pytest.mark.parametrize("hoist_inputs", [False, True])
def test_custom_backward_in_bfloat16_equals_autodiff(hoist_inputs, inputs, cell_variables):
    low = lambda custom: RNN(
        LSTMCell(HIDDEN, dtype="bfloat16", parent=None),
        hoist_inputs=hoist_inputs,
        backward="custom" if custom else "autodiff",
    )
    state = LSTMCell(HIDDEN).initial_state(BATCH)
    args = (cell_variables["lstm"], inputs, mask_with_gaps(), state)
    value, grads = gradients(low(False), *args)
    custom_value, custom_grads = gradients(low(True), *args)
    chex.assert_trees_all_close(custom_value, value, rtol=1e-5)
    # both round the same products to bfloat16, in a different order of summation
    chex.assert_trees_all_close(custom_grads, grads, rtol=2e-2, atol=2e-2)


def dot_products_per_loop(layer: RNN, variables: dict, inputs) -> list[tuple[bool, int]]:
    """(reverse, number of matrix products in the body) of each scan in the gradient program."""
    loss = lambda variables: jnp.sum(layer.apply(variables, inputs)[0])
    jaxpr = jax.make_jaxpr(jax.grad(loss))(variables)
    scans = []

    def visit(jaxpr) -> None:
        for equation in jaxpr.eqns:
            if equation.primitive.name == "scan":
                body = equation.params["jaxpr"].jaxpr
                dots = sum(e.primitive.name == "dot_general" for e in body.eqns)
                scans.append((equation.params["reverse"], dots))
            for sub in jax.extend.core.jaxprs_in_params(equation.params):
                visit(sub)

    visit(jaxpr.jaxpr)
    return scans


def test_reverse_loop_keeps_only_the_recurrent_product(inputs, cell_variables):
    """Autodiff puts the weight-gradient products in the reverse loop; ours does not: one
    product per step (d h_proj W_h^T) instead of four."""
    variables = cell_variables["lstm"]
    custom = dot_products_per_loop(RNN(CELLS["lstm"]()), variables, inputs)
    autodiff_layer = RNN(CELLS["lstm"](), backward="autodiff")
    autodiff = dot_products_per_loop(autodiff_layer, variables, inputs)
    assert (True, 1) in custom and max(dots for reverse, dots in custom if reverse) == 1
    assert max(dots for reverse, dots in autodiff if reverse) >= 3


def test_only_separable_cells_take_the_custom_backward():
    assert LSTMCell(HIDDEN).separable and GRUCell(HIDDEN, reset_after=True).separable
    assert not GRUCell(HIDDEN, reset_after=False).separable  # W_h (r_t * h_{t-1}): autodiff


def test_custom_backward_of_a_cell_that_is_not_separable_is_an_error(inputs, cell_variables):
    layer = RNN(CELLS["gru"](), backward="custom")
    with pytest.raises(ConfigError, match="not separable"):
        layer.apply(cell_variables["gru"], inputs)
