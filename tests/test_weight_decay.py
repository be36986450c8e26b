"""The weight-decay mask (train/optim.py: DECAYED, NOT_DECAYED, decays): decided by what a
parameter is, never by its shape. Every registered model's every parameter against a hand-written
expectation; no model may have a parameter that no rule names; the mask is the same for AdamW's
decoupled decay and for the L2 term of sgd / momentum / adam; the optimizer state's structure
does not depend on it (old checkpoints restore); and AdamW with it equals torch.optim.AdamW with
decay / no-decay parameter groups. The expectations are in tests/decay_expectations.py."""

import os
import re
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict

import train.optim
from arch import MODELS
from train.optim import (
    DECAYED,
    NOT_DECAYED,
    OptimConfig,
    decay_mask,
    decay_rule,
    decays,
    make_optimizer,
    unclassified,
)

sys.path.insert(0, os.path.dirname(__file__))
from decay_expectations import CASES, expected_decay, param_shapes  # noqa: E402


def test_every_registered_model_is_checked():
    assert {type(model) for model, _, _ in CASES.values()} == set(MODELS.values())


@pytest.mark.parametrize("name", CASES)
def test_every_parameter_is_decayed_as_expected(name):
    model, example, expectation = CASES[name]
    shapes = param_shapes(model, example)
    expected = expected_decay(expectation, shapes)
    ours = {path: decays(path) for path in shapes}
    wrong = {
        p: f"decays={ours[p]}, expected {expected[p]}" for p in shapes if ours[p] != expected[p]
    }
    assert not wrong, wrong
    # decay_mask on the real tree says the same as decays() path by path
    mask = flatten_dict(decay_mask(unflatten_dict(shapes, sep="/")), sep="/")
    assert mask == ours


@pytest.mark.parametrize("name", CASES)
def test_no_model_has_a_parameter_that_no_rule_names(name):
    """A new parameter name must be put in DECAYED or NOT_DECAYED (train/optim.py): until it is,
    it is not decayed, and this fails."""
    model, example, _ = CASES[name]
    missing = unclassified(unflatten_dict(param_shapes(model, example), sep="/"))
    assert not missing, (
        f"{name}: parameters that neither DECAYED nor NOT_DECAYED (train/optim.py) names: "
        f"{missing}; decide whether weight decay applies to them"
    )


@pytest.mark.parametrize(
    ("path", "decayed"),
    [
        ("decoder/blocks_0/self_attention/query/bias", False),  # [h, e]: two axes, a bias
        ("decoder/blocks_0/self_attention/key/bias", False),
        ("decoder/blocks_0/self_attention/value/bias", False),
        ("decoder/blocks_0/self_attention/query/kernel", True),
        ("cls", False),
        ("positions/table/embedding", False),  # an nn.Embed, but of positions
        ("embedding/embedding", True),
        ("token_type/embedding", True),
        ("embedding_norm/scale", False),
        ("embedding_norm/bias", False),
        ("decoder/layers/norms_0/scale", False),  # scanned: [l, d]
        ("blocks_0/mix/a_log", False),  # [e, n]
        ("blocks_0/mix/skip", False),
        ("blocks_0/mix/dt_proj/kernel", True),
        ("blocks_0/mix/dt_proj/bias", False),
        ("blocks_0/mix/x_proj/kernel", True),
        ("blocks_0/mix/conv", True),
        ("blocks_0/mix/nu_log", False),
        ("blocks_0/mix/theta_log", False),
        ("blocks_0/mix/gamma_log", False),
        ("blocks_0/mix/input_re", False),
        ("blocks_0/mix/output_im", True),
        ("layer_0/cell/input_kernel", True),
        ("layer_0/cell/recurrent_kernel", True),
        ("stage_0_block_0/conv_0/kernel", True),
        ("stem_norm/scale", False),
        ("center/embedding", True),
    ],
)
def test_named_parameters(path, decayed):
    assert decays(path) is decayed


