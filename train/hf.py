"""Hugging Face GPT-2 weights for `gpt` (arch.TransformerLM): read and write the layout of
`GPT2LMHeadModel.save_pretrained` (a directory with `config.json` and `model.safetensors`)
through the `safetensors` package's NumPy API, so neither torch nor transformers is needed.

GPT-2 (Radford et al. 2019) is our decoder-only Transformer with pre-norm blocks and a final
LayerNorm, learned positions, biases on every projection, the tanh GELU ("gelu_new") and the
head tied to the token embedding; its LayerNorm epsilon is 1e-5 (`layer_norm_eps`). The tensors
map one to one (tests/test_hf_reference.py: logits equal to GPT2LMHeadModel's on one file):

    transformer.wte.weight [v, d]            embedding/embedding
    transformer.wpe.weight [n, d]            positions/table/embedding
    transformer.h.I.ln_1.{weight,bias}       decoder/blocks_I/norms_0/{scale,bias}
    transformer.h.I.attn.c_attn [d, 3 h e]   self_attention/{query,key,value}: [d, h, e] each
    transformer.h.I.attn.c_proj [h e, d]     self_attention/out: [h, e, d]
    transformer.h.I.ln_2.{weight,bias}       decoder/blocks_I/norms_1/{scale,bias}
    transformer.h.I.mlp.c_fc [d, f]          feed_forward/hidden
    transformer.h.I.mlp.c_proj [f, d]        feed_forward/output
    transformer.ln_f.{weight,bias}           decoder/final_norm/{scale,bias}
    lm_head.weight [v, d]                    head/kernel [d, v] (only when the head is untied)

GPT-2's Conv1D keeps its weight as [in, out], our kernels' order. The hub's older files without
the `transformer.` prefix, and with the causal-mask buffers `attn.bias` / `attn.masked_bias`,
read too. Not modelled: GPT-2's dropout of the attention weights (attn_pdrop); dropout_rate is
its residual and embedding rate.
"""

import json
import os
import re
from typing import Any

import flax.traverse_util
import jax
import numpy as np

from arch import TransformerLM
from arch.errors import ConfigError
from train.checkpoint import Checkpoints, inspect_checkpoints
from train.decide import prepare
from train.load import LoadedRun, load_run
from train.optim import OptimConfig
from train.run_config import RunConfig
from train.rundir import RunLock, StorageError, os_reason, write_atomically
from train.step import init_state
from train.tasks.base import DataPosition, Task

CONFIG, WEIGHTS, INDEX = "config.json", "model.safetensors", "model.safetensors.index.json"
ACTIVATIONS = {  # ours -> Hugging Face's ACT2FN name
    "gelu": "gelu_new",
    "gelu_exact": "gelu",
    "relu": "relu",
    "tanh": "tanh",
    "sigmoid": "sigmoid",
    "identity": "linear",
}
SAME_ACTIVATION = {"gelu_pytorch_tanh": "gelu"}  # another name of the tanh approximation
BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)$")
"""The causal mask older transformers saved with the weights: not a parameter."""


def gpt2_problems(model: TransformerLM) -> list[str]:
    """How a `gpt` configuration differs from GPT-2's architecture (empty: it is GPT-2)."""
    problems = []
    if type(model) is not TransformerLM:
        return [f"{type(model).__name__} is not the decoder-only Transformer (gpt)"]
    wanted = {"norm": "pre", "positional": "learned"}
    problems += [
        f"{name} is {getattr(model, name)!r} (GPT-2: {value!r})"
        for name, value in wanted.items()
        if getattr(model, name) != value
    ]
    if model.embedding_multiplier is not None:
        problems.append(f"embed_scale {model.embed_scale!r} scales the embeddings (GPT-2: none)")
    if model.activation not in ACTIVATIONS:
        problems.append(f"activation {model.activation!r} has no Hugging Face name")
    if model.num_outputs != model.vocab_size:
        problems.append(f"num_outputs {model.num_outputs} != vocab_size {model.vocab_size}")
    return problems


def check_gpt2(model: TransformerLM) -> None:
    problems = gpt2_problems(model)
    if problems:
        raise ConfigError(f"the model is not GPT-2's architecture: {'; '.join(problems)}")


