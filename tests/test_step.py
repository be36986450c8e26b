"""The shared train and eval steps: accumulation, freezing, jit vs no-jit, metrics, BatchNorm,
dropout randomness, a loss that falls below a bound, and starting from given parameters."""

import chex
import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from arch import MLP, ResNet
from arch.errors import ConfigError
from train import losses
from train.loop import RunConfig, fit
from train.optim import OptimConfig, make_optimizer
from train.step import init_state, make_eval_step, make_train_step, merge_params
from train.tasks import DataPosition, Digits, Xor

MICRO_BATCH = 8


@pytest.fixture(scope="module")
def digits() -> Digits:
    return Digits(batch_size=MICRO_BATCH)


@pytest.fixture(scope="module")
def batches(digits) -> list[dict]:
    """The first 8 micro-batches of 8 training examples."""
    return [digits.train_batch(DataPosition(0, i)) for i in range(8)]


def concatenate(batches: list[dict]) -> dict:
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}


def copy_state(state):
    """A fresh copy: the train step donates (deletes) the state it is given."""
    return jax.tree.map(lambda x: x.copy(), state)


@pytest.fixture(scope="module")
def mlp(digits):
    """An MLP, its initial state, and `setup(config) -> (state, train_step)`.

    Parameters are initialised once and each optimizer gets a fresh optimizer state for them;
    a config's train step is compiled once and shared by the tests that use it.
    """
    model = MLP(num_outputs=10, hidden_sizes=(32,))
    tx = make_optimizer(OptimConfig(), 100)
    base = init_state(model, tx, digits.example_batch()["inputs"], seed=0)
    compiled = {}

    def setup(config: OptimConfig, model: nn.Module = model):
        if (config, model) not in compiled:
            tx = make_optimizer(config, 100)
            compiled[config, model] = (make_train_step(model, digits, tx), jax.jit(tx.init))
        train_step, init_optimizer = compiled[config, model]
        state = copy_state(base)
        return state.replace(opt_state=init_optimizer(state.params)), train_step

    return model, base, setup


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_gradient_accumulation_equals_one_large_batch(mlp, batches, name):
    _, _, setup = mlp
    # two updates: 2 x 4 micro-batches of 8 against 2 batches of 32 (the same examples)
    micro_state, micro_step = setup(OptimConfig(name=name, lr=0.1, accumulate=4))
    large_state, large_step = setup(OptimConfig(name=name, lr=0.1, accumulate=1))
    initial = jax.device_get(micro_state.params)

    after_update = []
    for i, batch in enumerate(batches):
        before = jax.device_get(micro_state.params)
        micro_state, metrics = micro_step(micro_state, batch)
        if i % 4 < 3:  # a micro-step: gradients are only accumulated
            chex.assert_trees_all_equal(jax.device_get(micro_state.params), before)
            assert float(metrics["update_norm"]) == 0.0
        else:
            after_update.append(jax.device_get(micro_state.params))
    assert int(micro_state.step) == 8

    for k in range(2):
        large_state, _ = large_step(large_state, concatenate(batches[4 * k : 4 * k + 4]))
        chex.assert_trees_all_close(
            after_update[k], jax.device_get(large_state.params), rtol=1e-5, atol=1e-6
        )
    moved = optax.tree.norm(jax.tree.map(np.subtract, after_update[1], initial))
    assert float(moved) > 1e-2


def test_freeze_keeps_hidden_0_bit_identical(digits, batches):
    model = MLP(num_outputs=10, hidden_sizes=(16, 16))
    tx = make_optimizer(OptimConfig(name="adam", lr=1e-2, freeze=("hidden_0",)), 100)
    state = init_state(model, tx, batches[0]["inputs"], seed=0)
    train_step = make_train_step(model, digits, tx)
    initial = jax.device_get(state.params)
    for batch in batches[:3]:
        state, _ = train_step(state, batch)
    final = jax.device_get(state.params)
    np.testing.assert_array_equal(final["hidden_0"]["kernel"], initial["hidden_0"]["kernel"])
    np.testing.assert_array_equal(final["hidden_0"]["bias"], initial["hidden_0"]["bias"])
    for layer in ("hidden_1", "head"):
        for leaf in ("kernel", "bias"):
            change = np.max(np.abs(final[layer][leaf] - initial[layer][leaf]))
            assert change > 1e-3, (layer, leaf)


DROPOUT_MLP = MLP(num_outputs=10, hidden_sizes=(32,), dropout_rate=0.5)
"""The shared MLP with dropout 0.5: the same parameters (dropout has none)."""


