"""Sharding the one train step over devices and hosts with JAX's own machinery: a device mesh,
`NamedSharding`s for the batch and the train state, and `jax.jit` with those shardings (XLA's
SPMD partitioner inserts every collective; nothing here is hand-written parallelism).

Mesh axes (legend):
- "data":   the batch is split over it; parameters are copied on it (data parallelism);
- "fsdp":   the batch is split over it too, and each large parameter (and its optimizer state)
            is split along its largest divisible axis (fully sharded data parallelism, ZeRO-3);
- "tensor": Megatron-style splits of the parameter axes whose logical name is in
            `ShardingConfig.tensor_axes` (attention heads, feed-forward hidden units); the
            batch is copied on it.

Parameters declare what their axes are (logical names, arch/layers.py's LOGICAL_AXES, through
Flax's `nn.with_logical_partitioning`); this module maps those names to mesh axes. A parameter
that declares none is never tensor-split, whatever it is called.
The train state's shardings follow the parameters': the optimizer state's moment trees take
their parameter's sharding (`optax.tree_map_params`), counters are replicated.
Multi-host: `initialize_distributed()` (`jax.distributed.initialize`, which detects SLURM and
TPU pods), then every process runs the same program; each feeds the shards of the global batch
that its devices hold (`shard_batch`).
"""

import dataclasses
import math
import os
from typing import Any

import flax.linen as nn
import flax.traverse_util
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from arch.errors import ConfigError
from arch.layers import LOGICAL_AXES, Axes, boxed_axes
from train.optim import param_path

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


