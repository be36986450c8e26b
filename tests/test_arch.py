"""Models: pinned parameter counts, shapes, image inputs, dropout, activations, bfloat16."""

import typing

import chex
import flax.errors
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import dropout_outputs

from arch import MLP, MODELS, LeNet, Perceptron, ResNet
from arch.errors import ConfigError
from arch.layers import ACTIVATIONS, Activation, activation_fn
from train.state import parameter_count

DIGITS = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)  # a digits-shaped batch [b, y, x, c]


def abstract_variables(model, inputs=DIGITS):
    """The model's variables as shapes and dtypes only: no compilation, no computation."""
    return jax.eval_shape(model.init, jax.random.key(0), inputs)


def random_variables(model, inputs, seed: int = 0):
    """Variables of the model's shapes filled from NumPy: compiling `model.init` costs seconds.

    Parameters are standard normal scaled by 1/sqrt(fan-in); BatchNorm statistics are positive.
    """
    rng = np.random.default_rng(seed)
    shapes = abstract_variables(model, inputs)
    fill = lambda s, scale: (scale(s.shape) * rng.standard_normal(s.shape)).astype(s.dtype)
    fan_in = lambda shape: 1 / np.sqrt(np.prod(shape[:-1])) if len(shape) > 1 else 0.1
    return {
        "params": jax.tree.map(lambda s: fill(s, fan_in), shapes["params"]),
        **{
            name: jax.tree.map(lambda s: rng.uniform(0.5, 1.5, s.shape).astype(s.dtype), tree)
            for name, tree in shapes.items()
            if name != "params"
        },
    }


def output_shape(model, inputs) -> jax.ShapeDtypeStruct:
    return jax.eval_shape(
        lambda x: model.init_with_output(jax.random.key(0), x)[0],
        jax.ShapeDtypeStruct(inputs, jnp.float32) if isinstance(inputs, tuple) else inputs,
    )


def conv(k, c_in, c_out, bias=True):
    return k * k * c_in * c_out + (c_out if bias else 0)


def dense(f_in, f_out):
    return f_in * f_out + f_out


PARAMETERS = {
    # one linear map from the 64 pixels to the 10 classes
    "perceptron": 8 * 8 * 1 * 10 + 10,
    # 64 -> 128 -> 10
    "mlp": dense(64, 128) + dense(128, 10),
    # two SAME 3x3 convolutions, each halving the 8x8 grid by max-pooling: 2x2x32 = 128 features
    "lenet": conv(3, 1, 16) + conv(3, 16, 32) + dense(2 * 2 * 32, 64) + dense(64, 10),
    # stem, a 16-channel block, a strided 32-channel block with a projection, BatchNorm scales
    # and biases (2 per channel), the head on the pooled 32 channels
    "resnet": 19706,
    # recurrent models are pinned on their own inputs in tests/test_recurrent.py
}
IMAGE_MODELS = ["perceptron", "mlp", "lenet", "resnet"]  # the models of 8x8 images here


def test_every_registered_model_has_a_pinned_parameter_count():
    assert set(IMAGE_MODELS) == set(PARAMETERS)
    assert {"rnn", "rnn_tagger", "rnn_lm"} <= set(MODELS)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_parameter_count_of_the_defaults(name):
    variables = abstract_variables(MODELS[name](num_outputs=10))
    assert parameter_count(variables["params"]) == PARAMETERS[name]


def test_hand_computed_counts():
    assert PARAMETERS["perceptron"] == 650
    assert PARAMETERS["mlp"] == 9610
    assert PARAMETERS["lenet"] == 13706
    stem = conv(3, 1, 16, bias=False) + 2 * 16
    block_16 = 2 * (conv(3, 16, 16, bias=False) + 2 * 16)
    block_32 = (
        conv(3, 16, 32, bias=False) + conv(3, 32, 32, bias=False) + conv(1, 16, 32, bias=False)
    ) + 3 * 2 * 32
    assert stem + block_16 + block_32 + dense(32, 10) == PARAMETERS["resnet"]


def test_resnet_keeps_running_statistics_outside_the_parameters():
    variables = abstract_variables(ResNet())
    assert set(variables) == {"params", "batch_stats"}
    # mean and variance for each BatchNorm: stem 16, block one 2x16, block two 3x32
    assert parameter_count(variables["batch_stats"]) == 2 * (16 + 2 * 16 + 3 * 32)
    for leaf in jax.tree.leaves(variables):
        assert leaf.dtype == jnp.float32


@pytest.mark.parametrize("name", IMAGE_MODELS)
@pytest.mark.parametrize("num_outputs", [1, 10])
def test_output_shape(name, num_outputs):
    out = output_shape(MODELS[name](num_outputs=num_outputs), (3, 8, 8, 1))
    assert out.shape == (3, num_outputs) and out.dtype == jnp.float32


@pytest.mark.parametrize("model", [Perceptron(num_outputs=1), MLP(num_outputs=1)])
def test_dense_models_flatten_any_example_shape(model):
    assert output_shape(model, (5, 2)).shape == (5, 1)
    assert output_shape(model, (5, 3, 4)).shape == (5, 1)
    with pytest.raises(ConfigError, match="batch of examples"):
        output_shape(model, (5,))