def test_the_longest_rule_decides_and_an_unknown_name_is_not_decayed():
    assert decay_rule("positions/table/embedding") == ("table/embedding", False)
    assert decay_rule("embedding/embedding") == ("embedding", True)
    assert decay_rule("table") is None  # a rule matches whole names, not parts of them
    assert decay_rule("blocks_0/mystery") is None and not decays("blocks_0/mystery")
    assert decay_rule("my_kernel") is None  # not 'kernel'
    params = {"dense": {"kernel": jnp.ones((2, 2)), "mystery": jnp.ones((2, 2))}}
    assert decay_mask(params) == {"dense": {"kernel": True, "mystery": False}}
    assert unclassified(params) == ["dense/mystery"]
    assert not set(DECAYED) & set(NOT_DECAYED)


# ---------------------------------------------------------------------------------------------
# the mask in the optimizers

WD = 0.1


def random_params(shapes: dict[str, jax.ShapeDtypeStruct], seed: int = 0) -> dict[str, np.ndarray]:
    """Non-zero values of every parameter's shape (biases included, so that decaying one shows)."""
    rng = np.random.default_rng(seed)
    return {p: rng.normal(size=s.shape).astype(np.float32) for p, s in shapes.items()}


def ndim_mask(params):
    """The mask before this one: every parameter with more than one axis."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def several(*names: str) -> tuple[dict[str, jax.ShapeDtypeStruct], dict[str, bool]]:
    """The parameters of several cases as one tree ('case/path/to/leaf': the rules read path
    suffixes, so the prefix changes nothing) and their expected decay: one compiled program
    covers them all."""
    shapes, expected = {}, {}
    for name in names:
        model, example, expectation = CASES[name]
        own = param_shapes(model, example)
        shapes |= {f"{name}/{p}": s for p, s in own.items()}
        expected |= {f"{name}/{p}": d for p, d in expected_decay(expectation, own).items()}
    return shapes, expected


MIXED = (
    "gpt untied scanned 2 layers",
    "vit",
    "linear_rnn mamba",
    "linear_rnn lru",
    "rnn gru bidirectional",
)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "adamw"])
def test_decay_moves_exactly_the_decayed_parameters_for_every_optimizer(name):
    """One update from zero gradients: only weight decay moves anything (Adam's m / sqrt(v) is 0
    for a zero gradient; L2 makes the gradient wd * p), so the parameters that moved are the
    mask, the same for AdamW's decoupled decay and for the L2 of sgd / momentum / adam."""
    shapes, expected = several(*MIXED)
    params = unflatten_dict(random_params(shapes), sep="/")
    tx = make_optimizer(OptimConfig(name=name, lr=0.01, weight_decay=WD), total_steps=1)
    zeros = jax.tree.map(np.zeros_like, params)
    updates, _ = jax.jit(lambda g, p: tx.update(g, tx.init(p), p))(zeros, params)
    moved = {p: bool(np.any(np.asarray(u))) for p, u in flatten_dict(updates, sep="/").items()}
    assert moved == expected


def test_decay_with_frozen_parameters():
    """multi_transform hands the trainable part (frozen leaves masked out) to the decay."""
    model, example, expectation = CASES["gpt"]
    shapes = param_shapes(model, example)
    params = unflatten_dict(random_params(shapes), sep="/")
    config = OptimConfig(name="adamw", lr=0.01, weight_decay=WD, freeze=("feed_forward",))
    tx = make_optimizer(config, total_steps=1)
    zeros = jax.tree.map(np.zeros_like, params)
    updates, _ = jax.jit(lambda g, p: tx.update(g, tx.init(p), p))(zeros, params)
    moved = {p: bool(np.any(np.asarray(u))) for p, u in flatten_dict(updates, sep="/").items()}
    expected = expected_decay(expectation, shapes)
    assert moved == {p: d and "feed_forward" not in p for p, d in expected.items()}
    assert any("feed_forward" in p and d for p, d in expected.items())  # something was frozen


