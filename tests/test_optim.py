"""make_optimizer against optax's own transformations and hand formulas; config validation."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from arch.errors import ConfigError
from train.optim import OptimConfig, learning_rate_schedule, make_optimizer
from train.validate import check_freeze_patterns

NUM_UPDATES = 5


def initial_params() -> dict:
    rng = np.random.default_rng(0)
    return {
        "dense": {
            "kernel": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32),
        }
    }


def gradient_sequence(scale: float = 1.0) -> list[dict]:
    """Fixed pseudo-random gradients, one tree per update."""
    rng = np.random.default_rng(1)
    return [
        {
            "dense": {
                "kernel": jnp.asarray(scale * rng.normal(size=(3, 4)), jnp.float32),
                "bias": jnp.asarray(scale * rng.normal(size=(4,)), jnp.float32),
            }
        }
        for _ in range(NUM_UPDATES)
    ]


def run_updates(tx: optax.GradientTransformation, grads: list[dict] | None = None) -> dict:
    """The parameters after one update per gradient of `grads`, in one compiled program."""
    grads = gradient_sequence() if grads is None else grads

    @jax.jit
    def run(params, grads):
        opt_state = tx.init(params)
        for g in grads:
            updates, opt_state = tx.update(g, opt_state, params)
            params = optax.apply_updates(params, updates)
        return params

    return run(initial_params(), grads)


def assert_same_updates(config: OptimConfig, reference: optax.GradientTransformation):
    ours = run_updates(make_optimizer(config, total_steps=NUM_UPDATES))
    theirs = run_updates(reference)
    chex.assert_trees_all_close(ours, theirs, rtol=1e-6, atol=1e-7)
    # the comparison means something only if the parameters moved
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), ours, initial_params())
    assert min(jax.tree.leaves(moved)) > 1e-3
    return ours


def kernel_only(params):
    """The kernel decays, the bias does not: by name (tests/test_weight_decay.py has every
    model's parameters), so these tests hold whatever the shapes."""
    return {"dense": {"kernel": True, "bias": False}}


def test_sgd_matches_optax():
    assert_same_updates(OptimConfig(name="sgd", lr=0.1), optax.sgd(0.1))


def test_sgd_by_hand():
    params = run_updates(make_optimizer(OptimConfig(name="sgd", lr=0.1), NUM_UPDATES))
    # p_T = p_0 - lr * sum_t g_t
    expected = jax.tree.map(
        lambda p, *gs: p - 0.1 * sum(gs), initial_params(), *gradient_sequence()
    )
    chex.assert_trees_all_close(params, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_matches_optax(nesterov):
    config = OptimConfig(name="momentum", lr=0.05, momentum=0.8, nesterov=nesterov)
    assert_same_updates(config, optax.sgd(0.05, momentum=0.8, nesterov=nesterov))


def test_momentum_and_nesterov_differ():
    plain = run_updates(make_optimizer(OptimConfig(name="momentum", lr=0.05), NUM_UPDATES))
    nesterov = run_updates(
        make_optimizer(OptimConfig(name="momentum", lr=0.05, nesterov=True), NUM_UPDATES)
    )
    difference = optax.tree.norm(jax.tree.map(jnp.subtract, plain, nesterov))
    assert float(difference) > 1e-2


def test_adam_matches_optax():
    config = OptimConfig(name="adam", lr=0.01, b1=0.8, b2=0.99, eps=1e-6)
    assert_same_updates(config, optax.adam(0.01, b1=0.8, b2=0.99, eps=1e-6))


def test_adamw_matches_optax_with_kernel_only_decay():
    config = OptimConfig(name="adamw", lr=0.01, weight_decay=0.5)
    ours = assert_same_updates(config, optax.adamw(0.01, weight_decay=0.5, mask=kernel_only))
    plain_adam = run_updates(optax.adam(0.01))
    # the bias is not decayed: it follows plain Adam exactly; the kernel is decayed
    chex.assert_trees_all_close(ours["dense"]["bias"], plain_adam["dense"]["bias"], rtol=1e-6)
    kernel_gap = jnp.max(jnp.abs(ours["dense"]["kernel"] - plain_adam["dense"]["kernel"]))
    assert float(kernel_gap) > 1e-3


def test_sgd_weight_decay_by_hand():
    lr, wd = 0.1, 0.3
    params = run_updates(make_optimizer(OptimConfig(name="sgd", lr=lr, weight_decay=wd), 5))
    kernel = np.asarray(initial_params()["dense"]["kernel"], np.float64)
    bias = np.asarray(initial_params()["dense"]["bias"], np.float64)
    for g in gradient_sequence():
        kernel = kernel - lr * (np.asarray(g["dense"]["kernel"]) + wd * kernel)  # L2 on kernels
        bias = bias - lr * np.asarray(g["dense"]["bias"])  # no decay on biases
    chex.assert_trees_all_close(
        params, {"dense": {"kernel": kernel, "bias": bias}}, rtol=1e-5, atol=1e-6
    )


def test_adam_weight_decay_is_l2_on_the_gradient():
    config = OptimConfig(name="adam", lr=0.01, weight_decay=0.5)
    assert_same_updates(
        config, optax.chain(optax.add_decayed_weights(0.5, mask=kernel_only), optax.adam(0.01))
    )


def test_clip_norm_matches_optax_chain():
    # gradients of global norm ~ 4 * sqrt(16) = 16, far above the clip of 1
    grads = gradient_sequence(scale=4.0)
    assert all(float(optax.tree.norm(g)) > 5.0 for g in grads)
    config = OptimConfig(name="sgd", lr=0.1, clip_norm=1.0)
    ours = run_updates(make_optimizer(config, NUM_UPDATES), grads)
    reference = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1))
    chex.assert_trees_all_close(ours, run_updates(reference, grads), rtol=1e-6, atol=1e-7)
    # by hand: each step moves by exactly lr * clip in global norm
    expected = jax.tree.map(
        lambda p, *gs: (
            p
            - 0.1 * sum(g / float(optax.tree.norm(full)) for g, full in zip(gs, grads, strict=True))
        ),
        initial_params(),
        *grads,
    )
    chex.assert_trees_all_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_clip_norm_with_adam_matches_optax_chain():
    grads = gradient_sequence(scale=4.0)
    config = OptimConfig(name="adam", lr=0.01, clip_norm=2.0)
    ours = run_updates(make_optimizer(config, NUM_UPDATES), grads)
    reference = optax.chain(optax.clip_by_global_norm(2.0), optax.adam(0.01))
    chex.assert_trees_all_close(ours, run_updates(reference, grads), rtol=1e-6, atol=1e-7)


