"""train/measure/torch_models.py: PyTorch's forms of the sequence families for the flagship
study's best-against-best column compute what they should (cached decoding equals the full
forward pass, the parameter counts are ours but for PyTorch's second recurrent bias, AdamW
decays what ours decays), and `recurrence_vs_attention --reference torch` measures them beside
ours. Skipped unless torch imports (the `bench` extra)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from experiments import recurrence_vs_attention as study  # noqa: E402
from experiments.common import families  # noqa: E402
from train.measure import torch_models  # noqa: E402

WIDTH, LAYERS, HEADS, MAX_LEN = 32, 2, 4, 40
GATES = {"elman": 1, "lstm": 4, "gru": 3, "gpt": 0}


def model(family: str):
    torch.manual_seed(0)
    return torch_models.language_model(torch, family, WIDTH, LAYERS, 256, HEADS, MAX_LEN).eval()


@pytest.mark.parametrize("family", torch_models.FAMILIES)
def test_cached_decoding_equals_the_full_forward_pass(family):
    lm, tokens = (
        model(family),
        torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1)),
    )
    with torch.inference_mode():
        full, _ = lm(tokens)
        cache = torch_models.kv_cache(torch, lm, 2, MAX_LEN, HEADS)
        logits, cache = lm(tokens[:, :5], cache, 0)  # a prompt, then one token at a time
        pieces = [logits]
        for i in range(5, 12):
            logits, cache = lm(tokens[:, i : i + 1], cache, i)
            pieces.append(logits)
    np.testing.assert_allclose(torch.cat(pieces, 1).numpy(), full.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", torch_models.FAMILIES)
def test_parameters_are_ours_but_for_pytorchs_second_recurrent_bias(family):
    """nn.RNN / LSTM / GRU keep b_ih and b_hh (one bias more per gate and layer than ours);
    the GPT (rotary, tied head, biases) has exactly our gpt's count."""
    ours = families.build("gpt-einsum" if family == "gpt" else family, WIDTH, LAYERS)
    extra = LAYERS * GATES[family] * WIDTH
    assert torch_models.parameters(model(family)) == families.count_parameters(ours) + extra


def test_adamw_decays_the_matrices_and_the_token_table_only():
    lm = model("gpt")
    decayed, plain = torch_models.adamw(torch, lm, 1e-3, 0.1).param_groups
    names = {id(p): n for n, p in lm.named_parameters()}
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert "embedding.weight" in {names[id(p)] for p in decayed["params"]}
    assert all(names[id(p)].endswith(("bias", "norm1.weight", "norm2.weight", "norm.weight"))
               for p in plain["params"])  # fmt: skip


@pytest.mark.parametrize("autocast", [False, True])
def test_every_kind_is_measured(autocast):
    lm, tokens = model("lstm"), torch.randint(0, 256, (2, 30))
    for kind in study.KINDS:
        found = torch_models.measure(torch, lm, kind, tokens, 16, 4, 1, 0.0, autocast=autocast)
        assert 0 < found["seconds_min"] <= found["seconds_median"] <= found["seconds_max"]
        amount = 2 * (4 if kind == "generate" else 16)
        assert found["tokens_per_second"] == pytest.approx(amount / found["seconds_median"])
    assert found["cache_bytes"] == 2 * LAYERS * 2 * WIDTH * 4  # (h, c) [layers, b, n] float32


def test_the_study_measures_the_references_beside_ours(tmp_path):
    families_ = ["lstm", "gpt-einsum"]
    results = study.main(["--smoke", "--reference", "torch", "--families", *families_,
                          "--run-dir", str(tmp_path)])  # fmt: skip
    expected = {
        (f, n, k) for f in ("torch-lstm", "torch-gpt") for n in (16, 32) for k in study.KINDS
    }
    torch_rows = [r for r in results["rows"] if r["family"].startswith("torch-")]
    assert {(r["family"], r["length"], r["kind"]) for r in torch_rows} == expected
    assert all(r["error"] is None for r in torch_rows)
    assert results["models"]["torch-gpt"]["params"] == results["models"]["gpt-einsum"]["params"]
    best = results["verdict"]["best_against_best"]
    assert set(best) == {"train", "generate"} and set(best["train"]) == {"lstm"}
    assert "Best against best" in results["summary"]