@pytest.mark.parametrize("cls", [LeNet, ResNet])
def test_conv_models_accept_images_with_or_without_the_channel_axis(cls):
    model = cls()
    images = np.random.default_rng(1).standard_normal((3, 8, 8)).astype(np.float32)

    variables = random_variables(model, images[..., None])

    @jax.jit
    def both(variables, x):  # [b, y, x] and [b, y, x, 1] through the same parameters
        return model.apply(variables, x), model.apply(variables, x[..., None])

    without_channel, with_channel = both(variables, images)
    chex.assert_shape(with_channel, (3, 10))
    chex.assert_trees_all_close(without_channel, with_channel)
    assert float(jnp.std(with_channel)) > 0  # a real output, not a constant


@pytest.mark.parametrize("cls", [LeNet, ResNet])
@pytest.mark.parametrize("shape", [(4, 2), (4, 8, 8, 1, 1)])
def test_conv_models_reject_non_images(cls, shape):
    with pytest.raises(ConfigError, match="images") as error:
        output_shape(cls(), shape)
    assert cls.__name__ in str(error.value) and str(shape) in str(error.value)


@pytest.mark.parametrize("cls", [MLP, LeNet])
def test_unknown_activation_lists_the_valid_ones(cls):
    with pytest.raises(ConfigError, match="unknown activation 'swish'") as error:
        abstract_variables(cls(activation="swish"))
    for name in ACTIVATIONS:
        assert repr(name) in str(error.value)


def test_activation_table_matches_the_command_line_choices():
    assert set(ACTIVATIONS) == set(typing.get_args(Activation))


def test_activation_values():
    x = jnp.array([-1.0, 0.0, 0.5, 2.0])
    chex.assert_trees_all_close(activation_fn("sigmoid")(jnp.zeros(())), jnp.array(0.5))
    chex.assert_trees_all_close(
        activation_fn("sigmoid")(x), 1 / (1 + np.exp(-np.asarray(x))), rtol=1e-6
    )
    chex.assert_trees_all_close(activation_fn("relu")(x), jnp.array([0.0, 0.0, 0.5, 2.0]))
    chex.assert_trees_all_close(activation_fn("tanh")(x), np.tanh(np.asarray(x)), rtol=1e-6)
    chex.assert_trees_all_close(activation_fn("gelu")(x), jax.nn.gelu(x))
    chex.assert_trees_all_close(activation_fn("identity")(x), x)
    # gelu(x) = x * Phi(x): the tanh approximation is within 1e-3 of the exact value here
    chex.assert_trees_all_close(
        activation_fn("gelu")(x), jax.nn.gelu(x, approximate=False), atol=1e-3
    )
    assert float(activation_fn("gelu")(jnp.array(0.0))) == 0.0


def test_mlp_dropout_is_random_in_training_and_off_in_evaluation():
    model = MLP(num_outputs=3, hidden_sizes=(64,), dropout_rate=0.5)
    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)

    @jax.jit
    def outputs(params, key_a, key_b):
        apply = lambda train, key: model.apply(params, x, train=train, rngs={"dropout": key})
        return dropout_outputs(apply, lambda: model.apply(params, x, train=False), key_a, key_b)

    out = outputs(random_variables(model, x), jax.random.key(2), jax.random.key(3))
    chex.assert_trees_all_close(out["eval_a"], out["eval_b"])
    chex.assert_trees_all_close(out["eval_a"], out["eval_no_rng"])
    chex.assert_trees_all_close(out["train_a"], out["train_a_again"])  # the key decides
    assert not np.allclose(out["train_a"], out["eval_a"])
    assert not np.allclose(out["train_a"], out["train_b"])


def test_dropout_in_training_needs_a_dropout_key():
    model = MLP(hidden_sizes=(4,), dropout_rate=0.5)
    variables = abstract_variables(model, jax.ShapeDtypeStruct((2, 3), jnp.float32))
    with pytest.raises(flax.errors.InvalidRngError):
        jax.eval_shape(
            lambda v, x: model.apply(v, x, train=True),
            variables,
            jax.ShapeDtypeStruct((2, 3), jnp.float32),
        )


def test_mlp_computes_in_bfloat16_and_stores_float32():
    low, full = MLP(num_outputs=3, dtype="bfloat16"), MLP(num_outputs=3)
    x = np.random.default_rng(1).standard_normal((4, 8, 8, 1)).astype(np.float32)

    low_params = abstract_variables(low, x)
    for leaf in jax.tree.leaves(low_params):
        assert leaf.dtype == jnp.float32
    # the dtype of compute changes no parameter's shape or dtype
    assert low_params == abstract_variables(full, x)
    params = random_variables(full, x)
    low_out, full_out = jax.jit(lambda p: (low.apply(p, x), full.apply(p, x)))(params)
    assert low_out.dtype == jnp.bfloat16 and full_out.dtype == jnp.float32
    chex.assert_trees_all_close(low_out.astype(jnp.float32), full_out, atol=5e-2, rtol=5e-2)