def gpt2_config(model: TransformerLM, dtype: str) -> dict[str, Any]:
    """The config.json of GPT2LMHeadModel for `model` (ConfigError if it is not GPT-2)."""
    check_gpt2(model)
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": model.vocab_size,
        "n_positions": model.max_len,
        "n_embd": model.features,
        "n_layer": model.num_layers,
        "n_head": model.num_heads,
        "n_inner": model.ffn_hidden,
        "activation_function": ACTIVATIONS[model.activation],
        "layer_norm_epsilon": model.layer_norm_eps,
        "resid_pdrop": model.dropout_rate,
        "embd_pdrop": model.dropout_rate,
        "attn_pdrop": 0.0,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "tie_word_embeddings": model.tie_embeddings,
        "bos_token_id": None,
        "eos_token_id": None,
        "dtype": dtype,
    }


def model_of(config: dict[str, Any], source: str) -> TransformerLM:
    """Our `gpt` for a GPT-2 config.json (ConfigError for a model it cannot be)."""
    if config.get("model_type") != "gpt2":
        raise ConfigError(
            f"{source} is a {config.get('model_type')!r} model; import-hf reads GPT-2 "
            "(model_type 'gpt2')"
        )
    unsupported = {
        "scale_attn_weights": (False, "unscaled attention scores"),
        "scale_attn_by_inverse_layer_idx": (True, "scores scaled by 1 / layer"),
        "add_cross_attention": (True, "cross-attention"),
    }
    for field, (value, what) in unsupported.items():
        if config.get(field, not value) == value:
            raise ConfigError(f"{source} has {field} {value} ({what}), which gpt does not model")
    activation = config.get("activation_function", "gelu_new")
    ours = {v: k for k, v in ACTIVATIONS.items()} | SAME_ACTIVATION
    if activation not in ours:
        raise ConfigError(f"{source}: activation_function {activation!r} is not one gpt has")
    try:
        vocab = int(config["vocab_size"])
        return TransformerLM(
            vocab_size=vocab,
            num_outputs=vocab,
            num_layers=int(config["n_layer"]),
            features=int(config["n_embd"]),
            num_heads=int(config["n_head"]),
            ffn_hidden=config.get("n_inner"),
            dropout_rate=float(config.get("resid_pdrop", 0.1)),
            activation=ours[activation],
            positional="learned",
            max_len=int(config["n_positions"]),
            layer_norm_eps=float(config.get("layer_norm_epsilon", 1e-5)),
            initializer="gpt2",
            embed_scale="none",
            tie_embeddings=bool(config.get("tie_word_embeddings", True)),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"{source} is not a GPT-2 config.json ({error!r})") from None