def test_freeze_keeps_matching_parameters():
    config = OptimConfig(name="sgd", lr=0.1, freeze=("bias",))
    ours = run_updates(make_optimizer(config, NUM_UPDATES))
    np.testing.assert_array_equal(ours["dense"]["bias"], initial_params()["dense"]["bias"])
    chex.assert_trees_all_close(
        ours["dense"]["kernel"], run_updates(optax.sgd(0.1))["dense"]["kernel"], rtol=1e-6
    )


def test_lr_scale_is_a_per_parameter_learning_rate():
    """Adam at lr with the bias scaled by 0.1 == Adam at lr for the kernel and at 0.1 lr for
    the bias (Adam's update is lr times a direction that does not depend on lr)."""
    config = OptimConfig(name="adam", lr=0.01, lr_scale=(("bias", 0.1), ("dense", 1.0)))
    ours = run_updates(make_optimizer(config, NUM_UPDATES))
    chex.assert_trees_all_close(
        ours["dense"]["kernel"], run_updates(optax.adam(0.01))["dense"]["kernel"], rtol=1e-6
    )
    chex.assert_trees_all_close(
        ours["dense"]["bias"], run_updates(optax.adam(0.001))["dense"]["bias"], rtol=1e-6
    )


def test_check_patterns_names_a_pattern_that_matches_nothing():
    params = initial_params()
    check_freeze_patterns(params, OptimConfig(lr_scale=(("kernel", 0.5),)))  # matches: fine
    with pytest.raises(ConfigError, match=r"optim\.lr_scale pattern 'kernal' matches no param"):
        check_freeze_patterns(params, OptimConfig(lr_scale=(("kernal", 0.5),)))
    with pytest.raises(ConfigError, match=r"optim\.freeze pattern 'bais' matches no parameter"):
        check_freeze_patterns(params, OptimConfig(freeze=("bais",)))
    with pytest.raises(ConfigError, match=r"freezes every parameter"):
        check_freeze_patterns(params, OptimConfig(freeze=("dense",)))


def test_cosine_schedule_with_warmup_matches_optax_and_hand_values():
    lr, warmup, total, ratio = 0.1, 10, 100, 0.1
    config = OptimConfig(lr=lr, schedule="cosine", warmup_steps=warmup, min_lr_ratio=ratio)
    schedule = learning_rate_schedule(config, total)
    reference = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup, decay_steps=total, end_value=lr * ratio
    )

    def by_hand(step: int) -> float:
        if step < warmup:
            return lr * step / warmup  # linear from 0 to lr
        progress = min(step - warmup, total - warmup) / (total - warmup)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return lr * (ratio + (1 - ratio) * cosine)  # cosine from lr to lr * ratio

    for step in [0, 1, 5, 9, 10, 11, 30, 55, 80, 99, 100, 150]:
        value = float(schedule(step))
        assert value == pytest.approx(float(reference(step)), rel=1e-5, abs=1e-8), step
        assert value == pytest.approx(by_hand(step), rel=1e-5, abs=1e-8), step
    assert float(schedule(5)) == pytest.approx(0.05)
    assert float(schedule(10)) == pytest.approx(0.1)
    assert float(schedule(55)) == pytest.approx(0.1 * (0.1 + 0.9 * 0.5))
    assert float(schedule(100)) == pytest.approx(0.01)


