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

import jax
import jax.numpy as jnp

from arch.errors import ConfigError

ScanMethod = Literal["auto", "sequential", "parallel"]
SCAN_METHODS = ("sequential", "parallel")


def resolve_method(method: ScanMethod) -> str:
    """ "auto": the scan measured faster on this backend. On CPU that is the sequential one
    (experiments/linear_scan_speed.py); elsewhere the parallel one, which a GPU is expected to
    favour (not yet measured)."""
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


def linear_step(a: jax.Array, b: jax.Array, h: jax.Array) -> jax.Array:
    """One step for decoding: h_t = a_t * h_{t-1} + b_t, a, b, h [b, n]."""
    dtype = accumulation_dtype(a, b, h)
    return a.astype(dtype) * h.astype(dtype) + b.astype(dtype)


SELECTIVE_SCAN_CHUNK = 32
"""Steps per recomputed chunk of the sequential selective scan (16-32 measured best: README.md,
"The measurements behind the defaults")."""


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
    so the [b, t, e, n] coefficients are never materialised (faster forward and backward than
    materialising them; README.md, "The measurements behind the defaults").
    Its backward recomputes the states instead of storing them: the scan runs over chunks of
    `chunk` steps under `jax.checkpoint`, so only the [b, e, n] state at each chunk's start is
    kept, and a chunk's steps are redone when its gradient is taken (None: store every step's
    state, as a plain scan does). The same outputs to the bit, and the same gradients but for
    A's, summed chunk by chunk (float32 rounding). Storing e x n floats per step costs more
    time and memory than recomputing them. "parallel" needs all the coefficients at once for
    the associative scan."""
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
