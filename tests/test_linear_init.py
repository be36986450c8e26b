"""The linear recurrences initialised as their papers: the LRU's trained normalisation gamma and
its ring (Orvieto et al. 2023), Chrono's gate biases for minGRU / minLSTM (Tallec & Ollivier
2018), Mamba's low-rank step size and its convolution (Gu & Dao 2023, state-spaces/mamba); the
fields reach the models and `python -m train`, and bad values are refused.

Legend: b batch, t time, d model width, n state width, h hidden width, e channels, r step rank.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tyro
from helpers import random_inputs

from arch import MODELS
from arch.errors import ConfigError
from arch.layers import RowDense
from arch.linear_mixers import (
    LRU,
    LRU_RECURRENCE_LR_FACTOR,
    LRU_RECURRENCE_LR_SCALE,
    MinGRU,
    MinLSTM,
    lru_recurrence_lr_scale,
)
from arch.linear_rnn import LinearRecurrentLM
from arch.selective_ssm import SelectiveSSM
from train.optim import OptimConfig, make_optimizer, param_path
from train.validate import check_freeze_patterns, check_model_config

D, N = 8, 4
T_MAX = 50
VOCAB = 11
TOKENS = np.random.default_rng(0).integers(0, VOCAB, (2, 12)).astype(np.int32)


def flat(params) -> dict[str, np.ndarray]:
    """'blocks_0/mix/nu_log' -> value."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {param_path(path): np.asarray(leaf) for path, leaf in leaves}


# ---------------------------------------------------------------------------------------------
# LRU: gamma_log, the ring, the recurrence's learning rate


def test_lru_gamma_log_is_its_own_parameter_initialised_to_the_tied_form():
    x = random_inputs(2, 9, D)
    trained = LRU(D, state_size=64)
    variables = trained.init(jax.random.key(0), x)
    params = variables["params"]
    assert params["gamma_log"].shape == (64,)
    # log sqrt(1 - |lambda|^2) of the initial lambda, in float64 from nu
    magnitude = np.exp(-np.exp(np.asarray(params["nu_log"], np.float64)))
    np.testing.assert_allclose(
        params["gamma_log"], np.log(np.sqrt(1 - magnitude**2)), rtol=1e-5, atol=1e-6
    )
    tied = LRU(D, state_size=64, normalisation="tied")
    shared = {k: v for k, v in params.items() if k != "gamma_log"}
    assert set(tied.init(jax.random.key(0), x)["params"]) == set(shared)  # no gamma_log there
    # the whole layer: the trained form at initialisation is the tied form on the same lambda,
    # B, C, D (exp(log g) against g: float32 rounding only)
    np.testing.assert_allclose(
        trained.apply(variables, x), tied.apply({"params": shared}, x), rtol=1e-5, atol=1e-6
    )


def test_lru_gamma_log_is_used_and_trained():
    x = random_inputs(2, 9, D)
    layer = LRU(D, state_size=N)
    variables = layer.init(jax.random.key(0), x)
    loss = lambda p: jnp.sum(layer.apply({"params": p}, x) ** 2)
    grads = jax.grad(loss)(variables["params"])
    assert float(jnp.abs(grads["gamma_log"]).min()) > 0  # every unit's gamma gets a gradient
    # gamma scales B x: shifting gamma_log by log 2 doubles the state, so y - D x doubles
    doubled = {**variables["params"], "gamma_log": variables["params"]["gamma_log"] + np.log(2)}
    skip = np.asarray(variables["params"]["skip"]) * x
    np.testing.assert_allclose(
        layer.apply({"params": doubled}, x) - skip,
        2 * (layer.apply(variables, x) - skip),
        rtol=1e-4,
        atol=1e-5,
    )


