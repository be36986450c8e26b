"""Pieces shared by model families: activations, positional encodings, the feed-forward block,
and the logical axis names parameters declare.

Logical axes (Flax's logical partitioning, as in Flax's lm1b example and maxtext): a parameter
says what each of its axes is, and train/sharding.py maps those names to mesh axes, so the
sharding of a parameter never depends on what it is called. The names (LOGICAL_AXES):
- "embed": d, the model width (a residual stream's features);
- "mlp": f, the feed-forward hidden units (an MLP's hidden units on the split side);
- "hidden": an MLP's hidden units on the side that is not split;
- "heads" / "head_dim": h attention heads of e features each;
- "vocab": v, token embedding rows and a language model's outputs;
- "classes": a classifier's outputs;
- "position": the rows of a learned position table;
- "input": features read from the data (patches, feature vectors) before the first projection;
- "layers": the stacked layer axis of a scanned stack (`nn.scan`'s metadata);
- None: an axis no name describes (a single class token, a d -> d transform's output).
"""

import contextlib
import contextvars
import math
import numbers
from collections.abc import Callable, Iterator
from typing import Any, Literal, get_args

import flax.linen as nn
import jax
import jax.numpy as jnp

from arch.errors import ConfigError

Axes = tuple[str | None, ...]
LOGICAL_AXES = (
    "embed", "mlp", "hidden", "heads", "head_dim", "vocab", "classes", "position", "input",
    "layers",
)  # fmt: skip


_BOX_AXES = contextvars.ContextVar("box_axes", default=False)


@contextlib.contextmanager
def boxed_axes() -> Iterator[None]:
    """Within it, a parameter made by a `logical` initializer comes boxed with its names
    (`nn.LogicallyPartitioned`, what train.sharding.param_axes reads from an abstract init);
    outside it `model.init` returns plain arrays, as if no names were declared, so no caller
    has to unbox. It acts while a model is traced: a function jitted outside it keeps the plain
    trace it was compiled with."""
    token = _BOX_AXES.set(True)
    try:
        yield
    finally:
        _BOX_AXES.reset(token)


def logical(init: Callable[..., jax.Array], axes: Axes) -> Callable[..., Any]:
    """`init` declaring the logical names `axes` (one per axis) of the parameter it makes: the
    values are `init`'s; inside `boxed_axes()` they come boxed (Flax's
    `nn.with_logical_partitioning`)."""
    boxed = nn.with_logical_partitioning(init, axes)

    def initializer(*args: Any, **kwargs: Any) -> Any:
        return boxed(*args, **kwargs) if _BOX_AXES.get() else init(*args, **kwargs)

    return initializer


def kernel_initializer(std: float | None) -> Callable[..., jax.Array]:
    """A kernel's initializer: LeCun normal (None, Flax's default) or normal(std) (GPT-2's and
    BERT's 0.02, for example)."""
    return nn.initializers.lecun_normal() if std is None else nn.initializers.normal(std)


def dense(
    features: int,
    axes: Axes,
    dtype: str,
    param_dtype: str,
    name: str | None = None,
    init_std: float | None = None,
) -> nn.Dense:
    """nn.Dense with its own initializers (LeCun normal kernel, or normal(init_std); zero bias),
    its kernel named `axes` (in, out) and its bias (out,)."""
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=logical(kernel_initializer(init_std), axes),
        bias_init=logical(nn.initializers.zeros_init(), axes[1:]),
        name=name,
    )


LAYER_NORM_EPS = 1e-6
"""Flax's LayerNorm epsilon, the default of every Transformer (BERT's is 1e-12, GPT-2's 1e-5)."""


def layer_norm(
    dtype: str, param_dtype: str, name: str | None = None, epsilon: float = LAYER_NORM_EPS
) -> nn.LayerNorm:
    """nn.LayerNorm over d (epsilon added to the variance), its scale (ones) and bias (zeros)
    named ("embed",)."""
    return nn.LayerNorm(
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=logical(nn.initializers.ones_init(), ("embed",)),
        bias_init=logical(nn.initializers.zeros_init(), ("embed",)),
        name=name,
    )


