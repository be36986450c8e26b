"""Parity with the reference implementations: `bert` with norm="post" computes Hugging Face's
BertForMaskedLM and `gpt` computes GPT2LMHeadModel, on the same weights. Each reference is built
from a tiny config in code, with random weights (nothing is downloaded); the converters below map
its state dict onto our parameters. Skipped unless torch and transformers import (the
`reference` extra, with torch installed separately, e.g. `pip install torch==2.13.0`).

Legend: b batch, t time (tokens), d model width, h heads, e head width, f feed-forward width,
v vocabulary.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402

from arch import MaskedLanguageModel, TransformerLM  # noqa: E402
from train.hf import from_gpt2  # noqa: E402

VOCAB, D, H, F, LAYERS, POSITIONS = 37, 32, 4, 64, 2, 16
E = D // H
B, T = 3, 9
TOLERANCE = dict(rtol=1e-5, atol=1e-5)
TOKENS = np.random.default_rng(0).integers(0, VOCAB, (B, T))  # [b, t]


def perturbed(model: "torch.nn.Module", seed: int) -> "torch.nn.Module":
    """`model` in eval mode with noise added to every parameter (LayerNorm scales and biases
    too, so that none is at its initial ones / zeros)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def numpy_state(model: "torch.nn.Module") -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}


def norm(w: dict, prefix: str) -> dict:
    return {"scale": w[prefix + ".weight"], "bias": w[prefix + ".bias"]}


def linear(w: dict, prefix: str) -> dict:
    """torch.nn.Linear's weight [out, in] -> our kernel [in, out]."""
    return {"kernel": w[prefix + ".weight"].T, "bias": w[prefix + ".bias"]}


def heads(kernel: np.ndarray, bias: np.ndarray) -> dict:
    """A projection d -> h * e: kernel [d, h*e] -> [d, h, e], bias [h*e] -> [h, e]."""
    return {"kernel": kernel.reshape(D, H, E), "bias": bias.reshape(H, E)}


def out_projection(kernel: np.ndarray, bias: np.ndarray) -> dict:
    """The attention's out projection h * e -> d: kernel [h*e, d] -> [h, e, d]."""
    return {"kernel": kernel.reshape(H, E, D), "bias": bias}


# BERT


def bert_reference() -> "torch.nn.Module":
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=D,
        num_hidden_layers=LAYERS,
        num_attention_heads=H,
        intermediate_size=F,
        max_position_embeddings=POSITIONS,
        type_vocab_size=2,
        hidden_act="gelu",  # BertConfig's default: the exact GELU
        layer_norm_eps=1e-12,
        attn_implementation="eager",
    )
    return perturbed(transformers.BertForMaskedLM(config), seed=0)


def bert_params(w: dict) -> dict:
    """BertForMaskedLM's state dict -> MaskedLanguageModel(norm="post", token_types=2)."""
    params = {
        "embedding": {"embedding": w["bert.embeddings.word_embeddings.weight"]},
        "token_type": {"embedding": w["bert.embeddings.token_type_embeddings.weight"]},
        "positions": {"table": {"embedding": w["bert.embeddings.position_embeddings.weight"]}},
        "embedding_norm": norm(w, "bert.embeddings.LayerNorm"),
        "encoder": {},
        "transform": linear(w, "cls.predictions.transform.dense"),
        "transform_norm": norm(w, "cls.predictions.transform.LayerNorm"),
        "output_bias": w["cls.predictions.bias"],
    }
    for i in range(LAYERS):
        layer = f"bert.encoder.layer.{i}."
        attention = {
            name: heads(*linear(w, layer + "attention.self." + name).values())
            for name in ("query", "key", "value")
        }
        attention["out"] = out_projection(*linear(w, layer + "attention.output.dense").values())
        params["encoder"][f"blocks_{i}"] = {
            "self_attention": attention,
            "norms_0": norm(w, layer + "attention.output.LayerNorm"),
            "feed_forward": {
                "hidden": linear(w, layer + "intermediate.dense"),
                "output": linear(w, layer + "output.dense"),
            },
            "norms_1": norm(w, layer + "output.LayerNorm"),
        }
    return params


SIZES = dict(
    vocab_size=VOCAB,
    num_outputs=VOCAB,
    num_layers=LAYERS,
    features=D,
    num_heads=H,
    ffn_hidden=F,
    max_len=POSITIONS,
)
"""The sizes both references and our models are built with."""
BERT = dict(
    SIZES,
    norm="post",  # BERT's shape: post-norm blocks, LayerNorm over the embeddings
    token_types=2,
    activation="gelu_exact",
    layer_norm_eps=1e-12,
)


@pytest.fixture(scope="module")
def bert():
    reference = bert_reference()
    return reference, {"params": bert_params(numpy_state(reference))}


def test_bert_with_post_norm_equals_bert_for_masked_lm(bert):
    reference, variables = bert
    mask = np.arange(T)[None, :] < np.array([T, 5, 7])[:, None]  # [b, t], padded ends
    types = np.random.default_rng(1).integers(0, 2, (B, T))
    with torch.no_grad():
        expected = reference(
            input_ids=torch.tensor(TOKENS),
            attention_mask=torch.tensor(mask.astype(np.int64)),
            token_type_ids=torch.tensor(types),
        ).logits.numpy()
    model = MaskedLanguageModel(**BERT)
    logits = model.apply(
        variables, jnp.asarray(TOKENS, jnp.int32), mask=mask, token_type_ids=jnp.asarray(types)
    )
    np.testing.assert_allclose(logits, expected, **TOLERANCE)


