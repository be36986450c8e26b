"""Recurrent networks: the RNN layer (masks, reversal, hoisting), the models, decoding steps.

Legend: b batch, t time, f input features, n hidden units, v vocabulary.
"""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    BATCH,
    CELLS,
    FEATURES,
    HIDDEN,
    TIME,
    TOLERANCE,
    layer_function,
    random_inputs,
    random_variables,
)

from arch import MODELS
from arch.errors import ConfigError
from arch.rnn import RNNClassifier, RNNLanguageModel, RNNTagger
from arch.rnn_cells import LSTMCell
from arch.rnn_layer import RNN
from train.state import parameter_count

# The RNN layer: hoisting, masks, reversal, unrolling, initial state.


def output_weighted_loss(layer: RNN, seed: int = 4):
    """A scalar that depends on every output and on the final state (for gradients)."""
    weights = random_inputs(BATCH, TIME, HIDDEN, seed=seed)

    def loss(variables, x):
        outputs, state = layer.apply(variables, x)
        final = sum(jnp.sum(leaf * (k + 1)) for k, leaf in enumerate(jax.tree.leaves(state)))
        return jnp.sum(outputs * weights) + final, (outputs, state)

    return loss


@pytest.mark.parametrize("name", ["lstm", "gru_reset_after"])
def test_hoisted_input_products_equal_the_fused_ones_values_and_gradients(
    name, inputs, cell_variables
):
    losses = {
        hoist: output_weighted_loss(RNN(CELLS[name](), hoist_inputs=hoist))
        for hoist in (False, True)
    }

    @jax.jit
    def both(variables):
        return {
            hoist: jax.value_and_grad(loss, has_aux=True)(variables, inputs)
            for hoist, loss in losses.items()
        }

    results = both(cell_variables[name])
    (fused_value, fused_aux), fused_grads = results[False]
    (hoisted_value, hoisted_aux), hoisted_grads = results[True]
    chex.assert_trees_all_close(hoisted_aux, fused_aux, **TOLERANCE)
    chex.assert_trees_all_close(hoisted_value, fused_value, rtol=1e-5)
    chex.assert_trees_all_close(hoisted_grads, fused_grads, rtol=1e-5, atol=1e-5)
    for leaf in jax.tree.leaves(fused_grads):
        assert float(jnp.max(jnp.abs(leaf))) > 1e-3  # every weight receives a gradient


PADDED_TIME = 9


@pytest.fixture(scope="module")
def padded_inputs(inputs) -> np.ndarray:
    """The sequences of `inputs` followed by 3 steps of large noise, which masks must hide."""
    noise = 10 * random_inputs(BATCH, PADDED_TIME - TIME, FEATURES, seed=5)
    return np.concatenate([inputs, noise], axis=1)


def lengths_mask(lengths, time: int) -> np.ndarray:
    return (np.arange(time)[None, :] < np.asarray(lengths)[:, None]).astype(np.float32)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", ["lstm", "gru_reset_after"])
def test_padding_at_the_end_is_ignored(name, reverse, inputs, padded_inputs, cell_variables):
    run = layer_function(name, reverse)
    variables = cell_variables[name]
    mask = lengths_mask([TIME] * BATCH, PADDED_TIME)
    padded_outputs, padded_state = run(variables, padded_inputs, mask)
    outputs, state = run(variables, inputs)
    chex.assert_trees_all_close(padded_state, state, **TOLERANCE)
    chex.assert_trees_all_close(padded_outputs[:, :TIME], outputs, **TOLERANCE)
    assert np.all(np.asarray(padded_outputs[:, TIME:]) == 0)
    # without the mask the noise changes the final state: the mask is what hides it
    unmasked_state = run(variables, padded_inputs)[1]
    assert not np.allclose(jax.tree.leaves(unmasked_state)[-1], jax.tree.leaves(state)[-1])