@pytest.mark.parametrize(
    "r_min, r_max, max_phase",
    [(0.9, 0.999, 6.283), (0.0, 1.0, 6.28), (0.5, 0.6, math.pi / 10)],
    ids=["ours", "paper_code", "narrow"],
)
def test_lru_ring_initialisation_respects_its_bounds(r_min, r_max, max_phase):
    n = 4096
    layer = LRU(D, state_size=n, r_min=r_min, r_max=r_max, max_phase=max_phase)
    variables = layer.init(jax.random.key(1), random_inputs(1, 2, D))
    magnitude = np.exp(-np.exp(np.asarray(variables["params"]["nu_log"], np.float64)))
    phase = np.exp(np.asarray(variables["params"]["theta_log"], np.float64))
    slack = 1e-6  # float32 rounding of nu_log
    assert magnitude.min() >= r_min - slack and magnitude.max() <= r_max + slack
    assert phase.min() >= 0 and phase.max() <= max_phase * (1 + 1e-6)
    # |lambda|^2 and the phase are uniform: means at the midpoints (4096 draws: standard error
    # 0.3% of the width; we allow 3%)
    assert np.isfinite(magnitude).all() and np.isfinite(phase).all()
    assert abs(np.mean(magnitude**2) - (r_min**2 + r_max**2) / 2) < 0.03 * (r_max**2 - r_min**2)
    assert abs(phase.mean() - max_phase / 2) < 0.03 * max_phase
    # and the eigenvalues the layer uses are those
    eigenvalues = np.asarray(layer.apply(variables, method=layer.eigenvalues))
    np.testing.assert_allclose(np.abs(eigenvalues), np.minimum(magnitude, np.exp(-1e-6)), atol=1e-6)


def test_lru_defaults_keep_the_previous_ring():
    layer = LRU(D)
    assert (layer.r_min, layer.r_max, layer.max_phase, layer.normalisation) == (
        0.9,
        0.999,
        6.283,
        "trained",
    )