def test_bert_without_token_type_ids_is_of_type_zero(bert):
    reference, variables = bert
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(TOKENS)).logits.numpy()
    logits = MaskedLanguageModel(**BERT).apply(variables, jnp.asarray(TOKENS, jnp.int32))
    np.testing.assert_allclose(logits, expected, **TOLERANCE)


def test_each_piece_of_berts_shape_matters(bert):
    """Without the embedding LayerNorm or with the tanh GELU the logits move: the test above
    would notice either missing. (Flax's epsilon 1e-6 for BERT's 1e-12 moves them by ~2e-5
    here, at the tolerance: activations of variance ~1 hardly feel either.)"""
    reference, variables = bert
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(TOKENS)).logits.numpy()
    params = variables["params"]
    unnormed = {k: v for k, v in params.items() if k != "embedding_norm"}
    changes = [
        ({"embedding_norm": False}, unnormed),
        ({"activation": "gelu"}, params),
    ]
    for change, weights in changes:
        model = MaskedLanguageModel(**{**BERT, **change})
        logits = model.apply({"params": weights}, jnp.asarray(TOKENS, jnp.int32))
        assert np.abs(logits - expected).max() > 1e-4, change


# GPT-2


def gpt2_reference() -> "torch.nn.Module":
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=POSITIONS,
        n_embd=D,
        n_layer=LAYERS,
        n_head=H,
        n_inner=F,
        activation_function="gelu_new",  # GPT2Config's default: the tanh approximation
        layer_norm_epsilon=1e-5,
        attn_implementation="eager",
    )
    return perturbed(transformers.GPT2LMHeadModel(config), seed=1)


GPT2 = dict(
    SIZES,
    layer_norm_eps=1e-5,  # the rest is gpt's default: pre-norm, learned positions, tanh GELU
)


def test_gpt_equals_gpt2_lm_head_model():
    reference = gpt2_reference()
    tokens = np.random.default_rng(2).integers(0, VOCAB, (B, POSITIONS))  # every position
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(tokens)).logits.numpy()
    state = numpy_state(reference)
    np.testing.assert_array_equal(state["lm_head.weight"], state["transformer.wte.weight"])
    model = TransformerLM(**GPT2)
    variables = {"params": from_gpt2(model, state, "GPT2LMHeadModel")}  # train/hf.py's mapping
    logits = model.apply(variables, jnp.asarray(tokens, jnp.int32))
    np.testing.assert_allclose(logits, expected, **TOLERANCE)


def test_import_hf_and_export_hf_agree_with_gpt2_lm_head_model(tmp_path):
    """save_pretrained's directory imported as a run computes the reference's logits, and the
    run exported again loads into GPT2LMHeadModel.from_pretrained with every weight used."""
    from train.__main__ import main
    from train.load import load_run

    reference = gpt2_reference()
    reference.save_pretrained(tmp_path / "hf")
    task = ["markov", "--task.vocab-size", str(VOCAB), "--task.length", str(POSITIONS)]
    main(["import-hf", str(tmp_path / "hf"), *task, "--run-dir", str(tmp_path / "run")])
    main(["export-hf", str(tmp_path / "run"), str(tmp_path / "out")])
    loaded = load_run(str(tmp_path / "run"))
    tokens = np.random.default_rng(3).integers(0, VOCAB, (B, POSITIONS))
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(tokens)).logits.numpy()
    logits = loaded.model.apply(loaded.variables, jnp.asarray(tokens, jnp.int32))
    np.testing.assert_allclose(logits, expected, **TOLERANCE)
    exported, info = transformers.GPT2LMHeadModel.from_pretrained(
        tmp_path / "out", output_loading_info=True, attn_implementation="eager"
    )
    assert not any(info.values()), info  # no missing, unexpected or mismatched weight
    original, back = numpy_state(reference), numpy_state(exported)
    assert sorted(original) == sorted(back)
    for name, value in original.items():  # the same weights, bit for bit
        np.testing.assert_array_equal(back[name], value, err_msg=name)
    with torch.no_grad():
        theirs = exported.eval()(input_ids=torch.tensor(tokens)).logits.numpy()
    np.testing.assert_array_equal(theirs, expected)


def test_gpt2_initialisation_has_the_references_statistics():
    """initializer="gpt2" draws what GPT2PreTrainedModel._init_weights draws: the same std per
    kind of parameter (within sampling error) for the same config."""
    import jax
    from flax.traverse_util import flatten_dict

    config = dict(GPT2, features=128, num_heads=4, ffn_hidden=512, num_layers=4)
    reference = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            vocab_size=VOCAB, n_positions=POSITIONS, n_embd=128, n_layer=4, n_head=4, n_inner=512
        )
    )
    theirs = numpy_state(reference)
    model = TransformerLM(**config, initializer="gpt2")
    ours = flatten_dict(
        model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"], sep="/"
    )
    pairs = {  # ours (every layer) -> theirs (every layer)
        "self_attention/query/kernel": "attn.c_attn.weight",
        "self_attention/out/kernel": "attn.c_proj.weight",
        "feed_forward/hidden/kernel": "mlp.c_fc.weight",
        "feed_forward/output/kernel": "mlp.c_proj.weight",
    }
    std = lambda arrays: float(np.concatenate([a.ravel() for a in arrays]).std())
    for mine, reference_name in pairs.items():
        a = std(v for k, v in ours.items() if k.endswith(mine))
        b = std(v for k, v in theirs.items() if k.endswith(reference_name))
        assert a == pytest.approx(b, rel=0.03), (mine, a, b)
    for mine, reference_name in [
        ("embedding/embedding", "transformer.wte.weight"),
        ("positions/table/embedding", "transformer.wpe.weight"),
    ]:
        assert std([ours[mine]]) == pytest.approx(std([theirs[reference_name]]), rel=0.1)
