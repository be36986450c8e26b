"""The token mixers of the linear-recurrent models, each a linear recurrence over its
input (arch/linear_scan.py): the LRU, minGRU and minLSTM, and Mamba's selective SSM.

Legend: b batch, t time, d model width, n state width, e expanded channels.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from arch.layers import RowDense
from arch.linear_scan import (
    ScanMethod,
    linear_scan,
    linear_step,
    log_linear_scan,
    resolve_method,
    selective_scan,
)


def log_g(v: jax.Array) -> jax.Array:
    """log g(v) for minGRU / minLSTM's positive candidate g(v) = v + 0.5 (v >= 0), sigmoid(v)."""
    return jnp.where(v >= 0, jnp.log(nn.relu(v) + 0.5), -nn.softplus(-v))


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