@pytest.mark.parametrize("normalisation", ["trained", "tied"])
def test_lru_scans_and_decoding_agree_with_either_normalisation(normalisation):
    model = LinearRecurrentLM(
        vocab_size=VOCAB, num_outputs=VOCAB, features=D, state_size=N, normalisation=normalisation
    )
    variables = model.init(jax.random.key(0), TOKENS)

    @jax.jit
    def outputs(variables):
        def step(cache, token):
            logits, cache = model.apply(variables, cache, token, method=model.decode_step)
            return cache, logits

        stepped = jax.lax.scan(step, model.init_cache(2), TOKENS.T)[1].swapaxes(0, 1)
        scans = [model.clone(scan=s).apply(variables, TOKENS) for s in ("sequential", "parallel")]
        return stepped, *scans

    stepped, sequential, parallel = outputs(variables)
    chex.assert_trees_all_close(parallel, sequential, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(stepped, sequential, rtol=1e-5, atol=1e-5)


def test_lru_recurrence_lr_scale_names_lambda_gamma_and_b_only():
    model = LinearRecurrentLM(vocab_size=VOCAB, num_outputs=VOCAB, features=D, state_size=N)
    params = model.init(jax.random.key(0), TOKENS)["params"]
    config = OptimConfig(name="sgd", lr=1.0, lr_scale=LRU_RECURRENCE_LR_SCALE)
    check_freeze_patterns(params, config)  # the pattern matches parameters
    assert LRU_RECURRENCE_LR_FACTOR == 0.5  # minimal-LRU's --lr_factor
    assert lru_recurrence_lr_scale(0.02) == ((LRU_RECURRENCE_LR_SCALE[0][0], 0.02),)

    ones = jax.tree.map(jnp.ones_like, params)
    updates, _ = make_optimizer(config, 10).update(ones, make_optimizer(config, 10).init(params))
    factors = {path: float(-u.ravel()[0]) for path, u in flat(updates).items()}
    recurrence = ("nu_log", "theta_log", "gamma_log", "input_re", "input_im")
    slow = {p for p, f in factors.items() if f == 0.5}
    assert slow == {f"blocks_{i}/mix/{name}" for i in range(2) for name in recurrence}
    assert all(f == 1.0 for p, f in factors.items() if p not in slow)  # C, D, MLP, norms, ...


# ---------------------------------------------------------------------------------------------
# minGRU / minLSTM: Chrono


def gates(cls, chrono, key=0, **kw):
    layer = cls(D, hidden_size=512, chrono=chrono, **kw)
    return layer, layer.init(jax.random.key(key), random_inputs(2, 3, D))


def test_min_rnn_defaults_are_rowdense_gates_with_zero_biases():
    """The default keeps the values of before: the gates are RowDense's (same key, same
    numbers), the biases zero."""
    x = random_inputs(2, 3, D)
    for cls, width in ((MinGRU, 2 * N), (MinLSTM, 3 * N)):
        layer = cls(D, hidden_size=N)
        assert layer.chrono is None
        params = layer.init(jax.random.key(0), x)["params"]
        key = jax.random.fold_in(jax.random.key(0), 0)  # any key: both take it the same way
        own = layer.bind({"params": params}).gates
        ref = RowDense(width).init(key, x)["params"]
        got = own.clone(parent=None).init(key, x)["params"]
        chex.assert_trees_all_equal(got, ref)
        np.testing.assert_array_equal(params["gates"]["bias"], np.zeros(width))


def test_min_gru_chrono_biases_are_minus_log_uniform_on_the_writing_gate():
    _, variables = gates(MinGRU, T_MAX)
    z, candidate = np.split(np.asarray(variables["params"]["gates"]["bias"], np.float64), 2)
    np.testing.assert_array_equal(candidate, 0)
    u = np.exp(-z)  # b_z = -log u
    assert u.min() >= 1 - 1e-5 and u.max() <= T_MAX - 1 + 1e-3
    # u ~ U(1, T_max - 1): mean 25, quartiles 13 and 37 (512 draws; a standard error ~0.6)
    assert abs(u.mean() - T_MAX / 2) < 2.5
    np.testing.assert_allclose(np.quantile(u, [0.25, 0.75]), [13, 37], atol=3)
    assert (z <= 0).all()


def test_min_lstm_chrono_forget_is_log_u_and_input_its_negative():
    _, variables = gates(MinLSTM, T_MAX)
    f, i, candidate = np.split(np.asarray(variables["params"]["gates"]["bias"], np.float64), 3)
    np.testing.assert_array_equal(candidate, 0)
    np.testing.assert_array_equal(i, -f)  # Tallec & Ollivier: b_i = -b_f
    u = np.exp(f)
    assert u.min() >= 1 - 1e-5 and u.max() <= T_MAX - 1 + 1e-3
    assert abs(u.mean() - T_MAX / 2) < 2.5
    np.testing.assert_allclose(np.quantile(u, [0.25, 0.75]), [13, 37], atol=3)


@pytest.mark.parametrize("log_space", [False, True], ids=["values", "log_space"])
@pytest.mark.parametrize("cls", [MinGRU, MinLSTM])
def test_chrono_keeps_the_state_for_1_plus_u_steps_at_a_zero_input(cls, log_space):
    """The recurrence's own keeping factor a_t at x = 0 is u / (1 + u): a memory of
    1 / (1 - a) = 1 + u steps, in [2, T_max], whatever the gates' signs inside the layer."""
    layer, variables = gates(cls, T_MAX, log_space=log_space)
    a, _ = layer.apply(variables, jnp.zeros((1, 1, D)), method=layer.coefficients)
    memory = 1 / (1 - np.asarray(a, np.float64).ravel())
    assert memory.min() >= 2 - 1e-3 and memory.max() <= T_MAX * (1 + 1e-3)
    assert abs(memory.mean() - (1 + T_MAX / 2)) < 2.5
    # without Chrono the zero biases keep half: a memory of 2 steps (minLSTM: f' = 1/2)
    plain, plain_variables = gates(cls, None, log_space=log_space)
    a, _ = plain.apply(plain_variables, jnp.zeros((1, 1, D)), method=plain.coefficients)
    np.testing.assert_allclose(a, 0.5, rtol=1e-6)


def test_chrono_changes_only_the_gate_biases():
    for cls in (MinGRU, MinLSTM):
        _, plain = gates(cls, None)
        _, chrono = gates(cls, T_MAX)
        plain, chrono = flat(plain["params"]), flat(chrono["params"])
        assert plain.keys() == chrono.keys()
        for path in plain:
            if path != "gates/bias":
                np.testing.assert_array_equal(plain[path], chrono[path], err_msg=path)


@pytest.mark.parametrize("t_max", [2, 0])
def test_chrono_needs_more_than_two_steps(t_max):
    with pytest.raises(ConfigError, match="chrono"):
        gates(MinGRU, t_max)
    with pytest.raises(ConfigError, match="chrono"):
        check_model_config(MODELS["linear_rnn"](mixer="minlstm", chrono=t_max))


# ---------------------------------------------------------------------------------------------
# Mamba: the low-rank step size and the convolution


def mamba(features=D, **kw):
    layer = SelectiveSSM(features, state_size=N, **kw)
    return layer, layer.init(jax.random.key(0), random_inputs(2, 5, features))


def softplus(v):
    return np.logaddexp(0, np.asarray(v, np.float64))


def test_mamba_initial_steps_are_log_uniform_between_dt_min_and_dt_max():
    _, variables = mamba(features=256)  # e = 512 steps
    params = variables["params"]
    assert "delta_bias" not in params
    steps = softplus(params["dt_proj"]["bias"])
    assert steps.min() >= 1e-3 * (1 - 1e-5) and steps.max() <= 1e-1 * (1 + 1e-5)
    assert steps.min() >= 1e-4
    # log-uniform: log10 of the steps uniform on [-3, -1], mean -2, quartiles -2.5 and -1.5
    logs = np.log10(steps)
    assert abs(logs.mean() + 2) < 0.1
    np.testing.assert_allclose(np.quantile(logs, [0.25, 0.75]), [-2.5, -1.5], atol=0.15)


def test_mamba_step_floor_applies_below_dt_init_floor():
    _, variables = mamba(features=256, dt_min=1e-6, dt_max=1e-3)
    steps = softplus(variables["params"]["dt_proj"]["bias"])
    assert steps.min() >= 1e-4 * (1 - 1e-4)  # clamped: log-uniform from 1e-6 would go below
    assert np.mean(np.isclose(steps, 1e-4, rtol=1e-4)) > 0.5  # 2 of the 3 decades clamped


def test_mamba_dt_proj_and_conv_follow_the_reference_initialisation():
    layer, variables = mamba(features=64)  # r = ceil(64 / 16) = 4, e = 128
    params = variables["params"]
    kernel = np.asarray(params["dt_proj"]["kernel"])
    assert layer.rank == 4 and kernel.shape == (4, 128)
    bound = 4**-0.5  # dt_scale / sqrt(r)
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.95 * bound
    assert abs(kernel.std() - bound / math.sqrt(3)) < 0.05 * bound  # uniform
    conv, conv_bias = np.asarray(params["conv"]), np.asarray(params["conv_bias"])
    assert conv.shape == (4, 128) and conv_bias.shape == (128,)
    for weights in (conv, conv_bias):  # PyTorch's Conv1d default: uniform +-1 / sqrt(w)
        assert np.abs(weights).max() <= 0.5 and np.abs(weights).max() > 0.45
        assert abs(weights.std() - 0.5 / math.sqrt(3)) < 0.03
    scaled = mamba(features=64, dt_scale=0.1)[1]["params"]["dt_proj"]["kernel"]
    assert np.abs(scaled).max() <= 0.1 * bound


@pytest.mark.parametrize("features, rank", [(8, 1), (16, 1), (17, 2), (40, 3), (64, 4)])
def test_mamba_dt_rank_auto_is_ceil_features_over_16(features, rank):
    layer, variables = mamba(features=features)
    e = 2 * features
    assert layer.rank == rank
    assert variables["params"]["x_proj"]["kernel"].shape == (e, rank + 2 * N)
    assert variables["params"]["dt_proj"]["kernel"].shape == (rank, e)
    fixed = mamba(features=features, dt_rank=5)[1]["params"]
    assert fixed["x_proj"]["kernel"].shape == (e, 5 + 2 * N)


def test_hand_computed_parameter_count_of_a_mamba_language_model():
    """d 64, e 128, n 16, w 4, r 4, f 128, 2 layers, vocabulary 256."""
    d, e, n, w, r, f, v = 64, 128, 16, 4, 4, 128, 256
    mixer = 2 * d * e + (w * e + e) + e * (r + 2 * n) + (r * e + e) + e * n + e + e * d
    block = mixer + 2 * 2 * d + 2 * (d * f + f) + (f * d + d)
    expected = v * d + 2 * block + 2 * d + (d * v + v)
    model = MODELS["linear_rnn_lm"](mixer="mamba", state_size=16)
    shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 4), np.int32))
    assert sum(leaf.size for leaf in jax.tree.leaves(shapes)) == expected == 148_736
    # the full-rank step of before: x_proj e x (e + 2n) and a bias [e] instead of
    # x_proj e x (r + 2n) and dt_proj r x e + e: 48,000 parameters per mixer against 32,640
    assert mixer == 32_640
    assert mixer - e * (r + 2 * n) - (r * e + e) + e * (e + 2 * n) + e == 48_000


