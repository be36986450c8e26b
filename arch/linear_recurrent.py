"""Linear recurrences: h_t = a_t * h_{t-1} + b_t, elementwise (a diagonal state matrix).

Legend: b batch, t time, n state width (real or complex).

Because the map h -> a h + b composes into another map of the same form,
(a_2, b_2) o (a_1, b_1) = (a_2 a_1, a_2 b_1 + b_2), the whole sequence can be computed either
step by step (`jax.lax.scan`, t sequential steps) or as a parallel prefix over that composition
(`jax.lax.associative_scan`, log t levels of t parallel work). Both give the same numbers and
are differentiable; which is faster depends on the backend (measured by
experiments/linear_scan_speed.py). The state is accumulated in float32 (complex64 for complex
inputs) whatever the compute dtype.
"""

from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from arch.layers import RowDense

ScanMethod = Literal["sequential", "parallel"]
SCAN_METHODS = ("sequential", "parallel")


def accumulation_dtype(*arrays: jax.Array) -> jnp.dtype:
    """complex64 if any input is complex, else float32."""
    return jnp.complex64 if any(jnp.iscomplexobj(x) for x in arrays) else jnp.float32


def combine(
    earlier: tuple[jax.Array, jax.Array], later: tuple[jax.Array, jax.Array]
) -> tuple[jax.Array, jax.Array]:
    """The composition of two steps: first `earlier` (a_1, b_1), then `later` (a_2, b_2)."""
    a_1, b_1 = earlier
    a_2, b_2 = later
    return a_2 * a_1, a_2 * b_1 + b_2  # h -> a_2 (a_1 h + b_1) + b_2


def linear_scan(
    a: jax.Array,
    b: jax.Array,
    initial: jax.Array | None = None,
    *,
    method: ScanMethod = "sequential",
    unroll: int = 1,
) -> jax.Array:
    """All states h_t = a_t * h_{t-1} + b_t, t = 1..T, from h_0 = `initial` (default 0).

    a, b [b, t, n] (real or complex; a may broadcast against b), initial [b, n] -> h [b, t, n]
    in float32 / complex64.
    """
    dtype = accumulation_dtype(a, b, *([] if initial is None else [initial]))
    a, b = jnp.broadcast_arrays(a.astype(dtype), b.astype(dtype))
    if initial is not None:  # fold h_0 into the first step: b_1 <- a_1 h_0 + b_1
        b = b.at[:, 0].add(a[:, 0] * initial.astype(dtype))
    if method == "parallel":
        return jax.lax.associative_scan(combine, (a, b), axis=1)[1]
    if method != "sequential":
        raise ValueError(f"unknown scan method {method!r}; choose one of {SCAN_METHODS}")

    def step(h: jax.Array, inputs: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        a_t, b_t = inputs
        h = a_t * h + b_t  # h_t = a_t * h_{t-1} + b_t
        return h, h

    time_major = (jnp.swapaxes(a, 0, 1), jnp.swapaxes(b, 0, 1))  # [t, b, n]
    h0 = jnp.zeros(b.shape[:1] + b.shape[2:], dtype)
    _, states = jax.lax.scan(step, h0, time_major, unroll=unroll)
    return jnp.swapaxes(states, 0, 1)  # [b, t, n]


def linear_step(a: jax.Array, b: jax.Array, h: jax.Array) -> jax.Array:
    """One step for decoding: h_t = a_t * h_{t-1} + b_t, a, b, h [b, n]."""
    dtype = accumulation_dtype(a, b, h)
    return a.astype(dtype) * h.astype(dtype) + b.astype(dtype)


def dense(features: int, name: str, dtype: str, param_dtype: str, use_bias: bool = True):
    return RowDense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name)


