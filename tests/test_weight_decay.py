"""The weight-decay mask (train/optim.py: DECAYED, NOT_DECAYED, decays): decided by what a
parameter is, never by its shape. Every registered model's every parameter against a hand-written
expectation; no model may have a parameter that no rule names; the mask is the same for AdamW's
decoupled decay and for the L2 term of sgd / momentum / adam; the optimizer state's structure
does not depend on it (old checkpoints restore); and AdamW with it equals torch.optim.AdamW with
decay / no-decay parameter groups.

Legend: b batch, t time, d model width. In the expectations True means decayed; a path ending
in '?' is optional (a parameter that one version of a model has and another lacks)."""

import re

import chex
import flax.linen as nn
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

# ---------------------------------------------------------------------------------------------
# hand-written expectations, built from the pieces every model shares


def dense(name: str, bias: bool = True) -> dict[str, bool]:
    """nn.Dense / nn.Conv / RowDense: the kernel decays, the bias does not."""
    return {f"{name}/kernel": True, **({f"{name}/bias": False} if bias else {})}


def norm(name: str) -> dict[str, bool]:
    """LayerNorm / BatchNorm: neither scale nor bias decays."""
    return {f"{name}/scale": False, f"{name}/bias": False}


def table(name: str) -> dict[str, bool]:
    """A token embedding table decays."""
    return {f"{name}/embedding": True}


POSITIONS = {"positions/table/embedding": False}  # the learned position table does not


def attention(prefix: str) -> dict[str, bool]:
    """query / key / value kernels [d, h, e] and out [h, e, d] decay; their biases ([h, e] for
    query / key / value: two axes, still biases) do not."""
    return {
        k: v for p in ("query", "key", "value", "out") for k, v in dense(f"{prefix}/{p}").items()
    }


def transformer_block(prefix: str, cross: bool = False) -> dict[str, bool]:
    out = attention(f"{prefix}/self_attention")
    if cross:
        out |= attention(f"{prefix}/cross")
    out |= dense(f"{prefix}/feed_forward/hidden") | dense(f"{prefix}/feed_forward/output")
    for i in range(3 if cross else 2):
        out |= norm(f"{prefix}/norms_{i}")
    return out


def stack(name: str, num_layers: int = 1, cross: bool = False, scanned: bool = False):
    blocks = [f"{name}/layers"] if scanned else [f"{name}/blocks_{i}" for i in range(num_layers)]
    out = norm(f"{name}/final_norm")
    for block in blocks:
        out |= transformer_block(block, cross)
    return out


def cell(prefix: str, recurrent_bias: bool = False) -> dict[str, bool]:
    """A recurrent cell: input and recurrent kernels decay, the biases do not."""
    out = {f"{prefix}/input_kernel": True, f"{prefix}/recurrent_kernel": True}
    out[f"{prefix}/bias"] = False
    if recurrent_bias:
        out[f"{prefix}/recurrent_bias"] = False  # the GRU's b_hn (reset_after)
    return out


def linear_block(prefix: str, mixer: dict[str, bool]) -> dict[str, bool]:
    out = {f"{prefix}/mix/{k}": v for k, v in mixer.items()}
    out |= dense(f"{prefix}/mlp/gate") | dense(f"{prefix}/mlp/up") | dense(f"{prefix}/mlp/down")
    return out | norm(f"{prefix}/norms_0") | norm(f"{prefix}/norms_1")


LRU = {
    "nu_log": False,  # |lambda| = exp(-exp(nu_log))
    "theta_log": False,
    "gamma_log?": False,  # the trained normalisation (absent when tied)
    "input_re": False,  # B: the recurrence group the reference LRU does not decay
    "input_im": False,
    "output_re": True,  # C: a read-out projection [n, d]
    "output_im": True,
    "skip": False,  # D
}
MAMBA = {
    "a_log": False,  # A = -exp(A_log)
    "skip": False,  # D
    "dt_proj/kernel": True,  # the rank-r step-size projection
    "dt_proj/bias": False,  # softplus^-1 of the initial steps
    "conv": True,  # the depthwise convolution kernel [w, e]
    "conv_bias": False,
    "in_proj/kernel": True,
    "x_proj/kernel": True,
    "out_proj/kernel": True,
}
GATED = dense("gates") | dense("output")  # minGRU / minLSTM