@pytest.mark.parametrize("name", ["lstm", "gru_reset_after"])
def test_sequences_of_different_lengths_in_one_batch(name, padded_inputs, cell_variables):
    run = layer_function(name)
    variables = cell_variables[name]
    lengths = [TIME, TIME - 1, PADDED_TIME]
    outputs, state = run(variables, padded_inputs, lengths_mask(lengths, PADDED_TIME))
    for row, length in enumerate(lengths):
        alone_outputs, alone_state = run(variables, padded_inputs[:, :length])
        take_row = lambda tree, row=row: jax.tree.map(lambda leaf: leaf[row], tree)
        chex.assert_trees_all_close(take_row(state), take_row(alone_state), **TOLERANCE)
        chex.assert_trees_all_close(outputs[row, :length], alone_outputs[row], **TOLERANCE)
        assert np.all(np.asarray(outputs[row, length:]) == 0)


@pytest.mark.parametrize("name", ["lstm", "gru_reset_after"])
def test_a_padded_step_in_the_middle_leaves_the_state_unchanged(name, inputs, cell_variables):
    run = layer_function(name)
    variables = cell_variables[name]
    hole = 3
    mask = np.ones((BATCH, TIME), np.float32)
    mask[:, hole] = 0
    outputs, state = run(variables, inputs, mask)
    # the same as the sequence with that step removed
    kept = [t for t in range(TIME) if t != hole]
    shorter_outputs, shorter_state = run(variables, inputs[:, kept])
    chex.assert_trees_all_close(state, shorter_state, **TOLERANCE)
    chex.assert_trees_all_close(outputs[:, kept], shorter_outputs, **TOLERANCE)
    assert np.all(np.asarray(outputs[:, hole]) == 0)


@pytest.mark.parametrize("name", ["elman", "lstm", "gru_reset_after"])
def test_reverse_equals_forward_on_the_reversed_sequence(name, inputs, cell_variables):
    variables = cell_variables[name]
    backward_outputs, backward_state = layer_function(name, reverse=True)(variables, inputs)
    outputs, state = layer_function(name)(variables, inputs[:, ::-1])
    chex.assert_trees_all_close(backward_state, state, **TOLERANCE)
    chex.assert_trees_all_close(backward_outputs, outputs[:, ::-1], **TOLERANCE)
    # outputs stay aligned with the inputs: the backward state after the whole sequence is
    # its output at position 0
    last_h = jax.tree.leaves(backward_state)[-1]  # h, or (C, h)[1]
    chex.assert_trees_all_close(last_h, backward_outputs[:, 0])


@pytest.mark.parametrize("name, hoist_inputs", [("lstm", False), ("gru_reset_after", True)])
def test_unrolling_changes_no_number(name, hoist_inputs, inputs, cell_variables):
    variables = cell_variables[name]
    reference = layer_function(name)(variables, inputs)
    unrolled = layer_function(name, hoist_inputs=hoist_inputs, unroll=4)  # 6 steps: 4 + 2
    chex.assert_trees_all_close(unrolled(variables, inputs), reference, **TOLERANCE)


def test_initial_state_continues_a_sequence(padded_inputs, cell_variables):
    run = layer_function("lstm")
    variables = cell_variables["lstm"]
    outputs, state = run(variables, padded_inputs)  # 9 steps = 5 + 4
    first_outputs, middle = run(variables, padded_inputs[:, :5])
    rest_outputs, final = run(variables, padded_inputs[:, 5:], None, middle)
    chex.assert_trees_all_close(final, state, **TOLERANCE)
    chex.assert_trees_all_close(
        jnp.concatenate([first_outputs, rest_outputs], axis=1), outputs, **TOLERANCE
    )


def test_state_stays_float32_when_computing_in_bfloat16(inputs, cell_variables):
    low = RNN(LSTMCell(HIDDEN, dtype="bfloat16", parent=None))
    low_outputs, low_state = jax.jit(low.apply)(cell_variables["lstm"], inputs)
    outputs, state = layer_function("lstm")(cell_variables["lstm"], inputs)
    for leaf in [low_outputs, *jax.tree.leaves(low_state)]:
        assert leaf.dtype == jnp.float32
    chex.assert_trees_all_close((low_outputs, low_state), (outputs, state), atol=3e-2)


