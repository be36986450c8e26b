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

from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from arch.errors import ConfigError
from arch.layers import RowDense

ScanMethod = Literal["auto", "sequential", "parallel"]
SCAN_METHODS = ("sequential", "parallel")


def resolve_method(method: ScanMethod) -> str:
    """ "auto": the scan measured faster on this backend. On CPU that is the sequential one
    (experiments/linear_scan_speed.py: the associative scan takes 1.6-2.1x its time at 1K-16K
    steps); elsewhere the parallel one, which a GPU is expected to favour (not yet measured)."""
    if method == "auto":
        return "sequential" if jax.default_backend() == "cpu" else "parallel"
    if method not in SCAN_METHODS:
        raise ConfigError(f"unknown scan method {method!r}; choose one of {SCAN_METHODS} or 'auto'")
    return method


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
    method: ScanMethod = "auto",
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
    if resolve_method(method) == "parallel":
        return jax.lax.associative_scan(combine, (a, b), axis=1)[1]

    def step(h: jax.Array, inputs: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        a_t, b_t = inputs
        h = a_t * h + b_t  # h_t = a_t * h_{t-1} + b_t
        return h, h

    time_major = (jnp.swapaxes(a, 0, 1), jnp.swapaxes(b, 0, 1))  # [t, b, n]
    h0 = jnp.zeros(b.shape[:1] + b.shape[2:], dtype)
    _, states = jax.lax.scan(step, h0, time_major, unroll=unroll)
    return jnp.swapaxes(states, 0, 1)  # [b, t, n]


def log_linear_scan(log_a: jax.Array, log_b: jax.Array) -> jax.Array:
    """h_t = a_t * h_{t-1} + b_t from h_0 = 0 for POSITIVE a, b given by their logarithms
    [b, t, n], computed in parallel in log space (Feng et al. 2024): with A_t = sum_{s<=t} log a_s,
    h_t = exp(A_t + log sum_{s<=t} exp(log b_s - A_s)). No product of many gates is ever formed,
    so nothing underflows; the price is a cancellation of two large terms (relative error about
    |A_t| * 6e-8 in float32)."""
    a_star = jnp.cumsum(log_a.astype(jnp.float32), axis=1)  # A_t
    return jnp.exp(a_star + jax.lax.cumlogsumexp(log_b.astype(jnp.float32) - a_star, axis=1))


def log_g(v: jax.Array) -> jax.Array:
    """log g(v) for minGRU / minLSTM's positive candidate g(v) = v + 0.5 (v >= 0), sigmoid(v)."""
    return jnp.where(v >= 0, jnp.log(nn.relu(v) + 0.5), -nn.softplus(-v))


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

    def __call__(self, x: jax.Array, method: ScanMethod = "auto") -> jax.Array:
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
    log_space: bool = False
    """The paper's log-space form: h~_t = g(W_h x_t) > 0, so every state is positive and the
    parallel scan runs on logarithms (`log_linear_scan`); the sequential scan and decoding run
    the same recurrence on the values."""
    dtype: str = "float32"
    param_dtype: str = "float32"

    num_gates = 1

    def setup(self) -> None:
        gates = (self.num_gates + 1) * self.hidden_size
        self.gates = dense(gates, "gates", self.dtype, self.param_dtype)
        self.output = dense(self.features, "output", self.dtype, self.param_dtype)

    def log_coefficients(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(log a_t, log b_t) of the log-space form: log(1 - z_t), log z_t + log g(h~_t)."""
        z, candidate = jnp.split(self.gates(x).astype(jnp.float32), 2, axis=-1)
        return -nn.softplus(z), -nn.softplus(-z) + log_g(candidate)

    def coefficients(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        if self.log_space:
            log_a, log_b = self.log_coefficients(x)
            return jnp.exp(log_a), jnp.exp(log_b)
        z, candidate = jnp.split(self.gates(x).astype(jnp.float32), 2, axis=-1)
        z = nn.sigmoid(z)  # z_t = sigma(W_z x_t)
        return 1 - z, z * candidate  # a_t = 1 - z_t, b_t = z_t * h~_t

    def __call__(self, x: jax.Array, method: ScanMethod = "auto") -> jax.Array:
        if self.log_space and resolve_method(method) == "parallel":
            return self.output(log_linear_scan(*self.log_coefficients(x)))
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

    num_gates = 2

    def log_coefficients(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        f, i, candidate = jnp.split(self.gates(x).astype(jnp.float32), 3, axis=-1)
        log_f, log_i = -nn.softplus(-f), -nn.softplus(-i)  # log sigma
        log_total = jnp.logaddexp(log_f, log_i)  # log(f + i)
        return log_f - log_total, log_i - log_total + log_g(candidate)

    def coefficients(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        if self.log_space:
            log_a, log_b = self.log_coefficients(x)
            return jnp.exp(log_a), jnp.exp(log_b)
        f, i, candidate = jnp.split(self.gates(x).astype(jnp.float32), 3, axis=-1)
        f, i = nn.sigmoid(f), nn.sigmoid(i)
        total = f + i
        return f / total, i / total * candidate  # a_t = f'_t, b_t = i'_t * h~_t


SELECTIVE_SCAN_CHUNK = 32
"""Steps per recomputed chunk of the sequential selective scan (16-32 measured best)."""


def selective_scan(
    delta: jax.Array,
    a: jax.Array,
    x: jax.Array,
    b: jax.Array,
    c: jax.Array,
    *,
    method: ScanMethod = "auto",
    chunk: int | None = SELECTIVE_SCAN_CHUNK,
) -> jax.Array:
    """Mamba's recurrence, n states per channel: h_t = exp(delta_t A) * h_{t-1} + delta_t x_t B_t,
    y_t = h_t C_t, from h_0 = 0. delta, x [b, t, e], A [e, n], B, C [b, t, n] -> y [b, t, e]
    (float32).

    "sequential" forms exp(delta_t A) and delta_t x_t B_t inside the loop, one step at a time,
    so the [b, t, e, n] coefficients are never materialised: 5x faster forward and 1.6x faster
    forward + backward than materialising them on a 2-core CPU (b 32, t 200, e 48, n 16).
    Its backward recomputes the states instead of storing them: the scan runs over chunks of
    `chunk` steps under `jax.checkpoint`, so only the [b, e, n] state at each chunk's start is
    kept, and a chunk's steps are redone when its gradient is taken (None: store every step's
    state, as a plain scan does). The same outputs to the bit, and the same gradients but for
    A's, summed chunk by chunk (float32 rounding). On the 2-core CPU, forward +
    backward at (b, t, e) = (4, 4096, 192) took 276 ms and 56 MiB of XLA temporaries against
    413 ms and 627 MiB storing every state, (4, 2048, 600) 428 ms / 86 MiB against 599 / 977,
    (32, 200, 48) 24 ms / 19 MiB against 37 / 62: storing e x n floats per step costs more
    than recomputing them. "parallel" needs all the coefficients at once for the associative
    scan."""
    delta, x, b, c = (v.astype(jnp.float32) for v in (delta, x, b, c))
    a = a.astype(jnp.float32)
    dx = delta * x  # delta_t x_t [b, t, e]
    if resolve_method(method) == "parallel":
        batch, time, e = x.shape
        shape = (batch, time, e * a.shape[-1])
        coefficient = jnp.exp(delta[..., None] * a).reshape(shape)  # exp(delta_t A)
        inputs = (dx[..., None] * b[..., None, :]).reshape(shape)  # delta_t x_t B_t
        h = linear_scan(coefficient, inputs, method="parallel").reshape(*x.shape, -1)
        return jnp.einsum("bten,btn->bte", h, c)

    def step(h: jax.Array, inputs: tuple[jax.Array, ...]) -> tuple[jax.Array, jax.Array]:
        delta_t, dx_t, b_t, c_t = inputs  # [b, e], [b, e], [b, n], [b, n]
        h = jnp.exp(delta_t[..., None] * a) * h + dx_t[..., None] * b_t[:, None, :]
        return h, jnp.einsum("ben,bn->be", h, c_t)

    batch, time, e = x.shape
    h0 = jnp.zeros((batch, *a.shape), jnp.float32)
    if not chunk:
        time_major = tuple(jnp.swapaxes(v, 0, 1) for v in (delta, dx, b, c))
        return jnp.swapaxes(jax.lax.scan(step, h0, time_major)[1], 0, 1)
    # pad t to whole chunks with delta = 0 and no input: exp(0 A) = 1 leaves h as it was
    pad = ((0, 0), (0, -time % chunk), (0, 0))
    chunked = tuple(
        jnp.swapaxes(jnp.pad(v, pad), 0, 1).reshape(-1, chunk, batch, v.shape[-1])
        for v in (delta, dx, b, c)
    )  # [t / chunk, chunk, b, e or n]
    run_chunk = jax.checkpoint(lambda h, inputs: jax.lax.scan(step, h, inputs))
    ys = jax.lax.scan(run_chunk, h0, chunked)[1]  # [t / chunk, chunk, b, e]
    return jnp.swapaxes(ys.reshape(-1, batch, e)[:time], 0, 1)


def delta_bias_init(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
    """The bias whose softplus is log-uniform in [1e-3, 0.1]: inverse softplus of the steps."""
    delta = jnp.exp(jax.random.uniform(key, shape, minval=jnp.log(1e-3), maxval=jnp.log(1e-1)))
    return jnp.log(jnp.expm1(delta)).astype(dtype)  # softplus^-1(delta)


class SelectiveSSM(nn.Module):
    """A selective state-space layer in the style of Mamba (Gu & Dao 2023). The input is
    expanded to e = expand * d channels; a short causal depthwise convolution mixes neighbours;
    then each channel c runs n diagonal states with an input-dependent step size and
    projections:
        delta_t = softplus(W_delta x_t + b)           [e]    (how far to move per token)
        A = -exp(A_log)                               [e, n] (a fixed, stable diagonal)
        h_t = exp(delta_t A) * h_{t-1} + delta_t B_t x_t     (B_t = W_B x_t [n], zero-order hold
                                                              for A, Euler for B)
        y_t = h_t C_t + D * x_t                       (C_t = W_C x_t [n])
    and the output is gated by SiLU(z_t), a second projection of the input."""

    features: int
    state_size: int = 16
    expand: int = 2
    conv_width: int = 4
    dtype: str = "float32"
    param_dtype: str = "float32"

    @property
    def channels(self) -> int:
        return self.expand * self.features

    def setup(self) -> None:
        e, n = self.channels, self.state_size
        options = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        self.in_proj = dense(2 * e, "in_proj", use_bias=False, **options)  # x branch, gate z
        dtype = self.param_dtype
        self.conv = self.param(
            "conv", nn.initializers.normal(self.conv_width**-0.5), (self.conv_width, e), dtype
        )
        self.conv_bias = self.param("conv_bias", nn.initializers.zeros_init(), (e,), dtype)
        self.x_proj = dense(e + 2 * n, "x_proj", use_bias=False, **options)  # delta, B, C
        self.a_log = self.param(
            "a_log",
            lambda key, shape, dtype: jnp.log(
                jnp.broadcast_to(jnp.arange(1.0, n + 1), shape)
            ).astype(dtype),
            (e, n),
            dtype,
        )  # A = -(1, 2, ..., n) per channel, as S4D-real
        self.delta_bias = self.param("delta_bias", delta_bias_init, (e,), dtype)
        self.skip = self.param("skip", nn.initializers.ones_init(), (e,), dtype)
        self.out_proj = dense(self.features, "out_proj", use_bias=False, **options)

    def projections(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x [..., e] (after the convolution) -> (delta [..., e], B [..., n], C [..., n]),
        float32."""
        e, n = self.channels, self.state_size
        delta, b, c = jnp.split(self.x_proj(x).astype(jnp.float32), [e, e + n], axis=-1)
        return nn.softplus(delta + self.delta_bias), b, c

    def state_matrix(self) -> jax.Array:
        return -jnp.exp(self.a_log.astype(jnp.float32))  # A [e, n], negative: stable

    def gate(self, y: jax.Array, x: jax.Array, z: jax.Array) -> jax.Array:
        """(y + D x) * SiLU(z), projected back to d: y, x, z [..., e] -> [..., d]."""
        y = y + self.skip * x.astype(jnp.float32)
        return self.out_proj((y * nn.silu(z.astype(jnp.float32))).astype(self.dtype))

    def __call__(self, x: jax.Array, method: ScanMethod = "auto") -> jax.Array:
        """x [b, t, d] -> [b, t, d]."""
        time = x.shape[1]
        branch, z = jnp.split(self.in_proj(x), 2, axis=-1)  # [b, t, e] each
        padded = jnp.pad(branch, ((0, 0), (self.conv_width - 1, 0), (0, 0)))  # causal: left
        mixed = sum(
            padded[:, k : k + time] * self.conv[k] for k in range(self.conv_width)
        )  # depthwise causal convolution
        branch = nn.silu(mixed + self.conv_bias)
        delta, b, c = self.projections(branch)
        y = selective_scan(delta, self.state_matrix(), branch, b, c, method=method)
        return self.gate(y, branch, z)

    @nn.nowrap
    def initial_state(self, batch: int) -> tuple[jax.Array, jax.Array]:
        """(the last conv_width - 1 inputs of the convolution [b, w - 1, e], h [b, e, n])."""
        e, n = self.channels, self.state_size
        return (
            jnp.zeros((batch, self.conv_width - 1, e), jnp.float32),
            jnp.zeros((batch, e, n), jnp.float32),
        )

    def step(self, state: tuple, x: jax.Array) -> tuple[tuple, jax.Array]:
        """x [b, d] -> (state, [b, d])."""
        window, h = state
        branch, z = jnp.split(self.in_proj(x), 2, axis=-1)  # [b, e]
        window = jnp.concatenate([window, branch[:, None].astype(jnp.float32)], axis=1)
        mixed = jnp.einsum("bwe,we->be", window, self.conv)  # the same causal convolution
        branch = nn.silu(mixed + self.conv_bias)
        delta, b, c = self.projections(branch)  # [b, e], [b, n], [b, n]
        a = jnp.exp(delta[..., None] * self.state_matrix())  # exp(delta_t A) [b, e, n]
        h = linear_step(a, (delta * branch)[..., None] * b[:, None, :], h)
        y = jnp.einsum("ben,bn->be", h, c)  # C_t h_t
        return (window[:, 1:], h), self.gate(y, branch, z)
