"""Chrono initialisation of the gated cells (Tallec & Ollivier 2018): where each gate's bias
lies, its log-uniform distribution, that nothing else moves, the default left as it was, and the
`chrono` field of the recurrent models and of `python -m train`.

Legend: f input features, n hidden units.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tyro
from helpers import FEATURES, cli_error

from arch import MODELS
from arch.errors import ConfigError
from arch.rnn_cells import ElmanCell, GRUCell, LSTMCell

T_MAX = 50
GATED = {
    "lstm": lambda n, **kw: LSTMCell(n, parent=None, **kw),
    "gru": lambda n, **kw: GRUCell(n, reset_after=False, parent=None, **kw),
    "gru_reset_after": lambda n, **kw: GRUCell(n, reset_after=True, parent=None, **kw),
}


def gate_biases(name: str, bias: np.ndarray) -> dict[str, np.ndarray]:
    """The bias [g*n] split per gate, in the cells' (PyTorch's) order."""
    gates = "ifgo" if name == "lstm" else "rzn"
    return dict(zip(gates, np.split(np.asarray(bias, np.float64), len(gates)), strict=True))


def kept_bias(name: str, bias: np.ndarray) -> np.ndarray:
    """The bias b of the gate whose sigma(b) is the kept fraction: the LSTM's b_f; our GRU's
    h_t = (1 - z) h_{t-1} + z h~ keeps 1 - z = sigma(-b_z), so -b_z. Chrono makes it log u."""
    gates = gate_biases(name, bias)
    return gates["f"] if name == "lstm" else -gates["z"]


def cell_weights(cell, seed: int = 0) -> dict:
    return jax.jit(lambda key: cell.init(key, FEATURES, method="weights")["params"])(
        jax.random.key(seed)
    )


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", list(GATED))
def test_chrono_sets_the_keeping_gates_and_leaves_the_other_biases(name, param_dtype):
    n = 64
    cell = GATED[name](n, chrono=T_MAX, param_dtype=param_dtype)
    if param_dtype == "float32":
        bias = cell_weights(cell)["bias"]  # through init, as a model creates it
    else:  # the bias initialiser alone: CPU's QR (the orthogonal kernels) has no bfloat16
        shape = (cell.num_gates * n,)
        bias = jax.jit(cell.bias_init, static_argnums=(1, 2))(jax.random.key(0), shape, "bfloat16")
    assert bias.dtype == jnp.dtype(param_dtype) and bias.shape == (cell.num_gates * n,)
    gates = gate_biases(name, bias)
    kept = kept_bias(name, bias)
    assert kept.min() >= 0 and kept.max() <= np.log(T_MAX - 1) + 1e-6
    assert len(np.unique(kept)) > n // 2  # a time per unit, not one shared value
    if name == "lstm":
        assert np.all(gates["f"] >= 0)  # remembers: b_f = log u
        np.testing.assert_array_equal(gates["i"], -gates["f"])  # writes as much less, exactly
        untouched = ["g", "o"]
    else:
        assert np.all(gates["z"] <= 0)  # z writes here, so b_z = -log u
        untouched = ["r", "n"]
    for gate in untouched:
        np.testing.assert_array_equal(gates[gate], 0)


def ks_distance(samples: np.ndarray, cdf) -> float:
    """Kolmogorov-Smirnov distance between the samples' empirical CDF and `cdf`."""
    x = np.sort(samples)
    f = cdf(x)
    steps = np.arange(1, len(x) + 1) / len(x)
    return float(max(np.max(steps - f), np.max(f - (steps - 1 / len(x)))))


def uniform_times_distance(kept: np.ndarray, t_max: int) -> float:
    """KS distance of u = exp(b) from U(1, t_max - 1)."""
    return ks_distance(np.exp(kept), lambda u: np.clip((u - 1) / (t_max - 2), 0, 1))