def test_mamba_parameter_names():
    _, variables = mamba()
    assert set(flat(variables["params"])) == {
        "in_proj/kernel",
        "conv",
        "conv_bias",
        "x_proj/kernel",
        "dt_proj/kernel",
        "dt_proj/bias",
        "a_log",
        "skip",
        "out_proj/kernel",
    }


def test_mamba_step_bias_is_added_in_float32_under_bfloat16():
    layer, variables = mamba(dtype="bfloat16")
    branch = random_inputs(2, 5, 2 * D)
    delta, _, _ = layer.apply(variables, branch, method=layer.projections)
    assert delta.dtype == jnp.float32


# ---------------------------------------------------------------------------------------------
# the models' fields and the command line


def test_the_models_pass_the_new_fields_to_their_mixers():
    def params(**kw):
        model = LinearRecurrentLM(vocab_size=VOCAB, num_outputs=VOCAB, features=32, **kw)
        return model.init(jax.random.key(0), TOKENS)["params"]["blocks_0"]["mix"]

    assert "gamma_log" in params(mixer="lru") and "gamma_log" not in params(
        mixer="lru", normalisation="tied"
    )
    magnitude = np.exp(-np.exp(params(mixer="lru", r_min=0.2, r_max=0.3)["nu_log"]))
    assert magnitude.min() >= 0.2 - 1e-6 and magnitude.max() <= 0.3 + 1e-6
    assert np.exp(params(mixer="lru", max_phase=0.1)["theta_log"]).max() <= 0.1 * (1 + 1e-6)
    bias = params(mixer="mingru", state_size=N, chrono=T_MAX)["gates"]["bias"]
    assert (bias[:N] < 0).all() and (bias[N:] == 0).all()
    assert params(mixer="mamba", state_size=N, dt_rank=3)["x_proj"]["kernel"].shape == (64, 11)
    steps = softplus(params(mixer="mamba", dt_min=0.01, dt_max=0.02)["dt_proj"]["bias"])
    assert steps.min() >= 0.01 * (1 - 1e-5) and steps.max() <= 0.02 * (1 + 1e-5)
    kernel = params(mixer="mamba", dt_scale=0.5)["dt_proj"]["kernel"]  # r = 2
    assert np.abs(kernel).max() <= 0.5 * 2**-0.5


