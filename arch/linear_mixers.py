"""The token mixers of the linear-recurrent models, each a linear recurrence over its
input (arch/linear_scan.py): the LRU, minGRU and minLSTM (Mamba's selective SSM is in
arch/selective_ssm.py).

Legend: b batch, t time, d model width, n state width, e expanded channels, h minGRU /
minLSTM's hidden width.
"""

import math
import typing
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from arch.errors import ConfigError
from arch.layers import RowDense, chrono_bias, chrono_problem
from arch.linear_scan import (
    ScanMethod,
    linear_scan,
    linear_step,
    log_linear_scan,
    resolve_method,
)


def log_g(v: jax.Array) -> jax.Array:
    """log g(v) for minGRU / minLSTM's positive candidate g(v) = v + 0.5 (v >= 0), sigmoid(v)."""
    return jnp.where(v >= 0, jnp.log(nn.relu(v) + 0.5), -nn.softplus(-v))


def dense(features: int, name: str, dtype: str, param_dtype: str, use_bias: bool = True):
    return RowDense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name)


def raise_problems(module: nn.Module) -> None:
    """A mixer's `config_problems` as one ConfigError (the models report them through
    train/validate.py before this is reached; a mixer used on its own raises here)."""
    problems = module.config_problems()
    if problems:
        raise ConfigError(f"{type(module).__name__}: " + "; ".join(problems))


LRUNormalisation = Literal["trained", "tied"]

LRU_RECURRENCE_PARAMS = r"(^|/)(nu_log|theta_log|gamma_log|input_re|input_im)$"
"""The parameters of the LRU's recurrence, as a regular expression over parameter paths
('blocks_0/mix/nu_log'): lambda (nu_log, theta_log), gamma (gamma_log) and B (input_re,
input_im). They are the group the reference implementation (NicolasZucchet/minimal-LRU,
lru/train_helpers.py: "Smaller lr and no weight decay for lambda, gamma and B") trains at a
reduced learning rate."""
LRU_RECURRENCE_LR_FACTOR = 0.5
"""That reference's factor: its recurrence group trains at `lr_factor` x lr, default 0.5."""
LRU_RECURRENCE_LR_SCALE = ((LRU_RECURRENCE_PARAMS, LRU_RECURRENCE_LR_FACTOR),)
"""`OptimConfig(lr_scale=LRU_RECURRENCE_LR_SCALE)`: the LRU's recurrence at 0.5 x lr."""


def lru_recurrence_lr_scale(factor: float = LRU_RECURRENCE_LR_FACTOR) -> tuple:
    """`OptimConfig.lr_scale` that trains the LRU's recurrence (LRU_RECURRENCE_PARAMS) at
    `factor` x lr and everything else at lr."""
    return ((LRU_RECURRENCE_PARAMS, factor),)


MIN_DECAY = 1e-6
"""The floor of the LRU's decay exp(nu): a memory of at most ~1e6 steps (below it float32
rounds |lambda| = exp(-exp(nu)) to 1)."""


def lru_decay(nu_log: jax.Array) -> jax.Array:
    """-log |lambda| = exp(nu), floored at MIN_DECAY, float32."""
    return jnp.maximum(jnp.exp(nu_log.astype(jnp.float32)), MIN_DECAY)


def lru_tied_gamma(nu_log: jax.Array) -> jax.Array:
    """gamma = sqrt(1 - |lambda|^2) = sqrt(-expm1(-2 exp(nu))) [n] float32 (expm1: exact to
    float32 rounding however close |lambda| is to 1, where 1 - |lambda|^2 would cancel)."""
    return jnp.sqrt(-jnp.expm1(-2 * lru_decay(nu_log)))


def lru_gamma_log_init(key: jax.Array, nu_log: jax.Array, dtype: Any) -> jax.Array:
    """The paper's gamma_log <- log(sqrt(1 - |lambda|^2)) of the initial lambda (its Appendix A
    code, and minimal-LRU's `gamma_log_init`)."""
    del key
    return jnp.log(lru_tied_gamma(nu_log)).astype(dtype)