Activation = Literal["sigmoid", "tanh", "relu", "gelu", "gelu_exact", "identity"]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "sigmoid": nn.sigmoid,
    "tanh": nn.tanh,
    "relu": nn.relu,
    # GELU's tanh approximation (Flax's nn.gelu; Hugging Face's "gelu_new", GPT-2's and the
    # original BERT code's)
    "gelu": nn.gelu,
    # x * Phi(x) with the exact normal CDF (Hugging Face's "gelu", BertConfig's hidden_act)
    "gelu_exact": lambda x: nn.gelu(x, approximate=False),
    "identity": lambda x: x,
}


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation function called `name`; a clear error for an unknown one."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def is_token_ids(model: nn.Module, inputs: jax.Array) -> bool:
    """Whether a sequence model's inputs are token ids [b, t] (integers) rather than features
    [b, t, f]; token ids for a model without a vocabulary are refused."""
    if not jnp.issubdtype(inputs.dtype, jnp.integer):
        return False
    if getattr(model, "vocab_size", None) is None:
        raise ConfigError(
            f"{type(model).__name__} got token ids {inputs.shape} but vocab_size is None; "
            "set --model.vocab-size"
        )
    return True


def chrono_problem(chrono: Any) -> str | None:
    """Why `chrono` (T_max, in time steps) cannot set chrono biases, or None where it can: it
    must be None (the default biases) or an integer > 2 (U(1, T_max - 1) needs T_max - 1 > 1)."""
    if chrono is None or (
        not isinstance(chrono, bool) and isinstance(chrono, numbers.Integral) and chrono > 2
    ):
        return None
    return (
        f"chrono is T_max, the longest dependency in time steps: an integer > 2 (or None for "
        f"the default biases), got {chrono!r} (set --model.chrono)"
    )


def check_chrono(chrono: Any) -> None:
    """A ConfigError with `chrono_problem`'s reason, if it has one."""
    problem = chrono_problem(chrono)
    if problem is not None:
        raise ConfigError(problem)


def chrono_bias(key: jax.Array, shape: tuple[int, ...], t_max: int, dtype: Any) -> jax.Array:
    """Chrono initialisation of a gate's bias (Tallec & Ollivier 2018, "Can recurrent neural
    networks warp time?"): b = log(u), u ~ U(1, t_max - 1), so that the gate sigma(b) keeps a
    state for about u steps at the start of training (characteristic times spread up to
    t_max) instead of the one or two steps a bias of 0 or 1 gives. A gate that writes (the
    LSTM's input gate) takes -b."""
    check_chrono(t_max)
    u = jax.random.uniform(key, shape, jnp.float32, 1.0, t_max - 1.0)
    return jnp.log(u).astype(dtype)


def flatten_examples(x: jax.Array) -> jax.Array:
    """[b, ...] -> [b, features]: every trailing axis of an example becomes one feature axis."""
    if x.ndim < 2:
        raise ConfigError(f"expected a batch of examples [batch, ...features], got shape {x.shape}")
    return x.reshape(x.shape[0], -1)  # [b, f]


Positional = Literal["sinusoidal", "learned", "rotary", "none"]


def sinusoidal_encoding(positions: jax.Array, features: int) -> jax.Array:
    """The encoding of "Attention Is All You Need": positions [..., t] -> [..., t, d] float32,
    PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(p / 10000^(2i/d))."""
    if features % 2:
        raise ConfigError(f"the sinusoidal encoding needs an even width, got {features}")
    rates = 10000.0 ** (-jnp.arange(0, features, 2, dtype=jnp.float32) / features)  # [d/2]
    angles = positions.astype(jnp.float32)[..., None] * rates  # [..., t, d/2]
    pairs = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1)  # [..., t, d/2, 2]
    return pairs.reshape(*angles.shape[:-1], features)  # sin at 2i, cos at 2i + 1