class LRU(nn.Module):
    """Linear Recurrent Unit (Orvieto et al. 2023): a complex diagonal recurrence
    h_t = lambda * h_{t-1} + gamma * (B x_t), y_t = Re(C h_t) + D * x_t, with
    lambda = exp(-exp(nu) + i exp(theta)): |lambda| = exp(-exp(nu)) < 1 for ANY nu, theta, so
    the recurrence is stable by construction; gamma = sqrt(1 - |lambda|^2) keeps the state's
    scale independent of how close |lambda| is to 1."""

    features: int
    """d: input and output width."""
    state_size: int = 64
    """n: complex state width."""
    r_min: float = 0.9
    r_max: float = 0.999
    """|lambda| starts uniform on the ring r_min <= |lambda| <= r_max (long memory)."""
    max_phase: float = 6.283
    dtype: str = "float32"
    param_dtype: str = "float32"

    def setup(self) -> None:
        n, d = self.state_size, self.features

        def nu_init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
            u = jax.random.uniform(key, shape, dtype)  # |lambda|^2 uniform on [r_min^2, r_max^2]
            return jnp.log(-0.5 * jnp.log(u * (self.r_max**2 - self.r_min**2) + self.r_min**2))

        def theta_init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
            return jnp.log(self.max_phase * jax.random.uniform(key, shape, dtype))

        normal = lambda scale: nn.initializers.normal(scale)
        self.nu_log = self.param("nu_log", nu_init, (n,), self.param_dtype)
        self.theta_log = self.param("theta_log", theta_init, (n,), self.param_dtype)
        self.input_re = self.param("input_re", normal((2 * d) ** -0.5), (d, n), self.param_dtype)
        self.input_im = self.param("input_im", normal((2 * d) ** -0.5), (d, n), self.param_dtype)
        self.output_re = self.param("output_re", normal(n**-0.5), (n, d), self.param_dtype)
        self.output_im = self.param("output_im", normal(n**-0.5), (n, d), self.param_dtype)
        self.skip = self.param("skip", normal(1.0), (d,), self.param_dtype)

    def eigenvalues(self) -> jax.Array:
        """lambda = exp(-exp(nu) + i exp(theta)) [n] complex64, strictly inside the unit circle
        for any parameters: the decay exp(nu) is floored at 1e-6 (memory of at most ~1e6
        steps; below it float32 rounds |lambda| to 1) and the phase is kept finite."""
        nu, theta = self.nu_log.astype(jnp.float32), self.theta_log.astype(jnp.float32)
        magnitude = jnp.exp(-jnp.maximum(jnp.exp(nu), 1e-6))  # |lambda| = exp(-exp(nu)) < 1
        phase = jnp.exp(jnp.minimum(theta, 30.0))  # arg lambda = exp(theta)
        return magnitude * (jnp.cos(phase) + 1j * jnp.sin(phase))

    def coefficients(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(a = lambda [n], b = gamma * B x [..., n]) for x [..., d]."""
        lam = self.eigenvalues()
        gamma = jnp.sqrt(1 - jnp.abs(lam) ** 2)  # normalisation
        x = x.astype(jnp.float32)
        projected = x @ self.input_re.astype(jnp.float32) + 1j * (
            x @ self.input_im.astype(jnp.float32)
        )
        return lam, gamma * projected  # B x_t, [..., n]

    def read(self, h: jax.Array, x: jax.Array) -> jax.Array:
        """y = Re(C h) + D * x: h [..., n] complex, x [..., d] -> [..., d]."""
        real = h.real @ self.output_re.astype(jnp.float32) - h.imag @ self.output_im.astype(
            jnp.float32
        )
        return (real + self.skip.astype(jnp.float32) * x.astype(jnp.float32)).astype(self.dtype)

    def __call__(self, x: jax.Array, method: ScanMethod = "sequential") -> jax.Array:
        """x [b, t, d] -> y [b, t, d]."""
        lam, inputs = self.coefficients(x)
        return self.read(linear_scan(lam[None, None], inputs, method=method), x)

    @nn.nowrap
    def initial_state(self, batch: int) -> jax.Array:
        return jnp.zeros((batch, self.state_size), jnp.complex64)

    def step(self, h: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x [b, d] -> (h [b, n], y [b, d])."""
        lam, inputs = self.coefficients(x)
        h = linear_step(lam[None], inputs, h)
        return h, self.read(h, x)


class MinGRU(nn.Module):
    """minGRU (Feng et al. 2024): the GRU with gates of the input only, so h is linear in h_{t-1}:
    z_t = sigma(W_z x_t), h~_t = W_h x_t, h_t = (1 - z_t) * h_{t-1} + z_t * h~_t."""

    features: int
    hidden_size: int = 128
    dtype: str = "float32"
    param_dtype: str = "float32"

    def setup(self) -> None:
        self.gates = dense(2 * self.hidden_size, "gates", self.dtype, self.param_dtype)
        self.output = dense(self.features, "output", self.dtype, self.param_dtype)

    def coefficients(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        z, candidate = jnp.split(self.gates(x).astype(jnp.float32), 2, axis=-1)
        z = nn.sigmoid(z)  # z_t = sigma(W_z x_t)
        return 1 - z, z * candidate  # a_t = 1 - z_t, b_t = z_t * h~_t

    def __call__(self, x: jax.Array, method: ScanMethod = "sequential") -> jax.Array:
        return self.output(linear_scan(*self.coefficients(x), method=method))

    @nn.nowrap
    def initial_state(self, batch: int) -> jax.Array:
        return jnp.zeros((batch, self.hidden_size), jnp.float32)

    def step(self, h: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = linear_step(*self.coefficients(x), h)  # h_t = (1 - z_t) * h_{t-1} + z_t * h~_t
        return h, self.output(h)


class MinLSTM(MinGRU):
    """minLSTM (Feng et al. 2024): f_t = sigma(W_f x_t), i_t = sigma(W_i x_t), normalised to sum to
    1, h_t = f'_t * h_{t-1} + i'_t * h~_t with f' = f / (f + i), i' = i / (f + i)."""

    def setup(self) -> None:
        self.gates = dense(3 * self.hidden_size, "gates", self.dtype, self.param_dtype)
        self.output = dense(self.features, "output", self.dtype, self.param_dtype)

    def coefficients(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        f, i, candidate = jnp.split(self.gates(x).astype(jnp.float32), 3, axis=-1)
        f, i = nn.sigmoid(f), nn.sigmoid(i)
        total = f + i
        return f / total, i / total * candidate  # a_t = f'_t, b_t = i'_t * h~_t


Mixer = Literal["lru", "mingru", "minlstm"]
MIXERS: dict[str, type[nn.Module]] = {"lru": LRU, "mingru": MinGRU, "minlstm": MinLSTM}


class GatedMLP(nn.Module):
    """The gated feed-forward block: W_o (gelu(W_g x) * W_u x)."""

    features: int
    hidden_size: int
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        gate = dense(self.hidden_size, "gate", self.dtype, self.param_dtype)(x)
        up = dense(self.hidden_size, "up", self.dtype, self.param_dtype)(x)
        return dense(self.features, "down", self.dtype, self.param_dtype)(nn.gelu(gate) * up)


class LinearRecurrentBlock(nn.Module):
    """A residual block: x + mixer(LayerNorm(x)), then x + GatedMLP(LayerNorm(x))."""

    mixer: Mixer
    features: int
    state_size: int
    ffn_hidden: int
    scan: ScanMethod = "sequential"
    dtype: str = "float32"
    param_dtype: str = "float32"

    def setup(self) -> None:
        if self.mixer not in MIXERS:
            raise ValueError(f"unknown mixer {self.mixer!r}; choose one of {sorted(MIXERS)}")
        sizes = {"state_size": self.state_size} if self.mixer == "lru" else {}
        sizes = sizes or {"hidden_size": self.state_size}
        options = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        self.mix = MIXERS[self.mixer](self.features, **sizes, **options)
        self.norms = [nn.LayerNorm(**options) for _ in range(2)]
        self.mlp = GatedMLP(self.features, self.ffn_hidden, **options)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.mix(self.norms[0](x), method=self.scan)  # [b, t, d]
        return x + self.mlp(self.norms[1](x))

    @nn.nowrap
    def initial_state(self, batch: int) -> jax.Array:
        sizes = {"state_size": self.state_size} if self.mixer == "lru" else {}
        sizes = sizes or {"hidden_size": self.state_size}
        return MIXERS[self.mixer](self.features, **sizes, parent=None).initial_state(batch)

    def step(self, state: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x [b, d] -> (state, [b, d]): one position, a constant-size state."""
        state, mixed = self.mix.step(state, self.norms[0](x))
        x = x + mixed
        return state, x + self.mlp(self.norms[1](x))


class LinearRecurrentModel(nn.Module):
    """Shared configuration and body of the linear-recurrence models: embedding (token ids) or
    projection (features), `num_layers` residual blocks, final LayerNorm."""

    num_outputs: int = 10
    vocab_size: int | None = None
    mixer: Mixer = "lru"
    num_layers: int = 2
    features: int = 64
    state_size: int = 64
    """n: the LRU's complex state, or minGRU / minLSTM's hidden width."""
    ffn_hidden: int | None = None
    """None: 2 * features."""
    scan: ScanMethod = "sequential"
    """Sequential measured faster on a 2-core CPU (experiments/linear_scan_speed.py); the
    parallel scan gives the same numbers."""
    dtype: str = "float32"
    param_dtype: str = "float32"

    def setup(self) -> None:
        options = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        if self.vocab_size is not None:
            self.embedding = nn.Embed(self.vocab_size, self.features, param_dtype=self.param_dtype)
        self.projection = dense(self.features, "projection", **options)
        self.blocks = [
            LinearRecurrentBlock(
                self.mixer,
                self.features,
                self.state_size,
                self.ffn_hidden or 2 * self.features,
                self.scan,
                **options,
            )
            for _ in range(self.num_layers)
        ]
        self.final_norm = nn.LayerNorm(**options)
        self.head = dense(self.num_outputs, "head", **options)

    def embed(self, inputs: jax.Array) -> jax.Array:
        """Token ids [b, t] -> [b, t, d]; features [b, t, f] -> [b, t, d]."""
        if jnp.issubdtype(inputs.dtype, jnp.integer):
            if self.vocab_size is None:
                raise ValueError(
                    f"{type(self).__name__} got token ids {inputs.shape} but vocab_size is None; "
                    "set --model.vocab-size"
                )
            return self.embedding(inputs)
        if inputs.ndim != 3:
            raise ValueError(
                f"{type(self).__name__} expects token ids [batch, time] or features "
                f"[batch, time, features], got shape {tuple(inputs.shape)}"
            )
        return self.projection(inputs)

    def encode(self, inputs: jax.Array) -> jax.Array:
        x = self.embed(inputs)
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x)  # [b, t, d]


class LinearRecurrentClassifier(LinearRecurrentModel):
    """Many-to-one: the last position's encoding -> logits / values (the recurrence is causal,
    so the last position has read the whole sequence)."""

    def __call__(self, inputs: jax.Array, *, train: bool = False) -> jax.Array:
        return self.head(self.encode(inputs)[:, -1])  # [b, num_outputs]


class LinearRecurrentTagger(LinearRecurrentModel):
    """Many-to-many: an output at every position (copying, tagging, forecasting)."""

    def __call__(self, inputs: jax.Array, *, train: bool = False) -> jax.Array:
        return self.head(self.encode(inputs))  # [b, t, num_outputs]


class LinearRecurrentLM(LinearRecurrentModel):
    """Language model on linear recurrences: next-token logits at every step; decodes with a
    constant-size state per layer (no cache that grows with the length)."""

    num_outputs: int = 256
    vocab_size: int | None = 256

    def __call__(self, inputs: jax.Array, *, train: bool = False) -> jax.Array:
        """Token ids [b, t] -> next-token logits [b, t, v]."""
        return self.head(self.encode(inputs))

    @nn.nowrap
    def init_cache(self, batch_size: int, max_len: int | None = None) -> list[jax.Array]:
        block = LinearRecurrentBlock(self.mixer, self.features, self.state_size, 1, parent=None)
        return [block.initial_state(batch_size) for _ in range(self.num_layers)]

    def decode_step(self, cache: list[jax.Array], tokens: jax.Array) -> tuple[jax.Array, list]:
        """tokens [b] -> (next-token logits [b, v], the updated states)."""
        x = self.embedding(tokens)  # [b, d]
        states = []
        for state, block in zip(cache, self.blocks, strict=True):
            state, x = block.step(state, x)
            states.append(state)
        return self.head(self.final_norm(x)), states