@pytest.mark.parametrize(
    "config",
    [
        OptimConfig(name="adamw", weight_decay=WD),
        OptimConfig(name="adam", weight_decay=WD),
        OptimConfig(name="momentum", weight_decay=WD, clip_norm=1.0, accumulate=2),
        OptimConfig(
            name="adamw", weight_decay=WD, freeze=("embedding",), lr_scale=(("bias", 0.5),)
        ),
    ],
)
def test_the_optimizer_state_does_not_depend_on_the_mask(config, monkeypatch):
    """The same tree, shapes and dtypes as under the old ndim > 1 mask: checkpoints written before
    restore unchanged (optax.masked keeps no per-parameter state for add_decayed_weights)."""
    model, example, _ = CASES["gpt untied scanned 2 layers"]
    params = unflatten_dict(param_shapes(model, example), sep="/")
    abstract = lambda: jax.eval_shape(make_optimizer(config, total_steps=10).init, params)
    ours = abstract()
    monkeypatch.setattr(train.optim, "decay_mask", ndim_mask)
    old = abstract()
    assert jax.tree.structure(ours) == jax.tree.structure(old)
    chex.assert_trees_all_equal_shapes_and_dtypes(ours, old)


# ---------------------------------------------------------------------------------------------
# against PyTorch's AdamW with decay / no-decay parameter groups

STEPS = 5
ADAMW = dict(lr=0.01, b1=0.9, b2=0.95, eps=1e-8, weight_decay=WD)


def ours_after_steps(params: dict[str, np.ndarray], grads: list[dict[str, np.ndarray]]):
    """Our AdamW (train.optim.make_optimizer) after one update per gradient, the updates one
    scanned program."""
    tx = make_optimizer(OptimConfig(name="adamw", **ADAMW), total_steps=STEPS)

    @jax.jit
    def run(params, grads):
        def update(carry, g):
            params, state = carry
            updates, state = tx.update(g, state, params)
            return (optax.apply_updates(params, updates), state), None

        return jax.lax.scan(update, (params, tx.init(params)), grads)[0][0]

    stacked = {p: np.stack([g[p] for g in grads]) for p in params}
    tree = lambda flat: unflatten_dict(flat, sep="/")
    return flatten_dict(run(tree(params), tree(stacked)), sep="/")


def test_adamw_matches_torch_adamw_with_parameter_groups(monkeypatch):
    """A GPT (attention biases, learned positions, tied embedding), a ViT (class token) and a
    Mamba model (a_log, skip, the step size) at once; PyTorch's groups from the hand-written
    expectations."""
    torch = pytest.importorskip("torch")
    shapes, decayed = several("gpt", "vit", "linear_rnn mamba")
    assert any(decayed.values()) and not all(decayed.values())
    params = random_params(shapes)
    rng = np.random.default_rng(1)
    grads = [
        {p: (rng.normal(size=v.shape) * 0.1).astype(np.float32) for p, v in params.items()}
        for _ in range(STEPS)
    ]

    # PyTorch in float64: two groups, by the hand-written expectation
    tensors = {p: torch.tensor(v.astype(np.float64), requires_grad=True) for p, v in params.items()}
    groups = [
        {"params": [tensors[p] for p in tensors if decayed[p]], "weight_decay": WD},
        {"params": [tensors[p] for p in tensors if not decayed[p]], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(
        groups, lr=ADAMW["lr"], betas=(ADAMW["b1"], ADAMW["b2"]), eps=ADAMW["eps"]
    )
    for g in grads:
        for p, t in tensors.items():
            t.grad = torch.tensor(g[p].astype(np.float64))
        optimizer.step()
    theirs = {p: t.detach().numpy() for p, t in tensors.items()}

    ours = ours_after_steps(params, grads)
    for p in params:
        np.testing.assert_allclose(ours[p], theirs[p], rtol=1e-6, atol=1e-7, err_msg=p)
    # the comparison means something: every parameter moved, and the decay shows
    assert all(np.max(np.abs(theirs[p] - params[p])) > 1e-3 for p in params)

    # the old ndim > 1 mask does not match: it decays the attention biases, the class token,
    # the position table, Mamba's a_log
    monkeypatch.setattr(train.optim, "decay_mask", ndim_mask)
    old = ours_after_steps(params, grads)
    off = [p for p in params if not np.allclose(old[p], theirs[p], rtol=1e-6, atol=1e-7)]
    assert off and all(not decayed[p] for p in off), off
    assert {re.sub(r".*/", "", p) for p in off} & {"bias", "cls", "embedding", "a_log"}