class PositionalEncoding(nn.Module):
    """Adds position information to embeddings x [b, t, d]: the sinusoidal encoding, a learned
    table of `max_len` rows (the only kind limited to max_len positions), or nothing ("rotary"
    rotates queries and keys inside attention instead; "none" leaves a model blind to order)."""

    kind: Positional
    max_len: int
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        """x [b, t, d], positions [b or 1, t] -> [b, t, d]."""
        if self.kind == "sinusoidal":
            return x + sinusoidal_encoding(positions, x.shape[-1]).astype(x.dtype)
        if self.kind == "learned":
            if x.shape[1] > self.max_len:  # the other kinds have no table to run out of
                raise ConfigError(
                    f"sequence of {x.shape[1]} positions exceeds max_len {self.max_len} "
                    "(the learned table's rows)"
                )
            table = nn.Embed(
                self.max_len,
                x.shape[-1],
                embedding_init=logical(nn.initializers.normal(0.02), ("position", "embed")),
                param_dtype=self.param_dtype,
                name="table",
            )
            return x + table(positions).astype(x.dtype)
        if self.kind in ("rotary", "none"):
            return x
        raise ConfigError(
            f"unknown positional encoding {self.kind!r}; choose one of {get_args(Positional)}"
        )


class RowDense(nn.Module):
    """A dense layer over the trailing `in_axes` axes of x [..., *in] -> [..., *features],
    computed as ONE 2-D product rows [N, prod(in)] x [prod(in), prod(features)] whatever the
    leading axes: on XLA:CPU the weight gradient of a [b, t, d] dot_general contracts two axes
    and misses the fast matmul path (README.md, "The measurements behind the defaults").
    Parameters are named, shaped and initialised as nn.Dense / nn.DenseGeneral's."""

    features: int | tuple[int, ...]
    in_axes: int = 1
    use_bias: bool = True
    init_std: float | None = None
    """None: the kernel is LeCun normal over the fan-in prod(in) (nn.Dense's); a float: normal
    with this standard deviation (GPT-2's 0.02)."""
    axes: Axes | None = None
    """Logical names of the kernel's axes (*in, *features); the bias takes the features' names.
    None: the parameters declare none (train/sharding.py then never splits them by name)."""
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out_shape = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        in_shape = x.shape[x.ndim - self.in_axes :]
        fan_in, fan_out = math.prod(in_shape), math.prod(out_shape)

        def kernel_init(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
            if self.init_std is not None:
                return nn.initializers.normal(self.init_std)(key, shape, dtype)
            flat = nn.initializers.lecun_normal()(key, (fan_in, fan_out), dtype)  # fan-in: prod(in)
            return flat.reshape(shape)

        bias_init = nn.initializers.zeros_init()
        if self.axes is not None:
            if len(self.axes) != self.in_axes + len(out_shape):
                raise ConfigError(
                    f"RowDense axes {self.axes} name {len(self.axes)} axes, its kernel has "
                    f"{self.in_axes + len(out_shape)}"
                )
            kernel_init = logical(kernel_init, self.axes)
            bias_init = logical(bias_init, self.axes[self.in_axes :])
        kernel = self.param("kernel", kernel_init, (*in_shape, *out_shape), self.param_dtype)
        rows = x.reshape(-1, fan_in).astype(self.dtype)  # [N, prod(in)]
        y = jnp.dot(rows, kernel.reshape(fan_in, fan_out).astype(self.dtype))  # [N, prod(out)]
        if self.use_bias:
            bias = self.param("bias", bias_init, out_shape, self.param_dtype)
            y = y + bias.reshape(fan_out).astype(self.dtype)
        return y.reshape(*x.shape[: x.ndim - self.in_axes], *out_shape)


class FeedForward(nn.Module):
    """The position-wise feed-forward block: Linear(d -> hidden) - activation - Linear(-> d)."""

    hidden_size: int
    features: int
    activation: Activation = "gelu"
    dropout_rate: float = 0.0
    init_std: float | None = None
    """The kernels' normal standard deviation; None: LeCun normal (RowDense)."""
    output_init_std: float | None = None
    """The second layer's (the residual output's: GPT-2 scales it by depth); None: init_std."""
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        dense = lambda size, axes, std, name: RowDense(
            size,
            init_std=std,
            axes=axes,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )
        output_std = self.init_std if self.output_init_std is None else self.output_init_std
        hidden = dense(self.hidden_size, ("embed", "mlp"), self.init_std, "hidden")(x)  # [b, t, f]
        hidden = activation_fn(self.activation)(hidden)
        hidden = nn.Dropout(self.dropout_rate, deterministic=not train)(hidden)
        return dense(self.features, ("mlp", "embed"), output_std, "output")(hidden)  # [b, t, d]