@pytest.fixture(scope="module")
def initial_weights() -> dict:
    """The weights each cell starts from (its initializers), created without running a step."""
    cells = {name: CELLS[name]() for name in ("elman", "lstm", "gru")}
    cells["lstm_forget_bias_2"] = LSTMCell(HIDDEN, forget_bias=2.0)
    init = lambda key: {
        name: cell.init(key, FEATURES, method="weights")["params"] for name, cell in cells.items()
    }
    return jax.jit(init)(jax.random.key(0))


def test_lstm_forget_gate_bias_starts_at_forget_bias(initial_weights):
    bias = initial_weights["lstm_forget_bias_2"]["bias"]
    n = HIDDEN
    expected = np.concatenate([np.zeros(n), np.full(n, 2.0), np.zeros(2 * n)])  # i, f, g, o
    chex.assert_trees_all_close(bias, expected)


@pytest.mark.parametrize("name", ["elman", "lstm", "gru"])
def test_each_gate_recurrent_block_starts_orthogonal(name, initial_weights):
    kernel = initial_weights[name]["recurrent_kernel"]
    for block in np.split(np.asarray(kernel), kernel.shape[1] // HIDDEN, axis=1):  # [n, n]
        chex.assert_trees_all_close(block.T @ block, np.eye(HIDDEN), atol=1e-5)


# Bidirectional models: the backward layer's state after reading the whole sequence (at
# position 0) is what the classifier sees.


BIDIRECTIONAL = dict(cell="lstm", hidden_size=HIDDEN, num_outputs=3, bidirectional=True)


def test_bidirectional_models_use_the_backward_state_at_position_zero(inputs):
    classifier, tagger = RNNClassifier(**BIDIRECTIONAL), RNNTagger(**BIDIRECTIONAL)
    variables = random_variables(classifier, inputs)
    params = variables["params"]
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
        lambda s: s.shape, jax.eval_shape(tagger.init, jax.random.key(0), inputs)
    )
    forward, backward = RNN(CELLS["lstm"]()), RNN(CELLS["lstm"](), reverse=True)

    @jax.jit
    def run(params):
        return (
            classifier.apply({"params": params}, inputs),
            tagger.apply({"params": params}, inputs),
            forward.apply({"params": params["layer_0"]}, inputs),
            backward.apply({"params": params["layer_0_backward"]}, inputs),
        )

    logits, tags, (forward_outputs, forward_state), (backward_outputs, backward_state) = run(params)
    kernel, bias = np.asarray(params["head"]["kernel"]), np.asarray(params["head"]["bias"])
    chex.assert_shape(logits, (BATCH, 3))
    chex.assert_shape(tags, (BATCH, TIME, 3))
    # the backward layer's final h is its output at position 0: the tagger's backward half at
    # step 0 is the classifier's backward state
    chex.assert_trees_all_close(backward_state[1], backward_outputs[:, 0])
    final = np.concatenate([forward_state[1], backward_state[1]], axis=-1)  # [b, 2n]
    chex.assert_trees_all_close(logits, final @ kernel + bias, **TOLERANCE)
    every_step = np.concatenate([forward_outputs, backward_outputs], axis=-1)  # [b, t, 2n]
    chex.assert_trees_all_close(tags, every_step @ kernel + bias, **TOLERANCE)


def test_bidirectional_classifier_ignores_padding_at_the_end(inputs, padded_inputs):
    model = RNNClassifier(**BIDIRECTIONAL, num_layers=2)
    variables = random_variables(model, inputs)
    mask = lengths_mask([TIME] * BATCH, PADDED_TIME)
    run = jax.jit(lambda v, x, mask=None: model.apply(v, x, mask=mask))
    chex.assert_trees_all_close(
        run(variables, padded_inputs, mask), run(variables, inputs), **TOLERANCE
    )


# Compile time does not grow with the sequence: the program is the same for any length.


def normalized_program(model, variables, x) -> str:
    """The lowered StableHLO with every number replaced, so only the program's form remains."""
    text = jax.jit(model.apply).lower(variables, x).as_text()
    return re.sub(r"\d+", "N", text)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_lowered_program_does_not_grow_with_sequence_length(num_layers):
    model = RNNClassifier(cell="lstm", hidden_size=8, num_outputs=3, num_layers=num_layers)
    short, long = (jax.ShapeDtypeStruct((2, t, 4), jnp.float32) for t in (16, 512))
    variables = jax.eval_shape(model.init, jax.random.key(0), short)
    short_program = normalized_program(model, variables, short)
    long_program = normalized_program(model, variables, long)
    assert short_program == long_program
    assert short_program.count("stablehlo.while") == num_layers  # one scan per layer