def command(*args: str):
    from train.__main__ import Command

    return tyro.cli(Command, args=list(args), config=(tyro.conf.CascadeSubcommandArgs,)).model


def test_the_new_fields_are_command_line_options():
    model = command(
        "linear_rnn_lm",
        "markov",
        "--model.normalisation",
        "tied",
        "--model.r-min",
        "0.5",
        "--model.chrono",
        "100",
        "--model.dt-rank",
        "3",
        "--model.dt-min",
        "0.002",
    )
    assert (model.normalisation, model.r_min, model.chrono) == ("tied", 0.5, 100)
    assert (model.dt_rank, model.dt_min) == (3, 0.002)
    assert command("linear_rnn", "adding", "--model.dt-rank", "auto").dt_rank == "auto"
    default = command("linear_rnn", "adding")
    assert (default.normalisation, default.chrono, default.dt_rank) == ("trained", None, "auto")


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"mixer": "lru", "r_min": 0.95, "r_max": 0.9}, r"0 <= r_min <= r_max <= 1"),
        ({"mixer": "lru", "r_max": 1.5}, r"0 <= r_min <= r_max <= 1"),
        ({"mixer": "lru", "max_phase": 0.0}, r"max_phase must be > 0"),
        ({"mixer": "lru", "normalisation": "fixed"}, r"normalisation must be one of"),
        ({"mixer": "mamba", "dt_rank": 0}, r"dt_rank must be >= 1"),
        ({"mixer": "mamba", "dt_min": 0.2, "dt_max": 0.1}, r"dt_min <= dt_max"),
        ({"mixer": "mamba", "dt_init_floor": 0.0}, r"dt_init_floor > 0"),
        ({"mixer": "mamba", "dt_scale": -1.0}, r"dt_scale must be > 0"),
    ],
)
def test_bad_initialisation_fields_are_clear_errors(fields, message):
    model = MODELS["linear_rnn"](**fields)
    with pytest.raises(ConfigError, match=message):
        check_model_config(model)
    with pytest.raises(ConfigError, match=message):  # and when built directly
        model.init(jax.random.key(0), random_inputs(1, 3, 2))


def test_fields_of_another_mixer_change_nothing():
    """The LRU's fields on a minGRU model (and so on) are not the mixer's: ignored, as
    log_space and expand always were."""
    base = MODELS["linear_rnn"](mixer="mingru", features=D, state_size=N)
    other = base.clone(normalisation="tied", r_min=0.1, dt_rank=7)
    x = random_inputs(1, 3, 2)
    chex.assert_trees_all_equal(base.init(jax.random.key(0), x), other.init(jax.random.key(0), x))


def test_adam_on_an_lru_step_with_the_recurrence_scale_runs():
    """End to end: the scale in an optimizer on the default LRU model, one finite step."""
    model = MODELS["linear_rnn"](features=D, state_size=N)
    x = random_inputs(2, 5, 3)
    params = model.init(jax.random.key(0), x)["params"]
    tx = make_optimizer(OptimConfig(lr=1e-3, lr_scale=LRU_RECURRENCE_LR_SCALE), 10)
    grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x) ** 2))(params)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(new))