def unstacked(params: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """Parameters of a scan_layers model (decoder/layers/... with a leading layer axis) as
    blocks_0 .. blocks_{L-1}, the layout of scan_layers=False."""
    decoder = dict(params["decoder"])
    if "layers" not in decoder:
        return params
    layers = decoder.pop("layers")
    for i in range(num_layers):
        decoder[f"blocks_{i}"] = flax.traverse_util.unflatten_dict(
            {k: v[i] for k, v in flax.traverse_util.flatten_dict(layers).items()}
        )
    return {**params, "decoder": decoder}


def norm_tensors(prefix: str, params: dict) -> dict[str, np.ndarray]:
    return {f"{prefix}.weight": params["scale"], f"{prefix}.bias": params["bias"]}


def conv1d_tensors(prefix: str, kernel: np.ndarray, bias: np.ndarray) -> dict[str, np.ndarray]:
    """A GPT-2 Conv1D: weight [in, out], bias [out], from a kernel [in, ...] and a bias."""
    return {f"{prefix}.weight": kernel.reshape(kernel.shape[0], -1), f"{prefix}.bias": bias.ravel()}


def to_gpt2(model: TransformerLM, params: dict[str, Any]) -> dict[str, np.ndarray]:
    """Our parameters -> GPT2LMHeadModel's state dict (the tied lm_head left out, as
    save_pretrained leaves it out)."""
    params = unstacked(jax.tree.map(np.asarray, params), model.num_layers)  # on the host
    decoder = params["decoder"]
    tensors = {
        "transformer.wte.weight": params["embedding"]["embedding"],
        "transformer.wpe.weight": params["positions"]["table"]["embedding"],
        **norm_tensors("transformer.ln_f", decoder["final_norm"]),
    }
    for i in range(model.num_layers):
        block, name = decoder[f"blocks_{i}"], f"transformer.h.{i}"
        attention = block["self_attention"]
        qkv = [attention[n] for n in ("query", "key", "value")]
        out = attention["out"]
        out_kernel = out["kernel"].reshape(-1, model.features)  # [h, e, d] -> [h e, d]
        kernel = np.concatenate([p["kernel"].reshape(model.features, -1) for p in qkv], axis=1)
        bias = np.concatenate([p["bias"].ravel() for p in qkv])
        ff = block["feed_forward"]
        tensors.update(
            norm_tensors(f"{name}.ln_1", block["norms_0"])
            | conv1d_tensors(f"{name}.attn.c_attn", kernel, bias)
            | conv1d_tensors(f"{name}.attn.c_proj", out_kernel, out["bias"])
            | norm_tensors(f"{name}.ln_2", block["norms_1"])
            | conv1d_tensors(f"{name}.mlp.c_fc", ff["hidden"]["kernel"], ff["hidden"]["bias"])
            | conv1d_tensors(f"{name}.mlp.c_proj", ff["output"]["kernel"], ff["output"]["bias"])
        )
    if not model.tie_embeddings:
        if np.any(params["head"]["bias"]):
            raise ConfigError(
                "the untied head has a bias that is not zero; GPT-2's lm_head has no bias"
            )
        tensors["lm_head.weight"] = params["head"]["kernel"].T
    return {k: np.ascontiguousarray(v) for k, v in tensors.items()}


def from_gpt2(model: TransformerLM, tensors: dict[str, np.ndarray], source: str) -> dict:
    """GPT2LMHeadModel's state dict (with or without the `transformer.` prefix) -> our
    parameters; a missing, unknown or misshapen tensor is a ConfigError naming it."""
    d, h = model.features, model.num_heads
    e = d // h
    given = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    given = {k: v for k, v in given.items() if not BUFFER.match(k)}
    if model.tie_embeddings:
        head = given.pop("lm_head.weight", None)
        if head is not None and not np.array_equal(head, given.get("wte.weight")):
            raise ConfigError(
                f"{source}: lm_head.weight differs from wte.weight although "
                "tie_word_embeddings is true"
            )
    used: set[str] = set()

    def take(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in given:
            raise ConfigError(f"{source} has no tensor {name}")
        value = given[name]
        if value.shape != shape:
            raise ConfigError(f"{source}: {name} has shape {value.shape}, config.json says {shape}")
        used.add(name)
        return value

    def norm(prefix: str) -> dict:
        return {"scale": take(f"{prefix}.weight", (d,)), "bias": take(f"{prefix}.bias", (d,))}

    f = model.ffn_hidden or 4 * d
    params: dict[str, Any] = {
        "embedding": {"embedding": take("wte.weight", (model.vocab_size, d))},
        "positions": {"table": {"embedding": take("wpe.weight", (model.max_len, d))}},
        "decoder": {"final_norm": norm("ln_f")},
    }
    for i in range(model.num_layers):
        name = f"h.{i}"
        kernels = np.split(take(f"{name}.attn.c_attn.weight", (d, 3 * d)), 3, axis=1)
        biases = np.split(take(f"{name}.attn.c_attn.bias", (3 * d,)), 3)
        attention = {
            n: {"kernel": k.reshape(d, h, e), "bias": b.reshape(h, e)}
            for n, k, b in zip(("query", "key", "value"), kernels, biases, strict=True)
        }
        attention["out"] = {
            "kernel": take(f"{name}.attn.c_proj.weight", (d, d)).reshape(h, e, d),
            "bias": take(f"{name}.attn.c_proj.bias", (d,)),
        }
        conv = lambda prefix, n_in, n_out: {
            "kernel": take(f"{prefix}.weight", (n_in, n_out)),
            "bias": take(f"{prefix}.bias", (n_out,)),
        }
        params["decoder"][f"blocks_{i}"] = {
            "norms_0": norm(f"{name}.ln_1"),
            "self_attention": attention,
            "norms_1": norm(f"{name}.ln_2"),
            "feed_forward": {
                "hidden": conv(f"{name}.mlp.c_fc", d, f),
                "output": conv(f"{name}.mlp.c_proj", f, d),
            },
        }
    if not model.tie_embeddings:  # gpt's untied head has a bias; GPT-2's none: zero
        kernel = take("lm_head.weight", (model.vocab_size, d))
        params["head"] = {"kernel": kernel.T, "bias": np.zeros(model.vocab_size, kernel.dtype)}
    unknown = sorted(set(given) - used)
    if unknown:
        raise ConfigError(f"{source} has tensors GPT-2 does not: {', '.join(unknown[:8])}")
    return params


def read_tensors(path: str) -> dict[str, np.ndarray]:
    """The tensors of `path`/model.safetensors, or of the shards its index names."""
    from safetensors.numpy import load_file

    index = os.path.join(path, INDEX)
    if not os.path.isfile(index):
        return load_file(os.path.join(path, WEIGHTS))
    with open(index) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    return {k: v for shard in shards for k, v in load_file(os.path.join(path, shard)).items()}


def read_gpt2(path: str) -> tuple[TransformerLM, dict[str, Any]]:
    """The model and parameters of a GPT2LMHeadModel directory (config.json and
    model.safetensors, or its shards)."""
    from safetensors import SafetensorError

    config_file = os.path.join(path, CONFIG)
    weights = [os.path.join(path, name) for name in (WEIGHTS, INDEX)]
    if not os.path.isfile(config_file) or not any(map(os.path.isfile, weights)):
        raise ConfigError(
            f"{path} is not a Hugging Face model directory: it needs {CONFIG} and {WEIGHTS} "
            "(GPT2LMHeadModel.save_pretrained writes both)"
        )
    try:
        with open(config_file) as f:
            config = json.load(f)
        tensors = read_tensors(path)
    except (OSError, ValueError, KeyError, SafetensorError) as error:
        raise ConfigError(f"cannot read {path}: {error!r}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{config_file} is not a JSON object")
    model = model_of(config, path)
    return model, from_gpt2(model, tensors, path)


def write_gpt2(path: str, model: TransformerLM, params: dict[str, Any]) -> None:
    """`path`/config.json and `path`/model.safetensors for GPT2LMHeadModel.from_pretrained,
    each written whole or not at all (a temporary file, then a rename)."""
    from safetensors.numpy import save_file

    check_gpt2(model)
    tensors = to_gpt2(model, params)
    dtypes = {str(v.dtype) for v in tensors.values()}
    config = gpt2_config(model, dtypes.pop() if len(dtypes) == 1 else "float32")
    try:
        os.makedirs(path, exist_ok=True)
        temporary = os.path.join(path, f"{WEIGHTS}.tmp-{os.getpid()}")
        save_file(tensors, temporary, metadata={"format": "pt"})  # what from_pretrained expects
        os.replace(temporary, os.path.join(path, WEIGHTS))
    except OSError as error:
        raise StorageError(f"cannot write {path}: {os_reason(error)}") from None
    write_atomically(os.path.join(path, CONFIG), json.dumps(config, indent=2))


def save_imported_run(
    model: TransformerLM, params: dict[str, Any], task: Task, optim: OptimConfig, run: RunConfig
) -> LoadedRun:
    """A new run directory `run.run_dir` whose checkpoint at step 0 holds `params` (and the
    fresh optimizer state of `optim`): what `sample`, `eval`, `--init-from` and a resumed
    training run (`--config RUN_DIR/config.json`) read. A directory that holds checkpoints
    already is refused, untouched."""
    prepared = prepare(model, task, optim, run, params)
    fresh = flax.traverse_util.flatten_dict(prepared.abstract.params, sep="/")
    missing = sorted(set(fresh) - set(flax.traverse_util.flatten_dict(params, sep="/")))
    if missing:
        raise ConfigError(f"the imported weights lack {', '.join(missing[:8])}")
    with RunLock(run.run_dir):
        if inspect_checkpoints(run.run_dir) is not None:
            raise ConfigError(
                f"{run.run_dir} holds checkpoints already: import into a new --run-dir"
            )
        shardings = prepared.placement.state_shardings(
            prepared.tx, prepared.model, prepared.batch["inputs"]
        )
        state = init_state(
            prepared.model, prepared.tx, prepared.batch["inputs"], run.seed, params, shardings
        )
        checkpoints = Checkpoints(run.run_dir, run.checkpoint, lambda text: None)
        try:
            checkpoints.save(state, DataPosition(), [], [], prepared.config)
        finally:
            checkpoints.close()
        path = os.path.join(run.run_dir, "config.json")
        write_atomically(path, json.dumps(prepared.config, indent=2, default=str))
    return load_run(run.run_dir, 0)