# The models: shapes, errors, dropout, parameter counts.


def test_model_output_shapes():
    features = jax.ShapeDtypeStruct((2, 7, 5), jnp.float32)
    tokens = jax.ShapeDtypeStruct((2, 7), jnp.int32)
    shape = lambda model, x: jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x)[0])
    assert shape(RNNClassifier(num_outputs=3, hidden_size=8), features).shape == (2, 3)
    assert shape(RNNTagger(num_outputs=3, hidden_size=8), features).shape == (2, 7, 3)
    for model in [
        RNNClassifier(num_outputs=3, hidden_size=8, vocab_size=11, bidirectional=True),
        RNNTagger(num_outputs=3, hidden_size=8, vocab_size=11, num_layers=2),
    ]:
        out = shape(model, tokens)
        assert out.shape == ((2, 3) if isinstance(model, RNNClassifier) else (2, 7, 3))
        assert out.dtype == jnp.float32
    lm = shape(RNNLanguageModel(vocab_size=11, num_outputs=11, hidden_size=8), tokens)
    assert lm.shape == (2, 7, 11)


@pytest.mark.parametrize("cls", [RNNClassifier, RNNTagger])
def test_token_inputs_need_a_vocabulary(cls):
    tokens = jax.ShapeDtypeStruct((2, 7), jnp.int32)
    with pytest.raises(ConfigError, match="vocab-size") as error:
        jax.eval_shape(cls(hidden_size=8).init, jax.random.key(0), tokens)
    assert cls.__name__ in str(error.value)


@pytest.mark.parametrize("cls", [RNNClassifier, RNNTagger])
@pytest.mark.parametrize("shape", [(2, 7), (2, 7, 5, 1)])
def test_float_inputs_must_be_sequences_of_features(cls, shape):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    with pytest.raises(ConfigError, match=r"\[batch, time, features\]") as error:
        jax.eval_shape(cls(hidden_size=8).init, jax.random.key(0), x)
    assert str(shape) in str(error.value)


def test_language_model_rejects_bidirectional_and_missing_vocabulary():
    tokens = jax.ShapeDtypeStruct((2, 7), jnp.int32)
    with pytest.raises(ConfigError, match="bidirectional"):
        jax.eval_shape(RNNLanguageModel(bidirectional=True).init, jax.random.key(0), tokens)
    with pytest.raises(ConfigError, match="vocab_size"):
        jax.eval_shape(RNNLanguageModel(vocab_size=None).init, jax.random.key(0), tokens)


DROPOUT = dict(hidden_size=8, num_outputs=7, dropout_rate=0.5)
DROPOUT_MODELS = {
    "tagger": (lambda layers: RNNTagger(num_layers=layers, **DROPOUT), random_inputs(4, 5, 3)),
    "language_model": (
        lambda layers: RNNLanguageModel(num_layers=layers, vocab_size=7, **DROPOUT),
        np.random.default_rng(2).integers(0, 7, (4, 5)).astype(np.int32),
    ),
}


def dropout_outputs(model, x) -> dict:
    """The model's outputs in training (two keys, one twice) and evaluation (two keys)."""
    variables = random_variables(model, x)
    apply = jax.jit(
        lambda key, train: model.apply(variables, x, train=train, rngs={"dropout": key}),
        static_argnums=1,
    )
    key_a, key_b = jax.random.key(2), jax.random.key(3)
    return {
        "train_a": apply(key_a, True),
        "train_a_again": apply(key_a, True),
        "train_b": apply(key_b, True),
        "eval_a": apply(key_a, False),
        "eval_b": apply(key_b, False),
        "eval_no_rng": model.apply(variables, x),  # evaluation needs no dropout key
    }