class LRU(nn.Module):
    """Linear Recurrent Unit (Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks for
    Long Sequences"): a complex diagonal recurrence
        h_t = lambda * h_{t-1} + gamma * (B x_t),    y_t = Re(C h_t) + D * x_t,
    with lambda = exp(-exp(nu) + i exp(theta)): |lambda| = exp(-exp(nu)) < 1 for ANY nu, theta,
    so the recurrence is stable by construction. gamma [n] keeps the state's scale independent
    of how close |lambda| is to 1: the paper makes it a parameter of its own, gamma =
    exp(gamma_log), initialised to log(sqrt(1 - |lambda|^2)) of the initial lambda and then
    trained freely ("trained", the paper's Appendix A code and minimal-LRU's); "tied"
    recomputes sqrt(1 - |lambda|^2) from the current lambda at every step instead (no
    gamma_log parameter).

    Initialisation ("ring"): |lambda|^2 uniform on [r_min^2, r_max^2] and the phase
    exp(theta) uniform on [0, max_phase]. The paper's code defaults are r_min 0, r_max 1,
    max_phase 6.28 (minimal-LRU's too); ours are 0.9 / 0.999 / 6.283 (a long memory from the
    start), kept from before.

    The paper trains the recurrence at a reduced learning rate: pass
    `OptimConfig(lr_scale=LRU_RECURRENCE_LR_SCALE)` (nu, theta, gamma and B at 0.5 x lr, the
    reference's factor)."""

    features: int
    """d: input and output width."""
    state_size: int = 64
    """n: complex state width."""
    normalisation: LRUNormalisation = "trained"
    """"trained": gamma = exp(gamma_log), its own parameter [n] (the paper's); "tied":
    gamma = sqrt(1 - |lambda|^2) of the current lambda."""
    r_min: float = 0.9
    """|lambda| starts uniform (in |lambda|^2) on the ring r_min <= |lambda| <= r_max; the
    paper's code defaults to 0, ours starts with a long memory."""
    r_max: float = 0.999
    """The paper's code defaults to 1."""
    max_phase: float = 6.283
    """The phase arg(lambda) starts uniform on [0, max_phase] (the paper's code: 6.28; the
    paper narrows it to pi / 10 for its longest tasks)."""
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.nowrap
    def config_problems(self) -> list[str]:
        problems = []
        if self.normalisation not in typing.get_args(LRUNormalisation):
            problems.append(
                f"normalisation must be one of {typing.get_args(LRUNormalisation)}, got "
                f"{self.normalisation!r} (set --model.normalisation)"
            )
        if not 0 <= self.r_min <= self.r_max <= 1:
            problems.append(
                f"the LRU's ring needs 0 <= r_min <= r_max <= 1, got r_min {self.r_min}, "
                f"r_max {self.r_max} (set --model.r-min, --model.r-max)"
            )
        if not (self.max_phase > 0 and math.isfinite(self.max_phase)):
            problems.append(
                f"max_phase must be > 0 and finite, got {self.max_phase} (set --model.max-phase)"
            )
        return problems

    def setup(self) -> None:
        raise_problems(self)
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
        if self.normalisation == "trained":  # last: the other parameters keep their keys
            self.gamma_log = self.param(
                "gamma_log", lru_gamma_log_init, self.nu_log, self.param_dtype
            )

    def eigenvalues(self) -> jax.Array:
        """lambda = exp(-exp(nu) + i exp(theta)) [n] complex64, strictly inside the unit circle
        for any parameters: the decay exp(nu) is floored at MIN_DECAY and the phase is kept
        finite."""
        theta = self.theta_log.astype(jnp.float32)
        magnitude = jnp.exp(-lru_decay(self.nu_log))  # |lambda| = exp(-exp(nu)) < 1
        phase = jnp.exp(jnp.minimum(theta, 30.0))  # arg lambda = exp(theta)
        return magnitude * (jnp.cos(phase) + 1j * jnp.sin(phase))

    def gamma(self) -> jax.Array:
        """The input normalisation gamma [n] float32: exp(gamma_log), or sqrt(1 - |lambda|^2)."""
        if self.normalisation == "trained":
            return jnp.exp(self.gamma_log.astype(jnp.float32))
        return lru_tied_gamma(self.nu_log)

    def coefficients(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(a = lambda [n], b = gamma * B x [..., n]) for x [..., d]."""
        x = x.astype(jnp.float32)
        projected = x @ self.input_re.astype(jnp.float32) + 1j * (
            x @ self.input_im.astype(jnp.float32)
        )
        return self.eigenvalues(), self.gamma() * projected  # gamma * B x_t, [..., n]

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


class GateProjection(nn.Module):
    """minGRU / minLSTM's one projection of the input, [..., d] -> [..., (g + 1) h]: the
    pre-activations of g gates, then the candidate, each h wide. Its parameters are RowDense's
    (kernel [d, (g + 1) h] LeCun normal, bias [(g + 1) h] zeros: the same names, the same
    values from the same key) unless `chrono` is set: then gate k's bias starts at
    signs[k] * log u with one u ~ U(1, chrono - 1) per unit shared by the gates
    (`arch.layers.chrono_bias`), and the candidate's at 0."""

    hidden_size: int
    signs: tuple[int, ...]
    """One per gate: +1 for a gate that keeps the state, -1 for one that writes into it."""
    chrono: int | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.nowrap
    def bias_init(self, key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
        if self.chrono is None:
            return jnp.zeros(shape, dtype)
        log_u = chrono_bias(key, (self.hidden_size,), self.chrono, jnp.float32)  # log u [h]
        gates = [sign * log_u for sign in self.signs]
        return jnp.concatenate([*gates, jnp.zeros_like(log_u)]).astype(dtype)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width, d = (len(self.signs) + 1) * self.hidden_size, x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (d, width), self.param_dtype)
        bias = self.param("bias", self.bias_init, (width,), self.param_dtype)
        rows = x.reshape(-1, d).astype(self.dtype)  # [N, d]: RowDense's one 2-D product
        y = jnp.dot(rows, kernel.astype(self.dtype)) + bias.astype(self.dtype)
        return y.reshape(*x.shape[:-1], width)


class MinGRU(nn.Module):
    """minGRU (Feng et al. 2024): the GRU with gates of the input only, so h is linear in h_{t-1}:
    z_t = sigma(W_z x_t + b_z), h~_t = W_h x_t + b_h, h_t = (1 - z_t) * h_{t-1} + z_t * h~_t.

    Chrono initialisation (Tallec & Ollivier 2018), `chrono` = T_max: the state is kept by
    a_t = 1 - z_t = sigma(-(W_z x_t + b_z)). Chrono asks that the keeping factor start at
    sigma(log u) = u / (1 + u), u ~ U(1, T_max - 1), a memory of 1 / (1 - a) = 1 + u steps;
    with a zero input that is -b_z = log u, so b_z = -log u: z_t = 1 / (1 + u) writes a
    fraction 1 / (1 + u) of h~ each step (the same in the log-space form, whose
    log a_t = -softplus(W_z x_t + b_z)). The candidate's bias stays 0."""

    features: int
    hidden_size: int = 128
    log_space: bool = False
    """The paper's log-space form: h~_t = g(W_h x_t) > 0, so every state is positive and the
    parallel scan runs on logarithms (`log_linear_scan`); the sequential scan and decoding run
    the same recurrence on the values."""
    chrono: int | None = None
    """T_max (time steps) of the Chrono initialisation of the gates' biases (see above); None:
    zero biases, as before (references differ on this, so it is not the default)."""
    dtype: str = "float32"
    param_dtype: str = "float32"

    chrono_signs = (-1,)
    """b_z = -log u: z_t writes (see above)."""

    @nn.nowrap
    def config_problems(self) -> list[str]:
        problem = chrono_problem(self.chrono)
        return [] if problem is None else [problem]

    def setup(self) -> None:
        raise_problems(self)
        self.gates = GateProjection(
            self.hidden_size,
            self.chrono_signs,
            self.chrono,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
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
    """minLSTM (Feng et al. 2024): f_t = sigma(W_f x_t + b_f), i_t = sigma(W_i x_t + b_i),
    normalised to sum to 1, h_t = f'_t * h_{t-1} + i'_t * h~_t with f' = f / (f + i),
    i' = i / (f + i).

    Chrono initialisation (`chrono` = T_max), Tallec & Ollivier's LSTM rule b_f = log u,
    b_i = -b_f with u ~ U(1, T_max - 1): with a zero input f = u / (1 + u) and
    i = 1 / (1 + u) already sum to 1, so f' = u / (1 + u) keeps the state for 1 + u steps,
    exactly as the LSTM's forget gate would."""

    chrono_signs = (1, -1)
    """b_f = log u (keeps), b_i = -log u (writes)."""

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
