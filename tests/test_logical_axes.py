"""Logical axes (arch/layers.py, train/sharding.py): every Transformer and MLP parameter names
what its axes are, a scanned stack names its layer axis, and the tensor-parallel split follows
those names, never the parameter's path. The 8-device runs are in tests/test_sharding.py."""

import types

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from arch import MODELS
from arch.errors import ConfigError
from arch.layers import LOGICAL_AXES, RowDense, boxed_axes
from arch.transformer_layers import TransformerModel
from train.sharding import Placement, ShardingConfig, param_axes, param_spec

SIZES = dict(num_layers=2, features=16, num_heads=2, max_len=32)
TOKENS = jnp.zeros((2, 8), jnp.int32)
SEQ2SEQ = {"source": jnp.zeros((2, 6), jnp.int32), "target": jnp.zeros((2, 5), jnp.int32)}

# every Transformer of the registry, in each of its parameter layouts
TRANSFORMERS = {
    "gpt": (MODELS["gpt"](**SIZES, vocab_size=11, num_outputs=11), TOKENS),
    "gpt untied": (
        MODELS["gpt"](**SIZES, vocab_size=11, num_outputs=11, tie_embeddings=False),
        TOKENS,
    ),
    "gpt scanned": (
        MODELS["gpt"](**SIZES, vocab_size=11, num_outputs=11, scan_layers=True),
        TOKENS,
    ),
    "transformer tokens": (MODELS["transformer"](**SIZES, vocab_size=11, num_outputs=3), TOKENS),
    "transformer features": (
        MODELS["transformer"](**SIZES, num_outputs=3, pool="mean"),
        jnp.zeros((2, 8, 5)),
    ),
    "bert": (MODELS["bert"](**SIZES, vocab_size=11, num_outputs=11), TOKENS),
    "vit": (MODELS["vit"](**SIZES, num_outputs=10), jnp.zeros((2, 8, 8))),
    "transformer_seq2seq": (
        MODELS["transformer_seq2seq"](
            **SIZES, vocab_size=11, num_outputs=11, source_vocab_size=7, tie_embeddings=False
        ),
        SEQ2SEQ,
    ),
}
MLPS = {
    "mlp": (MODELS["mlp"](hidden_sizes=(8, 6, 4)), jnp.zeros((2, 5))),
    "perceptron": (MODELS["perceptron"](), jnp.zeros((2, 5))),
}


def test_every_registered_transformer_is_checked():
    registered = {c for c in MODELS.values() if issubclass(c, TransformerModel)}
    checked = {type(model) for model, _ in TRANSFORMERS.values()}
    assert len(registered) == 5 and registered == checked  # a new one joins TRANSFORMERS


@pytest.mark.parametrize("name", [*TRANSFORMERS, *MLPS])
def test_every_transformer_and_mlp_parameter_names_each_of_its_axes(name):
    model, example = {**TRANSFORMERS, **MLPS}[name]
    axes = param_axes(model, example)
    init = lambda: nn.unbox(model.init(jax.random.key(0), example))["params"]
    flat_shapes = {k: v.shape for k, v in flatten_dict(jax.eval_shape(init), sep="/").items()}
    assert set(axes) == set(flat_shapes)
    undeclared = [path for path, names in axes.items() if names is None]
    assert not undeclared, f"{name}: parameters without logical axes: {undeclared}"
    for path, names in axes.items():
        assert len(names) == len(flat_shapes[path]), (path, names, flat_shapes[path])
        assert set(names) <= {*LOGICAL_AXES, None}, (path, names)


def test_a_scanned_stack_names_its_leading_layer_axis():
    model, example = TRANSFORMERS["gpt scanned"]
    plain = param_axes(TRANSFORMERS["gpt"][0], example)
    scanned = param_axes(model, example)
    stacked = {path: names for path, names in scanned.items() if "/layers/" in path}
    assert stacked and all(names[0] == "layers" for names in stacked.values())
    for path, names in stacked.items():  # the rest of the names are the plain block's
        assert names[1:] == plain[path.replace("/layers/", "/blocks_0/")]