@pytest.mark.parametrize("t_max", [3, 50, 1000])
@pytest.mark.parametrize("name", list(GATED))
def test_chrono_times_are_uniform_on_1_to_t_max_minus_1(name, t_max):
    n = 20_000  # the bias initialiser alone: the kernels of so wide a cell would take long
    cell = GATED[name](n, chrono=t_max)
    bias = jax.jit(cell.bias_init, static_argnums=(1, 2))(
        jax.random.key(1), (cell.num_gates * n,), jnp.float32
    )
    u = np.exp(kept_bias(name, bias))
    assert u.min() >= 1 - 1e-5 and u.max() <= t_max - 1 + 1e-3
    assert abs(u.mean() / (t_max / 2) - 1) < 0.02  # E u = t_max / 2; its s.e. here is < 0.5%
    assert abs(np.median(u) / (t_max / 2) - 1) < 0.02
    # KS at the 0.1% level: 1.95 / sqrt(n) = 0.0138
    assert uniform_times_distance(np.log(u), t_max) < 1.95 / np.sqrt(n)


def test_uniform_times_check_rejects_uniform_biases():
    # the check above has power: biases uniform on [0, log(T - 1)] (times log-uniform) fail it
    n = 20_000
    biases = np.random.default_rng(0).uniform(0, np.log(T_MAX - 1), n)
    assert uniform_times_distance(biases, T_MAX) > 10 * 1.95 / np.sqrt(n)


@pytest.mark.parametrize("name", list(GATED))
def test_chrono_changes_no_other_initial_value(name):
    default = cell_weights(GATED[name](8))
    chrono = cell_weights(GATED[name](8, chrono=T_MAX))
    assert default.keys() == chrono.keys()
    for key in default:
        if key != "bias":  # kernels (and the GRU's recurrent bias b_h) bit for bit
            np.testing.assert_array_equal(default[key], chrono[key], err_msg=key)


@pytest.mark.parametrize("forget_bias", [1.0, 2.0])
def test_default_lstm_bias_is_forget_bias_on_the_forget_gate_only(forget_bias):
    n = 8
    bias = cell_weights(LSTMCell(n, forget_bias=forget_bias, parent=None))["bias"]
    expected = np.concatenate([np.zeros(n), np.full(n, forget_bias), np.zeros(2 * n)])
    np.testing.assert_array_equal(bias, expected.astype(np.float32))  # i, f, g, o


@pytest.mark.parametrize("name", ["gru", "gru_reset_after"])
def test_default_gru_biases_are_zero(name):
    weights = cell_weights(GATED[name](8))
    np.testing.assert_array_equal(weights["bias"], np.zeros(24, np.float32))
    if "recurrent_bias" in weights:
        np.testing.assert_array_equal(weights["recurrent_bias"], np.zeros(8, np.float32))


@pytest.mark.parametrize("t_max", [2, 1, 0, -5, 2.5, True])
@pytest.mark.parametrize("name", list(GATED))
def test_a_bad_t_max_is_a_config_error(name, t_max):
    with pytest.raises(ConfigError, match="chrono"):
        cell_weights(GATED[name](8, chrono=t_max))


def test_chrono_and_another_forget_bias_is_a_config_error():
    with pytest.raises(ConfigError, match="forget_bias"):
        cell_weights(LSTMCell(8, forget_bias=2.0, chrono=T_MAX, parent=None))


# The models: a `chrono` field passed to every cell they build.

TOKENS = jnp.zeros((2, 5), jnp.int32)
SEQ2SEQ_INPUTS = {"source": TOKENS, "target": jnp.zeros((2, 4), jnp.int32)}
MODEL_CASES = {  # every place a model builds cells: layers, backward layers, decoder cells
    "rnn_lstm_bidirectional": ("rnn", dict(cell="lstm", bidirectional=True, num_layers=2)),
    "rnn_tagger_gru_reset_after": ("rnn_tagger", dict(cell="gru", reset_after=True)),
    "rnn_lm_lstm": ("rnn_lm", dict(cell="lstm")),
    "seq2seq_gru_bahdanau_bidirectional": (
        "rnn_seq2seq",
        dict(cell="gru", attention="bahdanau", bidirectional=True),
    ),
}


