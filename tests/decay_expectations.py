"""The hand-written weight-decay expectation of every registered model's every parameter
(tests/test_weight_decay.py checks train/optim.py's mask against it): built from the pieces
the models share, with `CASES` (name -> model, example input, expectation), `param_shapes` and
`expected_decay`.

Legend: b batch, t time, d model width. True means decayed; a path ending in '?' is optional
(a parameter that one version of a model has and another lacks)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.traverse_util import flatten_dict

from arch import MODELS

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