def test_jit_and_no_jit_agree(mlp, batches):
    _, _, setup = mlp
    state, train_step = setup(OptimConfig(name="sgd", lr=0.1), DROPOUT_MLP)
    jitted_state, jitted_metrics = train_step(copy_state(state), batches[0])
    with jax.disable_jit():
        eager_state, eager_metrics = train_step(state, batches[0])
    chex.assert_trees_all_close(jitted_state.params, eager_state.params, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(jitted_metrics, eager_metrics, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(jitted_state.opt_state, eager_state.opt_state, rtol=1e-5, atol=1e-5)
    assert int(jitted_state.step) == int(eager_state.step) == 1


def test_dropout_randomness_comes_from_the_step(mlp, batches):
    _, _, setup = mlp
    state, train_step = setup(OptimConfig(name="adam", lr=1e-2), DROPOUT_MLP)
    batch = batches[0]
    first, first_metrics = train_step(copy_state(state), batch)
    again, again_metrics = train_step(copy_state(state), batch)
    # the same state and batch: bit-identical results
    chex.assert_trees_all_equal(first_metrics, again_metrics)
    chex.assert_trees_all_equal(first.params, again.params)
    # the same parameters and batch at another step: another dropout mask, another loss
    later = state.replace(step=jnp.asarray(7, jnp.int32))
    _, later_metrics = train_step(later, batch)
    assert abs(float(later_metrics["loss"]) - float(first_metrics["loss"])) > 1e-3


def test_metrics(mlp, batches):
    model, _, setup = mlp
    state, train_step = setup(OptimConfig(name="sgd", lr=0.1))
    batch = concatenate(batches[4:])
    old_params = jax.device_get(state.params)

    def loss_fn(params):
        logits = model.apply({"params": params}, batch["inputs"])
        return losses.softmax_cross_entropy(logits, batch["targets"]), logits

    (loss, logits), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(old_params)
    state, metrics = train_step(state, batch)

    assert {"loss", "accuracy", "grad_norm", "param_norm", "update_norm"} <= set(metrics)
    assert float(metrics["loss"]) == pytest.approx(float(loss), rel=1e-5)
    expected_accuracy = np.mean(np.argmax(logits, axis=-1) == batch["targets"])
    assert float(metrics["accuracy"]) == pytest.approx(expected_accuracy)
    assert float(metrics["grad_norm"]) == pytest.approx(float(optax.tree.norm(grads)), rel=1e-5)
    assert float(metrics["param_norm"]) == pytest.approx(
        float(optax.tree.norm(state.params)), rel=1e-6
    )
    # plain SGD: update = -lr * grad
    assert float(metrics["update_norm"]) == pytest.approx(0.1 * float(metrics["grad_norm"]), 1e-5)
    expected_params = jax.tree.map(lambda p, g: p - 0.1 * g, old_params, grads)
    chex.assert_trees_all_close(state.params, expected_params, rtol=1e-5, atol=1e-6)


def test_batchnorm_train_and_eval():
    # one stage keeps the compilation short; BatchNorm sits in the stem and in the block
    task = Digits(batch_size=32)
    model = ResNet(num_outputs=10, stage_channels=(16,))
    tx = make_optimizer(OptimConfig(name="adam", lr=1e-2), 100)
    first = task.train_batch(DataPosition(0, 0))
    state = init_state(model, tx, first["inputs"], seed=0)
    train_step, eval_step = make_train_step(model, task, tx), make_eval_step(model, task)
    evaluation = next(task.eval_batches("validation", 64))
    # the same first 32 examples, followed by 32 others
    shuffled = evaluation["inputs"].copy()
    shuffled[32:] = shuffled[32:][::-1] * 2.0 + 1.0
    stats = jax.device_get(state.model_state["batch_stats"])
    chex.assert_trees_all_equal(
        stats["stem_norm"], {"mean": np.zeros(16, np.float32), "var": np.ones(16, np.float32)}
    )
    apply_eval = jax.jit(lambda variables, x: model.apply(variables, x, train=False))
    apply_train = jax.jit(
        lambda variables, x: model.apply(variables, x, train=True, mutable=["batch_stats"])[0]
    )

    def check_eval(state) -> dict:
        """The eval step reads the running averages: each example's output is its own."""
        metrics = eval_step(state, evaluation)
        chex.assert_trees_all_equal(jax.device_get(state.model_state["batch_stats"]), stats)
        logits = apply_eval(state.variables, evaluation["inputs"])
        other = apply_eval(state.variables, shuffled)
        chex.assert_trees_all_close(logits[:32], other[:32], rtol=1e-5, atol=1e-5)
        expected = losses.softmax_cross_entropy(logits, evaluation["targets"])
        assert float(metrics["loss"]) == pytest.approx(float(expected), rel=1e-5)
        assert float(metrics["count"]) == 64.0
        return metrics

    initial_eval = check_eval(state)
    # in training each example's output depends on the batch (batch statistics)
    logits = apply_train(state.variables, evaluation["inputs"])
    other = apply_train(state.variables, shuffled)
    assert float(jnp.max(jnp.abs(logits[:32] - other[:32]))) > 1e-2

    # one train step updates the running statistics of every BatchNorm
    state, metrics = train_step(state, first)
    initial_loss = float(metrics["loss"])
    new_stats = jax.device_get(state.model_state["batch_stats"])
    for path, before in flax.traverse_util.flatten_dict(stats, sep="/").items():
        after = flax.traverse_util.flatten_dict(new_stats, sep="/")[path]
        assert np.max(np.abs(after - before)) > 1e-3, path

    for i in range(1, 30):
        state, metrics = train_step(state, task.train_batch(DataPosition(0, i)))
    stats = jax.device_get(state.model_state["batch_stats"])
    final_eval = check_eval(state)
    assert float(metrics["loss"]) < 0.7 * initial_loss
    assert float(final_eval["loss"]) < 0.7 * float(initial_eval["loss"])
    assert float(final_eval["accuracy"]) > 0.5


def test_xor_mlp_reaches_perfect_accuracy():
    result = fit(
        MLP(),
        Xor(),
        OptimConfig(name="adam", lr=1e-2),
        RunConfig(steps=300, progress="off", tensorboard=False, compilation_cache=False),
    )
    test = result.summary["final"]["test"]
    assert test["accuracy"] == 1.0
    assert test["loss"] < 0.05
    train_records = [r for r in result.history if r["split"] == "train"]
    assert train_records[-1]["step"] == 300
    assert train_records[-1]["loss"] < 0.05
    assert train_records[0]["loss"] > 10 * train_records[-1]["loss"]  # mean of steps 1-50


def test_init_params_replace_a_subset_exactly(mlp, digits):
    model, base, _ = mlp
    fresh = jax.device_get(base.params)
    given = {
        "hidden_0": {
            "kernel": np.linspace(-1, 1, 64 * 32, dtype=np.float32).reshape(64, 32),
            "bias": np.arange(32, dtype=np.float32),
        }
    }
    tx = make_optimizer(OptimConfig(), 100)
    state = init_state(model, tx, digits.example_batch()["inputs"], seed=0, init_params=given)
    params = jax.device_get(state.params)
    chex.assert_trees_all_equal(params["hidden_0"], given["hidden_0"])
    chex.assert_trees_all_equal(params["head"], fresh["head"])
    chex.assert_trees_all_equal(merge_params(fresh, given), params)


def test_init_params_wrong_shape_or_path_raise(mlp, digits):
    model, base, _ = mlp
    fresh = jax.device_get(base.params)
    tx = make_optimizer(OptimConfig(), 100)
    inputs = digits.example_batch()["inputs"]
    wrong_shape = {"hidden_0": {"kernel": np.zeros((64, 16), np.float32)}}
    message = r"hidden_0/kernel has shape \(64, 16\), the model needs \(64, 32\)"
    with pytest.raises(ConfigError, match=message):
        init_state(model, tx, inputs, seed=0, init_params=wrong_shape)
    with pytest.raises(ConfigError, match=message):
        merge_params(fresh, wrong_shape)
    unknown = {"hidden_1": {"kernel": np.zeros((32, 32), np.float32)}}
    with pytest.raises(ConfigError, match=r"parameters the model lacks: \['hidden_1/kernel'\]"):
        init_state(model, tx, inputs, seed=0, init_params=unknown)
    with pytest.raises(ConfigError, match=r"lacks: \['head/scale'\]"):
        merge_params(fresh, {"head": {"scale": np.ones(10, np.float32)}})


def test_init_params_keep_the_model_param_dtype(mlp):
    _, base, _ = mlp
    fresh = jax.device_get(base.params)
    given = {"hidden_0": {"kernel": jnp.ones((64, 32), jnp.bfloat16)}}
    try:
        merged = merge_params(fresh, given)
    except ValueError:
        return  # refusing the wrong dtype is as good as casting it
    assert merged["hidden_0"]["kernel"].dtype == jnp.float32