TOKENS = jnp.zeros((2, 8), jnp.int32)
FEATURES = jnp.zeros((2, 8, 5))
IMAGES = jnp.zeros((2, 8, 8, 1))
SEQ2SEQ = {"source": jnp.zeros((2, 6), jnp.int32), "target": jnp.zeros((2, 5), jnp.int32)}
SIZES = dict(num_layers=1, features=16, num_heads=2, max_len=32)
LINEAR = dict(features=8, state_size=4, num_layers=1)
RNN = dict(hidden_size=8, embed_size=4)
S2S = dict(vocab_size=11, num_outputs=11, source_vocab_size=7, cell="lstm", **RNN)


def cases() -> dict[str, tuple[nn.Module, object, dict[str, bool]]]:
    """name -> (model, example input, expectation), every registered model at least once, in
    each layout that changes its parameters."""
    m = MODELS
    out = {
        "perceptron": (m["perceptron"](), jnp.zeros((2, 5)), dense("head")),
        "mlp": (
            m["mlp"](hidden_sizes=(8, 6)),
            jnp.zeros((2, 5)),
            dense("hidden_0") | dense("hidden_1") | dense("head"),
        ),
        "lenet": (
            m["lenet"](channels=(4, 4), dense_sizes=(8,)),
            IMAGES,
            dense("conv_0") | dense("conv_1") | dense("dense_0") | dense("head"),
        ),
        "resnet": (
            m["resnet"](stage_channels=(4, 8)),
            IMAGES,
            dense("stem", bias=False)
            | norm("stem_norm")
            | dense("stage_0_block_0/conv_0", bias=False)
            | dense("stage_0_block_0/conv_1", bias=False)
            | norm("stage_0_block_0/norm_0")
            | norm("stage_0_block_0/norm_1")
            | dense("stage_1_block_0/conv_0", bias=False)
            | dense("stage_1_block_0/conv_1", bias=False)
            | dense("stage_1_block_0/conv_proj", bias=False)
            | norm("stage_1_block_0/norm_0")
            | norm("stage_1_block_0/norm_1")
            | norm("stage_1_block_0/norm_proj")
            | dense("head"),
        ),
        "detector": (
            m["detector"](channels=(4, 8), grid_channels=8),
            jnp.zeros((2, 16, 16, 1)),
            dense("conv_0") | dense("conv_1") | dense("grid_conv") | dense("head"),
        ),
        "rnn_tagger features": (
            m["rnn_tagger"](hidden_size=8),
            FEATURES,
            cell("layer_0/cell") | dense("head"),
        ),
        "rnn_lm": (
            m["rnn_lm"](**RNN),
            TOKENS,
            table("embedding") | cell("layers_0/cell") | dense("head"),
        ),
        "transformer": (
            m["transformer"](**SIZES, vocab_size=11, num_outputs=3),
            TOKENS,
            {"cls": False} | table("embedding") | POSITIONS | stack("encoder") | dense("Dense_0"),
        ),
        "transformer features mean rotary": (
            m["transformer"](**SIZES, num_outputs=3, pool="mean", positional="rotary"),
            FEATURES,
            dense("embedding") | stack("encoder") | dense("Dense_0"),  # features: a Dense
        ),
        "bert": (
            m["bert"](**SIZES, vocab_size=11, num_outputs=11),
            TOKENS,
            table("embedding")
            | {"token_type/embedding?": True}  # BERT's segment table: a token embedding
            | {"embedding_norm/scale?": False, "embedding_norm/bias?": False}
            | POSITIONS
            | stack("encoder")
            | dense("transform")
            | norm("transform_norm")
            | {"output_bias": False},
        ),
        "gpt": (
            m["gpt"](**SIZES, vocab_size=11, num_outputs=11),
            TOKENS,
            table("embedding") | POSITIONS | stack("decoder"),
        ),
        "gpt untied scanned 2 layers": (
            m["gpt"](
                **SIZES | {"num_layers": 2},
                vocab_size=11,
                num_outputs=11,
                tie_embeddings=False,
                scan_layers=True,
            ),
            TOKENS,
            # scanned: every parameter has a leading layer axis, a bias [l, d] is still a bias
            table("embedding") | POSITIONS | stack("decoder", scanned=True) | dense("head"),
        ),
        "transformer_seq2seq": (
            m["transformer_seq2seq"](
                **SIZES, vocab_size=11, num_outputs=11, source_vocab_size=7, tie_embeddings=False
            ),
            SEQ2SEQ,
            table("embedding")
            | table("source_embedding")
            | POSITIONS
            | stack("encoder")
            | stack("decoder", cross=True)
            | dense("head"),
        ),
        "vit": (
            m["vit"](**SIZES, num_outputs=10),
            jnp.zeros((2, 8, 8)),
            {"cls": False}
            | dense("patch_embedding")
            | POSITIONS
            | stack("encoder")
            | dense("Dense_0"),
        ),
        "word2vec": (
            m["word2vec"](vocab_size=11, embed_size=4, num_outputs=3),
            jnp.zeros((2, 4), jnp.int32),
            table("center") | table("context"),
        ),
    }
    for kind, recurrent_bias in (("elman", False), ("lstm", False), ("gru", True)):
        out[f"rnn {kind} bidirectional"] = (
            m["rnn"](cell=kind, vocab_size=11, reset_after=True, bidirectional=True, **RNN),
            TOKENS,
            table("embedding")
            | cell("layer_0/cell", recurrent_bias)
            | cell("layer_0_backward/cell", recurrent_bias)
            | dense("head"),
        )
    linear_head = lambda tokens: (
        (table("embedding") if tokens else dense("projection")) | norm("final_norm") | dense("head")
    )
    for mixer, expected in (("lru", LRU), ("mingru", GATED), ("minlstm", GATED), ("mamba", MAMBA)):
        out[f"linear_rnn {mixer}"] = (
            m["linear_rnn"](mixer=mixer, **LINEAR, num_outputs=3),
            FEATURES,
            linear_block("blocks_0", expected) | linear_head(False),
        )
    out["linear_rnn_tagger mamba"] = (
        m["linear_rnn_tagger"](mixer="mamba", **LINEAR, num_outputs=3),
        FEATURES,
        linear_block("blocks_0", MAMBA) | linear_head(False),
    )
    out["linear_rnn_lm lru"] = (
        m["linear_rnn_lm"](**LINEAR, vocab_size=11, num_outputs=11),
        TOKENS,
        linear_block("blocks_0", LRU) | linear_head(True),
    )
    encoder = (
        cell("encoder_0/cell") | table("embedding") | table("source_embedding") | dense("head")
    )
    bridge = cell("encoder_backward_0/cell") | dense("bridge_0") | dense("bridge_1")
    out["rnn_seq2seq bidirectional"] = (
        m["rnn_seq2seq"](**S2S, bidirectional=True),
        SEQ2SEQ,
        encoder | bridge | cell("decoder_0/cell"),
    )
    out["rnn_seq2seq bahdanau"] = (
        m["rnn_seq2seq"](**S2S, attention="bahdanau", bidirectional=True),
        SEQ2SEQ,
        encoder
        | bridge
        | cell("decoder_cells_0")
        | {"attention_query": True, "attention_score": True}  # W_s [n, a] and v [a, 1]
        | dense("attention_memory")
        | dense("combine"),
    )
    out["rnn_seq2seq luong_general"] = (
        m["rnn_seq2seq"](**S2S, attention="luong_general"),
        SEQ2SEQ,
        encoder | cell("decoder_0/cell") | dense("attention_memory", bias=False) | dense("combine"),
    )
    return out


CASES = cases()


def param_shapes(model: nn.Module, example) -> dict[str, jax.ShapeDtypeStruct]:
    """'path/to/leaf' -> the abstract parameter (no compute)."""
    variables = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), example)))
    return flatten_dict(variables["params"], sep="/")


def expected_decay(expectation: dict[str, bool], paths) -> dict[str, bool]:
    """path -> decayed from the expectation, for exactly the model's `paths`; fails on a path
    the expectation does not name and on a required path the model lacks."""
    required = {k: v for k, v in expectation.items() if not k.endswith("?")}
    optional = {k[:-1]: v for k, v in expectation.items() if k.endswith("?")}
    paths = set(paths)
    unexpected = sorted(paths - set(required) - set(optional))
    missing = sorted(set(required) - paths)
    assert not unexpected and not missing, f"unexpected {unexpected}, missing {missing}"
    return {p: {**optional, **required}[p] for p in paths}


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
