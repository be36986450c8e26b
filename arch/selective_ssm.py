"""Mamba's selective state-space mixer (Gu & Dao 2023) with the reference's parameterisation
and initialisation (state-spaces/mamba, mamba_simple.py): a low-rank step-size projection and
PyTorch's Conv1d initialisation of the short convolution.

Legend: b batch, t time, d model width, n states per channel, e expanded channels, r the rank
of the step-size projection.
"""

import math
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from arch.linear_mixers import dense, raise_problems
from arch.linear_scan import ScanMethod, linear_step, selective_scan


def inverse_softplus(y: jax.Array) -> jax.Array:
    """x with softplus(x) = y > 0: y + log(1 - exp(-y)) (the reference's form, stable for
    large y as well)."""
    return y + jnp.log(-jnp.expm1(-y))


class StepSizeProjection(nn.Module):
    """Mamba's `dt_proj`, [..., r] -> [..., e] float32, before the softplus: W s + b with
    kernel [r, e] uniform on +-dt_scale / sqrt(r) ("to preserve variance at initialization")
    and bias [e] = softplus^-1(dt), dt = exp(U(log dt_min, log dt_max)) floored at
    dt_init_floor, so that the initial steps softplus(b) are log-uniform in [dt_min, dt_max]
    (state-spaces/mamba, mamba_simple.py). The product runs in `dtype`; the bias is added in
    float32, as the reference's fused kernel adds `delta_bias`."""

    features: int
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    dt_scale: float = 1.0
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.nowrap
    def bias_init(self, key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
        low, high = math.log(self.dt_min), math.log(self.dt_max)
        dt = jnp.exp(jax.random.uniform(key, shape, jnp.float32, low, high))
        return inverse_softplus(jnp.maximum(dt, self.dt_init_floor)).astype(dtype)

    @nn.compact
    def __call__(self, s: jax.Array) -> jax.Array:
        rank = s.shape[-1]
        bound = self.dt_scale * rank**-0.5
        uniform = lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)
        kernel = self.param("kernel", uniform, (rank, self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        rows = s.reshape(-1, rank).astype(self.dtype)  # [N, r]: one 2-D product (RowDense's)
        y = jnp.dot(rows, kernel.astype(self.dtype)).astype(jnp.float32)
        return y.reshape(*s.shape[:-1], self.features) + bias.astype(jnp.float32)


def torch_conv_init(width: int):
    """PyTorch's default Conv1d initialisation for a depthwise kernel of `width` taps:
    kaiming_uniform(a = sqrt(5)) gives uniform on +-1 / sqrt(fan_in), and the bias the same
    bound, with fan_in = in_channels / groups * width = width."""
    bound = width**-0.5
    return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)


class SelectiveSSM(nn.Module):
    """A selective state-space layer, Mamba's (Gu & Dao 2023; state-spaces/mamba,
    mamba_simple.py). The input is expanded to e = expand * d channels; a short causal
    depthwise convolution mixes neighbours; then each channel c runs n diagonal states with an
    input-dependent step size and projections:
        (s_t, B_t, C_t) = W_x x_t                     [r], [n], [n]  (x_proj)
        delta_t = softplus(W_dt s_t + b_dt)           [e]    (dt_proj: a rank-r step size)
        A = -exp(A_log)                               [e, n] (a fixed, stable diagonal)
        h_t = exp(delta_t A) * h_{t-1} + delta_t B_t x_t     (zero-order hold for A, Euler
                                                              for B)
        y_t = h_t C_t + D * x_t
    and the output is gated by SiLU(z_t), a second projection of the input. The step size
    goes through r = ceil(d / 16) dimensions (`dt_rank`); its initialisation
    (StepSizeProjection) and the convolution's (PyTorch's Conv1d default, `torch_conv_init`)
    are the reference's."""

    features: int
    state_size: int = 16
    expand: int = 2
    conv_width: int = 4
    dt_rank: int | Literal["auto"] = "auto"
    """r, the rank of the step-size projection: "auto" = ceil(features / 16), the reference's."""
    dt_min: float = 1e-3
    """The initial steps softplus(b_dt) are log-uniform in [dt_min, dt_max]."""
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    """... and at least dt_init_floor."""
    dt_scale: float = 1.0
    """dt_proj's kernel starts uniform on +-dt_scale / sqrt(r)."""
    dtype: str = "float32"
    param_dtype: str = "float32"

    @property
    def channels(self) -> int:
        return self.expand * self.features

    @property
    def rank(self) -> int:
        """r: dt_rank, or ceil(d / 16) for "auto"."""
        return math.ceil(self.features / 16) if self.dt_rank == "auto" else self.dt_rank

    @nn.nowrap
    def config_problems(self) -> list[str]:
        problems = []
        rank = self.dt_rank
        if rank != "auto" and not (isinstance(rank, int) and not isinstance(rank, bool)):
            problems.append(f"dt_rank must be 'auto' or an integer, got {rank!r}")
        elif rank != "auto" and rank < 1:
            problems.append(f"dt_rank must be >= 1 (or 'auto'), got {rank} (set --model.dt-rank)")
        steps = (self.dt_min, self.dt_max, self.dt_init_floor)
        if not (all(math.isfinite(v) and v > 0 for v in steps) and self.dt_min <= self.dt_max):
            problems.append(
                "the initial steps need 0 < dt_min <= dt_max and dt_init_floor > 0, all finite, "
                f"got dt_min {self.dt_min}, dt_max {self.dt_max}, dt_init_floor "
                f"{self.dt_init_floor} (set --model.dt-min, --model.dt-max, --model.dt-init-floor)"
            )
        if not (self.dt_scale > 0 and math.isfinite(self.dt_scale)):
            problems.append(
                f"dt_scale must be > 0 and finite, got {self.dt_scale} (set --model.dt-scale)"
            )
        return problems

    def setup(self) -> None:
        raise_problems(self)
        e, n, r = self.channels, self.state_size, self.rank
        options = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        self.in_proj = dense(2 * e, "in_proj", use_bias=False, **options)  # x branch, gate z
        dtype = self.param_dtype
        conv_init = torch_conv_init(self.conv_width)
        self.conv = self.param("conv", conv_init, (self.conv_width, e), dtype)  # [w, e]
        self.conv_bias = self.param("conv_bias", conv_init, (e,), dtype)
        self.x_proj = dense(r + 2 * n, "x_proj", use_bias=False, **options)  # s, B, C
        self.dt_proj = StepSizeProjection(
            e, self.dt_min, self.dt_max, self.dt_init_floor, self.dt_scale, **options
        )
        self.a_log = self.param(
            "a_log",
            lambda key, shape, dtype: jnp.log(
                jnp.broadcast_to(jnp.arange(1.0, n + 1), shape)
            ).astype(dtype),
            (e, n),
            dtype,
        )  # A = -(1, 2, ..., n) per channel, as S4D-real
        self.skip = self.param("skip", nn.initializers.ones_init(), (e,), dtype)
        self.out_proj = dense(self.features, "out_proj", use_bias=False, **options)

    def projections(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x [..., e] (after the convolution) -> (delta [..., e], B [..., n], C [..., n]),
        float32."""
        r, n = self.rank, self.state_size
        s, b, c = jnp.split(self.x_proj(x).astype(jnp.float32), [r, r + n], axis=-1)
        return nn.softplus(self.dt_proj(s)), b, c

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