def model_params(name: str, **fields) -> dict:
    model = MODELS[name](hidden_size=16, vocab_size=11, embed_size=6, **fields)
    inputs = SEQ2SEQ_INPUTS if name == "rnn_seq2seq" else TOKENS
    return jax.jit(model.init)(jax.random.key(0), inputs)["params"]


def cells_in(params: dict, path: str = "") -> dict[str, dict]:
    """Every cell's weights in a model's parameters (a dict holding a recurrent_kernel), by path."""
    if "recurrent_kernel" in params:
        return {path: params}
    found = {}
    for key, value in params.items():
        if isinstance(value, dict):
            found.update(cells_in(value, f"{path}/{key}"))
    return found


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_model_chrono_reaches_every_cell_and_nothing_else(case):
    name, fields = MODEL_CASES[case]
    default = model_params(name, **fields)
    chrono = model_params(name, **fields, chrono=T_MAX)
    cells = cells_in(chrono)
    layers = fields.get("num_layers", 1)
    encoders = layers * (2 if fields.get("bidirectional") else 1)
    assert len(cells) == encoders + (layers if name == "rnn_seq2seq" else 0)  # and decoders
    kept = {path: kept_bias(fields["cell"], cell["bias"]) for path, cell in cells.items()}
    for path, bias in kept.items():
        assert bias.min() >= 0 and bias.max() <= np.log(T_MAX - 1) + 1e-6, path
        assert len(np.unique(bias)) > 1, path
    draws = list(kept.values())
    for i, a in enumerate(draws):  # each cell its own draw
        assert not any(np.array_equal(a, b) for b in draws[i + 1 :])
    # everything else bit for bit, and the default's biases those of forget_bias (LSTM) or 0
    chex.assert_trees_all_equal(without_cell_biases(default), without_cell_biases(chrono))
    for path, cell in cells_in(default).items():
        for gate, bias in gate_biases(fields["cell"], cell["bias"]).items():
            np.testing.assert_array_equal(bias, 1.0 if gate == "f" else 0.0, err_msg=path)


def without_cell_biases(params: dict) -> dict:
    """The parameters less each cell's gate biases."""
    if "recurrent_kernel" in params:
        return {k: v for k, v in params.items() if k != "bias"}
    return {k: without_cell_biases(v) if isinstance(v, dict) else v for k, v in params.items()}


@pytest.mark.parametrize("name", ["rnn", "rnn_tagger", "rnn_lm"])
def test_chrono_on_an_elman_model_is_a_config_error(name):
    with pytest.raises(ConfigError, match="chrono"):
        model_params(name, cell="elman", chrono=T_MAX)


@pytest.mark.parametrize("name", ["rnn", "rnn_seq2seq"])
def test_model_with_a_bad_t_max_is_a_config_error(name):
    with pytest.raises(ConfigError, match="chrono"):
        model_params(name, cell="gru", chrono=2)


def test_elman_cell_has_no_chrono_field():
    assert "chrono" not in {f for f in ElmanCell.__dataclass_fields__}


# `python -m train`: the field is the option --model.chrono.


@pytest.mark.parametrize("model", ["rnn", "rnn_tagger", "rnn_lm", "rnn_seq2seq"])
def test_chrono_is_a_command_line_option(model):
    from train.__main__ import Command

    args = [model, "copy", "--model.chrono", "50"]
    command = tyro.cli(Command, args=args, config=(tyro.conf.CascadeSubcommandArgs,))
    assert command.model.chrono == 50
    default = tyro.cli(Command, args=[model, "copy"], config=(tyro.conf.CascadeSubcommandArgs,))
    assert default.model.chrono is None


def test_command_line_rejects_a_bad_t_max(capsys, tmp_path):
    argv = ["rnn", "copy", "--model.chrono", "2", "--model.hidden-size", "8", "--steps", "1"]
    argv += ["--run-dir", str(tmp_path), "--progress", "off", "--no-tensorboard"]
    assert "chrono" in cli_error(capsys, argv)
