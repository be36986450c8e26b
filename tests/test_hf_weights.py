"""train/hf.py, `python -m train export-hf` and `import-hf`: a gpt run's weights in the layout
of Hugging Face's GPT2LMHeadModel (config.json, model.safetensors) and back, to the bit; the
imported run is one that eval, sample, --init-from and a resumed training run read; what is
not GPT-2 is refused with the reason. Needs neither torch nor transformers
(tests/test_hf_reference.py checks the files against GPT2LMHeadModel itself)."""

import json
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from safetensors.numpy import load_file, save_file

from arch import MODELS, TransformerLM
from arch.errors import ConfigError
from train.__main__ import main
from train.checkpoint import CheckpointConfig
from train.hf import from_gpt2, gpt2_problems, model_of, read_gpt2, to_gpt2
from train.load import evaluate_run, load_run, saved_params
from train.loop import RunConfig, fit
from train.optim import OptimConfig
from train.tasks import TASKS

sys.path.insert(0, os.path.dirname(__file__))
from helpers import cli_error  # noqa: E402

SIZES = dict(num_layers=2, features=16, num_heads=2, ffn_hidden=24, max_len=12)
GPT = dict(SIZES, vocab_size=11, num_outputs=11, layer_norm_eps=1e-5)
TASK_ARGS = ["markov", "--task.vocab-size", "11", "--task.length", "12", "--task.batch-size", "8"]


def task():
    return TASKS["markov"](vocab_size=11, length=12, batch_size=8)


def flat(tree) -> dict:
    return {k: np.asarray(v) for k, v in flatten_dict(nn.unbox(tree), sep="/").items()}