@pytest.mark.parametrize("kind", list(DROPOUT_MODELS))
def test_dropout_between_layers_is_active_only_in_training(kind):
    make, x = DROPOUT_MODELS[kind]
    out = dropout_outputs(make(2), x)
    chex.assert_trees_all_close(out["eval_a"], out["eval_b"])
    chex.assert_trees_all_close(out["eval_a"], out["eval_no_rng"], **TOLERANCE)
    chex.assert_trees_all_close(out["train_a"], out["train_a_again"])
    assert not np.allclose(out["train_a"], out["eval_a"])
    assert not np.allclose(out["train_a"], out["train_b"])
    # dropout sits between layers only: one layer has none (nor on its recurrent connections)
    one_layer = dropout_outputs(make(1), x)
    chex.assert_trees_all_close(one_layer["train_a"], one_layer["eval_a"])


def cell_parameters(cell: str, features: int, hidden: int, reset_after: bool = False) -> int:
    """g gates of W_x [f, n], W_h [n, n] and b [n]; a reset-after GRU adds b_h [n]."""
    gates = {"elman": 1, "lstm": 4, "gru": 3}[cell]
    return gates * (features * hidden + hidden * hidden + hidden) + (hidden if reset_after else 0)


def dense(f_in: int, f_out: int) -> int:
    return f_in * f_out + f_out


FEATURE_SEQUENCES = jax.ShapeDtypeStruct((2, 8, 8), jnp.float32)  # digits rows [b, t, f]
TOKENS = jax.ShapeDtypeStruct((2, 8), jnp.int32)

# The registered defaults: an LSTM of 128 units, one layer; the LM embeds 256 bytes in 64.
PARAMETERS = {
    # rnn / rnn_tagger on [2, 8, 8] features with num_outputs 10
    "rnn": (dict(num_outputs=10), FEATURE_SEQUENCES, 71434),
    "rnn_tagger": (dict(num_outputs=10), FEATURE_SEQUENCES, 71434),
    # rnn_lm as registered (vocab 256, 256 outputs) on tokens
    "rnn_lm": ({}, TOKENS, 148224),
}


@pytest.mark.parametrize("name", list(PARAMETERS))
def test_parameter_count_of_the_registered_defaults(name):
    fields, x, expected = PARAMETERS[name]
    variables = jax.eval_shape(MODELS[name](**fields).init, jax.random.key(0), x)
    assert parameter_count(variables["params"]) == expected


def test_hand_computed_parameter_counts_of_the_defaults():
    lstm_8_to_128 = 4 * (8 * 128 + 128 * 128 + 128)
    assert lstm_8_to_128 == cell_parameters("lstm", 8, 128) == 70144
    assert PARAMETERS["rnn"][2] == lstm_8_to_128 + dense(128, 10)
    assert PARAMETERS["rnn_tagger"][2] == lstm_8_to_128 + dense(128, 10)
    embedding = 256 * 64
    assert PARAMETERS["rnn_lm"][2] == embedding + cell_parameters("lstm", 64, 128) + dense(128, 256)


VARIANTS = [
    (dict(cell="elman"), cell_parameters("elman", 8, 16) + dense(16, 3)),
    (dict(cell="gru"), cell_parameters("gru", 8, 16) + dense(16, 3)),
    (dict(cell="gru", reset_after=True), cell_parameters("gru", 8, 16, True) + dense(16, 3)),
    (
        dict(num_layers=2),
        cell_parameters("lstm", 8, 16) + cell_parameters("lstm", 16, 16) + dense(16, 3),
    ),
    (
        dict(num_layers=2, bidirectional=True),
        2 * cell_parameters("lstm", 8, 16) + 2 * cell_parameters("lstm", 32, 16) + dense(32, 3),
    ),
    (dict(vocab_size=11, embed_size=5), 11 * 5 + cell_parameters("lstm", 5, 16) + dense(16, 3)),
]


@pytest.mark.parametrize("fields, expected", VARIANTS)
def test_parameter_counts_of_variants(fields, expected):
    model = RNNClassifier(hidden_size=16, num_outputs=3, **fields)
    x = TOKENS if "vocab_size" in fields else FEATURE_SEQUENCES
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert parameter_count(variables["params"]) == expected