def test_the_attention_and_feed_forward_names():
    axes = param_axes(*TRANSFORMERS["transformer_seq2seq"])
    block = "decoder/blocks_0/"
    for attention in ("self_attention", "cross"):
        for projection in ("query", "key", "value"):
            assert axes[f"{block}{attention}/{projection}/kernel"] == ("embed", "heads", "head_dim")
            assert axes[f"{block}{attention}/{projection}/bias"] == ("heads", "head_dim")
        assert axes[f"{block}{attention}/out/kernel"] == ("heads", "head_dim", "embed")
    assert axes[block + "feed_forward/hidden/kernel"] == ("embed", "mlp")
    assert axes[block + "feed_forward/output/kernel"] == ("mlp", "embed")
    assert axes["embedding/embedding"] == ("vocab", "embed")
    assert axes["source_embedding/embedding"] == ("vocab", "embed")
    assert axes["head/kernel"] == ("embed", "vocab")
    mlp = param_axes(*MLPS["mlp"])
    assert [mlp[f"hidden_{i}/kernel"] for i in range(3)] == [
        ("input", "mlp"),
        ("mlp", "hidden"),
        ("hidden", "mlp"),
    ]  # Megatron pairs: column-parallel, then row-parallel


def fake_mesh(tensor: int = 1, fsdp: int = 1) -> types.SimpleNamespace:
    """param_spec reads only the mesh's axis sizes."""
    return types.SimpleNamespace(shape={"data": 1, "fsdp": fsdp, "tensor": tensor})


@pytest.mark.parametrize(
    ("axes", "shape", "spec"),
    [
        (("embed", "heads", "head_dim"), (16, 4, 4), (None, "tensor", None)),
        (("heads", "head_dim", "embed"), (4, 4, 16), ("tensor", None, None)),
        (("embed", "mlp"), (16, 64), (None, "tensor")),
        (("mlp", "embed"), (64, 16), ("tensor", None)),
        (("layers", "embed", "mlp"), (2, 16, 64), (None, None, "tensor")),
        (("vocab", "embed"), (11, 16), (None, None)),  # vocab is not in the default rules
        (("embed", "heads", "head_dim"), (16, 6, 4), (None, None, None)),  # 4 does not divide 6
        (None, (16, 64), (None, None)),  # declares nothing: never tensor-split
    ],
)
def test_the_tensor_split_follows_the_logical_names(axes, shape, spec):
    assert tuple(param_spec(axes, shape, fake_mesh(tensor=4), ShardingConfig())) == spec


def test_renaming_a_parameter_does_not_change_its_split():
    class Undeclared(nn.Module):
        @nn.compact
        def __call__(self, x):
            return RowDense(64, name="hidden")(x)  # no axes

    class Renamed(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            RowDense(64, axes=("embed", "mlp"), name="anything_at_all")(x)
            return Undeclared(name="feed_forward")(x)  # the path the old regex split

    axes = param_axes(Renamed(), jnp.zeros((2, 16)))
    config, mesh = ShardingConfig(), fake_mesh(tensor=4)
    spec = lambda path: tuple(param_spec(axes[path], (16, 64), mesh, config))
    assert spec("anything_at_all/kernel") == (None, "tensor")
    assert axes["feed_forward/hidden/kernel"] is None
    assert spec("feed_forward/hidden/kernel") == (None, None)


def test_tensor_axes_choose_what_is_split_and_unknown_names_are_refused():
    vocab = ShardingConfig(tensor_axes=("heads", "mlp", "vocab"))
    assert tuple(param_spec(("vocab", "embed"), (12, 16), fake_mesh(tensor=4), vocab)) == (
        "tensor",
        None,
    )
    with pytest.raises(ConfigError, match=r"unknown logical axes \['vocabulary'\]"):
        Placement.for_run(ShardingConfig(tensor_axes=("vocabulary",)))


def test_fsdp_still_takes_the_largest_free_axis_beside_a_tensor_split():
    spec = param_spec(
        ("embed", "mlp"), (32, 64), fake_mesh(tensor=2, fsdp=4), ShardingConfig(fsdp_min_size=1)
    )
    assert tuple(spec) == ("fsdp", "tensor")


def test_model_init_returns_plain_arrays_and_boxes_only_inside_boxed_axes():
    model, example = TRANSFORMERS["gpt scanned"]
    is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)
    plain = model.init(jax.random.key(0), example)["params"]
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(plain, is_leaf=is_box))
    with boxed_axes():
        boxed = model.init(jax.random.key(0), example)["params"]
    boxes = jax.tree.leaves(boxed, is_leaf=is_box)
    assert boxes and all(is_box(x) for x in boxes)
    # the same values either way, and apply reads both alike
    chex.assert_trees_all_equal(nn.unbox(boxed), plain)
    np.testing.assert_array_equal(
        model.apply({"params": boxed}, example), model.apply({"params": plain}, example)
    )