def assert_same_arrays(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A gpt trained 6 steps on markov, exported, and the export imported into a new run."""
    root = tmp_path_factory.mktemp("hf")
    run = RunConfig.quiet(
        6, run_dir=str(root / "run"), checkpoint=CheckpointConfig(every=3, keep_best=0)
    )
    fit(MODELS["gpt"](**SIZES, layer_norm_eps=1e-5), task(), OptimConfig(lr=1e-2), run)
    main(["export-hf", str(root / "run"), str(root / "hf")])
    main(["import-hf", str(root / "hf"), *TASK_ARGS, "--run-dir", str(root / "imported")])
    return root


def test_export_then_import_gives_the_runs_parameters_to_the_bit(trained):
    original, imported = load_run(str(trained / "run")), load_run(str(trained / "imported"))
    assert imported.step == 0 and imported.model_name == "gpt"
    assert_same_arrays(flat(original.state.params), flat(imported.state.params))
    for split in ("validation", "test"):  # the same function of the same weights
        assert evaluate_run(imported, split) == evaluate_run(original, split)


def test_import_then_export_gives_the_files_to_the_bit(trained, tmp_path):
    main(["export-hf", str(trained / "imported"), str(tmp_path)])
    first, second = (load_file(str(p / "model.safetensors")) for p in (trained / "hf", tmp_path))
    assert_same_arrays(first, second)
    assert "lm_head.weight" not in first  # tied, as save_pretrained leaves it out
    configs = [json.loads((p / "config.json").read_text()) for p in (trained / "hf", tmp_path)]
    assert configs[0] == configs[1]
    assert configs[0]["n_embd"] == 16 and configs[0]["layer_norm_epsilon"] == 1e-5


def test_the_imported_run_samples_fine_tunes_and_resumes(trained, tmp_path, capsys):
    prompt = ["--prompt", "1 2 3", "--num-tokens", "5", "--temperature", "0"]
    samples = [main(["sample", str(trained / name), *prompt]) for name in ("run", "imported")]
    assert samples[0]["tokens"] == samples[1]["tokens"]
    params = saved_params(str(trained / "imported") + ":0")
    assert_same_arrays(flat(params), flat(load_run(str(trained / "run")).state.params))
    # a run whose training options were given at the import trains on from step 0
    hf, run_dir = str(trained / "hf"), str(tmp_path / "tuned")
    main(["import-hf", hf, *TASK_ARGS, "--run-dir", run_dir, "--steps", "4", "--eval-every", "2"])
    summary = main(["--config", os.path.join(run_dir, "config.json"), "--run-dir", run_dir])
    assert summary["steps"] == 4 and load_run(run_dir).step == 4
    assert "cannot" not in capsys.readouterr().err


def test_a_scanned_stack_exports_as_its_layers():
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 11, (2, 12)), jnp.int32)
    scanned = TransformerLM(**GPT, scan_layers=True)
    params = nn.unbox(scanned.init(jax.random.key(0), tokens)["params"])
    model = TransformerLM(**GPT)
    layers = from_gpt2(model, to_gpt2(scanned, params), "test")
    blocks = [flat(layers["decoder"][f"blocks_{i}"]) for i in range(2)]
    for path, stacked in flat(params["decoder"]["layers"]).items():  # each layer in its place
        np.testing.assert_array_equal(stacked, np.stack([b[path] for b in blocks]))
    np.testing.assert_allclose(  # scan and unrolled layers round differently: 1e-7 apart
        model.apply({"params": layers}, tokens),
        scanned.apply({"params": params}, tokens),
        rtol=1e-6,
        atol=1e-6,
    )


def test_an_untied_head_and_the_hubs_older_names_round_trip():
    model = TransformerLM(**GPT, tie_embeddings=False)
    params = nn.unbox(model.init(jax.random.key(1), jnp.zeros((1, 4), jnp.int32))["params"])
    tensors = to_gpt2(model, params)  # gpt's head bias starts at zero; GPT-2's head has none
    assert tensors["lm_head.weight"].shape == (11, 16)
    assert_same_arrays(flat(from_gpt2(model, tensors, "test")), flat(params))
    biased = {**params, "head": {**params["head"], "bias": params["head"]["bias"] + 1}}
    with pytest.raises(ConfigError, match="untied head has a bias"):
        to_gpt2(model, biased)
    tied = TransformerLM(**GPT)
    params = nn.unbox(tied.init(jax.random.key(2), jnp.zeros((1, 4), jnp.int32))["params"])
    older = {k.removeprefix("transformer."): v for k, v in to_gpt2(tied, params).items()}
    older["h.0.attn.bias"] = np.tril(np.ones((1, 1, 12, 12), np.float32))  # the mask buffer
    older["h.1.attn.masked_bias"] = np.array(-1e4, np.float32)
    older["lm_head.weight"] = older["wte.weight"]
    assert_same_arrays(flat(from_gpt2(tied, older, "test")), flat(params))


def test_what_is_not_gpt2_is_refused_with_each_reason(trained, tmp_path, capsys):
    rotary = TransformerLM(**GPT, norm="post", positional="rotary")
    assert gpt2_problems(rotary) == [
        "norm is 'post' (GPT-2: 'pre')",
        "positional is 'rotary' (GPT-2: 'learned')",
    ]
    assert "not the decoder-only Transformer" in gpt2_problems(MODELS["rnn_lm"]())[0]
    config = json.loads((trained / "hf" / "config.json").read_text())
    for change, message in [
        ({"model_type": "llama"}, "import-hf reads GPT-2"),
        ({"scale_attn_by_inverse_layer_idx": True}, "scores scaled by 1 / layer"),
        ({"activation_function": "swish"}, "activation_function 'swish'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            model_of({**config, **change}, "x")
    model = model_of(config, "x")
    tensors = load_file(str(trained / "hf" / "model.safetensors"))
    name = "transformer.h.1.mlp.c_fc.weight"
    for changed, message in [
        ({k: v for k, v in tensors.items() if k != name}, "has no tensor h.1.mlp.c_fc.weight"),
        ({**tensors, name: tensors[name][:, :3]}, r"has shape \(16, 3\), config.json says"),
        ({**tensors, "transformer.h.9.ln_1.weight": tensors[name]}, "does not: h.9.ln_1"),
        ({**tensors, "lm_head.weight": tensors[name]}, "lm_head.weight differs from wte"),
    ]:
        with pytest.raises(ConfigError, match=message):
            from_gpt2(model, changed, "x")


def test_the_verbs_refuse_bad_paths_tasks_and_runs(trained, tmp_path, capsys):
    hf = str(trained / "hf")
    error = cli_error(capsys, ["import-hf", str(tmp_path), *TASK_ARGS, "--run-dir", "r"])
    assert "is not a Hugging Face model directory" in error
    error = cli_error(capsys, ["import-hf", hf, "markov", "--run-dir", str(tmp_path / "r")])
    assert "reads 11 token ids and task markov has 16" in error
    error = cli_error(capsys, ["import-hf", hf, *TASK_ARGS])
    assert "import-hf needs --run-dir" in error
    before = sorted(os.listdir(trained / "imported" / "checkpoints"))
    error = cli_error(capsys, ["import-hf", hf, *TASK_ARGS, "--run-dir", str(trained / "imported")])
    assert "holds checkpoints already" in error
    assert sorted(os.listdir(trained / "imported" / "checkpoints")) == before
    rnn = tmp_path / "rnn"
    fit(MODELS["rnn_lm"](hidden_size=8), task(), run=RunConfig.quiet(2, run_dir=str(rnn),
        checkpoint=CheckpointConfig()))  # fmt: skip
    error = cli_error(capsys, ["export-hf", str(rnn), str(tmp_path / "out")])
    assert "is not GPT-2's architecture: RNNLanguageModel is not" in error
    assert not (tmp_path / "out").exists()


def test_a_sharded_directory_reads_as_one(trained, tmp_path):
    tensors = load_file(str(trained / "hf" / "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[:10], "model-00002-of-00002.safetensors":
              names[10:]}  # fmt: skip
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(tmp_path / shard), metadata={"format": "pt"})
    index = {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text((trained / "hf" / "config.json").read_text())
    model, params = read_gpt2(str(tmp_path))
    whole = read_gpt2(str(trained / "hf"))[1]
    assert model == read_gpt2(str(trained / "hf"))[0]
    assert_same_arrays(flat(params), flat(whole))