def test_cosine_schedule_without_warmup_decays_to_zero():
    schedule = learning_rate_schedule(OptimConfig(lr=0.2, schedule="cosine"), 40)
    reference = optax.cosine_decay_schedule(0.2, 40)
    for step in [0, 10, 20, 39, 40, 50]:
        assert float(schedule(step)) == pytest.approx(float(reference(step)), abs=1e-7)
    assert float(schedule(0)) == pytest.approx(0.2)
    assert float(schedule(20)) == pytest.approx(0.1)
    assert float(schedule(40)) == pytest.approx(0.0, abs=1e-8)


def test_constant_schedule_with_warmup():
    schedule = learning_rate_schedule(OptimConfig(lr=0.3, warmup_steps=4), 100)
    values = [float(schedule(s)) for s in [0, 1, 2, 3, 4, 5, 50, 1000]]
    np.testing.assert_allclose(values, [0.0, 0.075, 0.15, 0.225, 0.3, 0.3, 0.3, 0.3], rtol=1e-6)
    constant = learning_rate_schedule(OptimConfig(lr=0.3), 100)
    assert float(constant(0)) == pytest.approx(0.3) and float(constant(99)) == pytest.approx(0.3)


def test_optimizer_follows_the_schedule():
    config = OptimConfig(name="sgd", lr=0.1, schedule="cosine", warmup_steps=2, min_lr_ratio=0.2)
    reference = optax.sgd(optax.warmup_cosine_decay_schedule(0.0, 0.1, 2, NUM_UPDATES, 0.02))
    ours = run_updates(make_optimizer(config, NUM_UPDATES))
    chex.assert_trees_all_close(ours, run_updates(reference), rtol=1e-6, atol=1e-7)
    # by hand: lr at updates 0..4 is 0, 0.05, 0.1, cosine midway, ...
    rates = [0.0, 0.05, 0.1, 0.02 + 0.08 * 0.5 * (1 + math.cos(math.pi / 3))]
    rates.append(0.02 + 0.08 * 0.5 * (1 + math.cos(2 * math.pi / 3)))
    expected = jax.tree.map(
        lambda p, *gs: p - sum(r * g for r, g in zip(rates, gs, strict=True)),
        initial_params(),
        *gradient_sequence(),
    )
    chex.assert_trees_all_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_accumulate_averages_gradients_and_schedules_per_update():
    """accumulate=2 over 2 * 5 micro-steps: 5 SGD updates on the mean of each pair."""
    config = OptimConfig(name="sgd", lr=0.1, schedule="cosine", accumulate=2)
    micro = gradient_sequence() + gradient_sequence(scale=-0.5)
    paired = [micro[i] for i in range(0, 10, 2)], [micro[i] for i in range(1, 10, 2)]
    ours = run_updates(make_optimizer(config, total_steps=2 * NUM_UPDATES), micro)
    schedule = optax.cosine_decay_schedule(0.1, NUM_UPDATES)
    expected = jax.tree.map(
        lambda p, *gs: (
            p
            - sum(
                float(schedule(t)) * (gs[t] + gs[NUM_UPDATES + t]) / 2 for t in range(NUM_UPDATES)
            )
        ),
        initial_params(),
        *paired[0],
        *paired[1],
    )
    chex.assert_trees_all_close(ours, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"lr": -1.0}, r"optim\.lr must be > 0"),
        ({"lr": 0.0}, r"optim\.lr must be > 0"),
        ({"accumulate": 0}, r"optim\.accumulate must be >= 1"),
        ({"weight_decay": -0.1}, r"optim\.weight_decay must be >= 0"),
        ({"freeze": ("hidden_(",)}, r"optim\.freeze pattern 'hidden_\(' is not a regular"),
        ({"warmup_steps": -1}, r"optim\.warmup_steps must be >= 0"),
        ({"min_lr_ratio": 1.5}, r"optim\.min_lr_ratio must be in \[0, 1\]"),
        ({"clip_norm": 0.0}, r"optim\.clip_norm must be > 0"),
        ({"lr_scale": (("nu", 0.0),)}, r"optim\.lr_scale factor for 'nu' must be > 0"),
        ({"lr_scale": (("nu(", 0.5),)}, r"optim\.lr_scale pattern 'nu\(' is not a regular"),
    ],
)
def test_bad_config_raises_naming_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        OptimConfig(**fields)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError, match=r"optim\.lr.*; optim\.accumulate"):
        OptimConfig(lr=0.0, accumulate=0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"name": "rmsprop"}, r"optim\.name"), ({"schedule": "linear"}, r"optim\.schedule")],
)
def test_unknown_optimizer_or_schedule_raises(fields, message):
    with pytest.raises(ConfigError, match=message):
        OptimConfig(**fields)