@dataclasses.dataclass(frozen=True)
class ShardingConfig:
    """Devices per mesh axis; -1 on one axis: every device the other axes leave."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    fsdp_min_size: int = 4096
    """Parameters with fewer elements stay whole on the fsdp axis (splitting costs more)."""
    tensor_axes: tuple[str, ...] = ("heads", "mlp")
    """Logical axes split over the tensor mesh axis: the heads of the query / key / value
    kernels [d, h, e] and of the output [h, e, d], the hidden units of the feed-forward
    [d, f] and [f, d] (column- then row-parallel: one reduction per sublayer). Add "vocab"
    to split embeddings and the output layer by token."""

    def check(self) -> None:
        unknown = sorted(set(self.tensor_axes) - set(LOGICAL_AXES))
        if unknown:
            raise ConfigError(
                f"--sharding.tensor-axes names unknown logical axes {unknown}; choose from "
                f"{', '.join(LOGICAL_AXES)} (arch/layers.py)"
            )

    def shape(self, devices: int) -> tuple[int, int, int]:
        sizes = [self.data, self.fsdp, self.tensor]
        if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
            raise ConfigError(
                f"sharding sizes must be positive, one of them may be -1; got data {self.data}, "
                f"fsdp {self.fsdp}, tensor {self.tensor}"
            )
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if devices % known:
                fixed = [axis for axis, s in zip(AXES, sizes, strict=True) if s != -1]
                raise ConfigError(
                    f"{devices} devices do not split into {' x '.join(fixed)} = {known}; set "
                    f"{' / '.join('--sharding.' + a for a in fixed)} to divide the device count"
                )
            sizes[sizes.index(-1)] = devices // known
        if math.prod(sizes) != devices:
            raise ConfigError(
                f"the mesh data {sizes[0]} x fsdp {sizes[1]} x tensor {sizes[2]} = "
                f"{math.prod(sizes)} devices, but {devices} {'is' if devices == 1 else 'are'} "
                "present; make the product of --sharding.data, --sharding.fsdp and "
                "--sharding.tensor equal the device count (or set one of them to -1)"
            )
        return tuple(sizes)

    def batch_ways(self, devices: int) -> int:
        """How many parts the batch is split into (data x fsdp)."""
        data, fsdp, _ = self.shape(devices)
        return data * fsdp


def make_mesh(config: ShardingConfig, devices: list | None = None) -> Mesh:
    devices = list(jax.devices()) if devices is None else devices
    shape = config.shape(len(devices))
    return Mesh(np.asarray(devices).reshape(shape), AXES)


def param_axes(model: nn.Module, example: Any) -> dict[str, Axes | None]:
    """path -> the logical axis names a parameter declares (None where its module declares
    none), read from an abstract init: nothing is computed."""
    key = jax.random.key(0)
    init = lambda: model.init({"params": key, "dropout": key}, example, train=False)["params"]
    with boxed_axes():
        flat = flax.traverse_util.flatten_dict(jax.eval_shape(init), sep="/")
    return {
        path: x.names if isinstance(x, nn.LogicallyPartitioned) else None
        for path, x in flat.items()
    }


def param_spec(
    axes: Axes | None, shape: tuple[int, ...], mesh: Mesh, config: ShardingConfig
) -> PartitionSpec:
    """The PartitionSpec of one parameter: the first axis named in `config.tensor_axes` that
    the tensor mesh axis divides, then fsdp on the largest free axis it divides."""
    spec: list[Any] = [None] * len(shape)
    tensor = mesh.shape["tensor"]
    if tensor > 1 and axes is not None:
        named = [a for a, name in enumerate(axes) if name in config.tensor_axes]
        divisible = [a for a in named if shape[a] % tensor == 0]
        if divisible:
            spec[divisible[0]] = "tensor"
    fsdp = mesh.shape["fsdp"]
    if fsdp > 1 and math.prod(shape) >= config.fsdp_min_size:
        free = [a for a in range(len(shape)) if spec[a] is None and shape[a] % fsdp == 0]
        if free:
            spec[max(free, key=lambda a: shape[a])] = "fsdp"
    return PartitionSpec(*spec)


def param_shardings(
    params: Any, mesh: Mesh, config: ShardingConfig, axes: dict[str, Axes | None]
) -> Any:
    def sharding(path: tuple, x: Any) -> NamedSharding:
        name = param_path(path)
        return NamedSharding(mesh, param_spec(axes.get(name), x.shape, mesh, config))

    return jax.tree_util.tree_map_with_path(sharding, params)


def state_shardings(
    state: Any,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    config: ShardingConfig,
    axes: dict[str, Axes | None],
) -> Any:
    """Shardings for a (possibly abstract) TrainState: parameters by `param_spec` of their
    logical `axes` (`param_axes`), optimizer state leaves shaped like a parameter by that
    parameter's, everything else replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    params = param_shardings(state.params, mesh, config, axes)
    opt_state = optax.tree_map_params(
        tx,
        lambda _, sharding: sharding,
        state.opt_state,
        params,
        transform_non_params=lambda _: replicated,
    )
    return state.replace(
        step=replicated,
        params=params,
        model_state=jax.tree.map(lambda _: replicated, state.model_state),
        opt_state=opt_state,
        rng=replicated,
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The leading (example) axis over data x fsdp, the rest whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def reads_on_demand(x: Any) -> bool:
    """Whether a batch leaf is an array-like that reads its elements when indexed (a memory
    map's windows, train/tasks/tokens.py's TokenWindows): it has a shape and answers x[index]
    and np.asarray(x) itself, and is no NumPy or JAX array."""
    plain = isinstance(x, np.ndarray | np.generic | jax.Array)
    return not plain and all(hasattr(x, name) for name in ("shape", "__getitem__", "__array__"))


def host_batch(batch: Any) -> Any:
    """The batch with every leaf that reads on demand read into a NumPy array (what jit takes);
    other leaves unchanged."""
    return jax.tree.map(lambda x: np.asarray(x) if reads_on_demand(x) else x, batch)


def shard_batch(batch: Any, sharding: NamedSharding) -> Any:
    """Global arrays from a host batch that every process computes in full (the tasks' batches
    are pure functions of the data position): each process fills only its own devices. A leaf
    that reads on demand is indexed for those devices' rows only, never read whole."""

    def place(x: Any) -> jax.Array:
        x = x if reads_on_demand(x) else np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(place, batch)


def spec_text(sharding: Any) -> str:
    """ "P(None, 'fsdp')" for an array split on its second axis, "P()" for a whole one."""
    spec = getattr(sharding, "spec", None)
    if spec is None:
        return str(sharding)
    entries = list(spec)
    return "P()" if all(e is None for e in entries) else f"P({', '.join(map(repr, entries))})"


def describe(tree: Any) -> dict[str, str]:
    """path -> how each array leaf is split: what the tests and users check."""
    return {
        param_path(path): spec_text(x.sharding)
        for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def initialize_distributed() -> None:
    """Join a multi-process run through `jax.distributed.initialize`, before any device is
    touched. On SLURM and TPU pods it finds the coordinator, process count and index itself;
    elsewhere set JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and
    JAX_PROCESS_ID. CPU processes exchange data through gloo."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    count, index = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
    jax.distributed.initialize(
        num_processes=None if count is None else int(count),
        process_id=None if index is None else int(index),
    )


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a run's arrays live: on one device (mesh None: plain jit, nothing moved), or over
    a mesh built from the run's ShardingConfig when more than one device is present."""

    mesh: Mesh | None
    config: ShardingConfig

    @classmethod
    def for_run(cls, config: ShardingConfig) -> "Placement":
        """Refuses a mesh that does not fit the devices on one device too: --sharding.data 3
        on a laptop would otherwise be ignored there and fail only on the 8-device machine."""
        devices = jax.device_count()
        config.shape(devices)
        config.check()
        return cls(make_mesh(config) if devices > 1 else None, config)

    @property
    def batch_ways(self) -> int:
        return 1 if self.mesh is None else self.mesh.shape["data"] * self.mesh.shape["fsdp"]

    def state_shardings(self, tx: optax.GradientTransformation, model: nn.Module, example: Any):
        """For init_state: abstract state -> its shardings (None on one device), from the
        logical axes `model`'s parameters declare for `example` inputs."""
        if self.mesh is None:
            return None
        axes = param_axes(model, example)
        return lambda abstract: state_shardings(abstract, tx, self.mesh, self.config, axes)

    def step_shardings(self, state: Any) -> tuple[Any, Any] | None:
        """(the state's, the batch's) shardings for make_train_step / make_eval_step."""
        if self.mesh is None:
            return None
        return jax.tree.map(lambda x: x.sharding, state), batch_sharding(self.mesh)

    def batch(self, batch: Any) -> Any:
        if self.mesh is None:
            return host_batch(batch)
        return shard_batch(batch, batch_sharding(self.mesh))
