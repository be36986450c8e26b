"""Facts about arch/linear_scan.py: h_t = a_t * h_{t-1} + b_t, elementwise.

The sequential scan against a NumPy loop in float64; sequential == parallel in values and in
gradients at t = 4096; dtypes, broadcasting, stepping, unrolling and a bad method name.

Legend: b batch, t time, n state width.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arch.errors import ConfigError
from arch.linear_scan import SCAN_METHODS, linear_scan, linear_step, resolve_method

BATCH, WIDTH = 2, 4
SHORT, LONG = 16, 4096
# Sequential and parallel scans round the same sums in different orders: the loop rounds once
# per step over the ~1 / (1 - |a|) = 10-20 steps that a state remembers, the tree once per level
# (log2 4096 = 12). Measured: 2.5 float32 epsilons (1.2e-7) of the largest magnitude. We allow
# 1e-5 of it (~80 epsilons, a 30x margin); an off-by-one step or a lost term is O(1).
RELATIVE_TO_MAX = 1e-5
EPSILON = float(np.finfo(np.float32).eps)

# jitted, so that the parallel scan's ~50 small operations compile once instead of one by one
scan = jax.jit(linear_scan, static_argnames=("method", "unroll"))


def random_recurrence(length: int, complex_: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """a [b, t, n] with 0.9 <= |a| <= 1 (stable, long memory; signs or phases random), b [b, t, n],
    initial [b, n] and a cotangent [b, t, n]: float32, or complex64 if `complex_`."""
    rng = np.random.default_rng(seed)
    shape = (BATCH, length, WIDTH)
    normal = lambda *s: rng.standard_normal(s) + (1j * rng.standard_normal(s) if complex_ else 0)
    magnitude = rng.uniform(0.9, 1.0, shape)
    if complex_:
        a = magnitude * np.exp(1j * rng.uniform(-np.pi, np.pi, shape))
    else:
        a = magnitude * rng.choice([-1.0, 1.0], shape)
    dtype = np.complex64 if complex_ else np.float32
    arrays = {"a": a, "b": normal(*shape), "initial": normal(BATCH, WIDTH), "c": normal(*shape)}
    return {k: v.astype(dtype) for k, v in arrays.items()}


def numpy_recurrence(a: np.ndarray, b: np.ndarray, initial: np.ndarray | None) -> np.ndarray:
    """The textbook loop in complex128 (real inputs give a real part and zero imaginary)."""
    a, b = np.broadcast_arrays(a.astype(np.complex128), b.astype(np.complex128))
    h = np.zeros(b.shape[:1] + b.shape[2:], np.complex128) if initial is None else initial
    states = []
    for t in range(b.shape[1]):
        h = a[:, t] * h + b[:, t]  # h_t = a_t * h_{t-1} + b_t
        states.append(h)
    return np.stack(states, axis=1)


@functools.cache
def values_and_gradients(method: str, unroll: int = 1):
    """jit((a, b, initial, c) -> (h, and the vector-Jacobian products of the cotangent c with
    respect to a, b and initial: for real inputs the gradients of sum(h * c)))."""

    def function(a, b, initial, c):
        scan_of = lambda a, b, initial: linear_scan(a, b, initial, method=method, unroll=unroll)
        h, vjp = jax.vjp(scan_of, a, b, initial)
        return (h, *vjp(c))

    return jax.jit(function)


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("with_initial", [False, True], ids=["zero_initial", "initial"])
def test_sequential_scan_equals_numpy_loop(complex_, with_initial):
    x = random_recurrence(SHORT, complex_)
    initial = x["initial"] if with_initial else None

    h = scan(x["a"], x["b"], initial, method="sequential")

    expected = numpy_recurrence(x["a"], x["b"], initial)
    np.testing.assert_allclose(h, expected if complex_ else expected.real, rtol=1e-5, atol=1e-5)


def test_scan_by_hand():
    """h_1 = 2 * 1 + 1 = 3, h_2 = 0.5 * 3 + 1 = 2.5, h_3 = -1 * 2.5 + 0 = -2.5 from h_0 = 1."""
    a = jnp.array([2.0, 0.5, -1.0]).reshape(1, 3, 1)
    b = jnp.array([1.0, 1.0, 0.0]).reshape(1, 3, 1)
    for method in SCAN_METHODS:
        h = scan(a, b, jnp.ones((1, 1)), method=method)
        np.testing.assert_array_equal(h.ravel(), [3.0, 2.5, -2.5])


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_parallel_equals_sequential_in_values_and_gradients(complex_):
    x = random_recurrence(LONG, complex_)
    arguments = (x["a"], x["b"], x["initial"], x["c"])

    sequential = values_and_gradients("sequential")(*arguments)
    parallel = values_and_gradients("parallel")(*arguments)

    for name, s, p in zip(("h", "d/da", "d/db", "d/dinitial"), sequential, parallel, strict=True):
        assert s.dtype == p.dtype == x["a"].dtype, name
        scale = float(jnp.max(jnp.abs(s)))
        assert scale > 1.0, name  # long memory: states and gradients are sums of many terms
        np.testing.assert_allclose(p, s, rtol=0, atol=RELATIVE_TO_MAX * scale, err_msg=name)


@pytest.mark.parametrize("method", SCAN_METHODS)
def test_bfloat16_inputs_accumulate_in_float32(method):
    x = random_recurrence(SHORT, complex_=False)
    a, b, initial = (jnp.asarray(x[k], jnp.bfloat16) for k in ("a", "b", "initial"))

    h = scan(a, b, initial, method=method)

    assert h.dtype == jnp.float32
    rounded = numpy_recurrence(*(np.asarray(v, np.float32) for v in (a, b, initial)))
    # the bfloat16 inputs are exact in float32; only float32 rounding of the sums remains
    np.testing.assert_allclose(h, rounded.real, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", SCAN_METHODS)
def test_complex_inputs_give_complex64(method):
    x = random_recurrence(SHORT, complex_=True)

    assert scan(x["a"], x["b"], method=method).dtype == jnp.complex64
    # a real decay with a complex input is complex too, and so is a complex initial state
    assert scan(x["a"].real, x["b"], method=method).dtype == jnp.complex64
    real = random_recurrence(SHORT, complex_=False)
    assert scan(real["a"], real["b"], x["initial"], method=method).dtype == jnp.complex64


@pytest.mark.parametrize("method", SCAN_METHODS)
def test_a_shared_across_the_batch_broadcasts(method):
    x = random_recurrence(SHORT, complex_=False)
    shared_a = x["a"][:1]  # [1, t, n]

    h = scan(shared_a, x["b"], x["initial"], method=method)

    chex.assert_shape(h, (BATCH, SHORT, WIDTH))
    tiled = np.repeat(shared_a, BATCH, axis=0)  # [b, t, n]
    np.testing.assert_array_equal(h, scan(tiled, x["b"], x["initial"], method=method))


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_iterated_step_equals_scan(complex_):
    x = random_recurrence(SHORT, complex_)
    h = x["initial"]
    states = []
    for t in range(SHORT):
        h = linear_step(x["a"][:, t], x["b"][:, t], h)
        states.append(h)

    scanned = scan(x["a"], x["b"], x["initial"], method="sequential")

    # the same float32 products in the same order
    np.testing.assert_allclose(jnp.stack(states, axis=1), scanned, rtol=1e-6, atol=1e-6)


def test_unknown_method_is_a_clear_error():
    x = random_recurrence(SHORT, complex_=False)
    with pytest.raises(ConfigError, match=r"unknown scan method 'tree'.*sequential.*parallel"):
        linear_scan(x["a"], x["b"], method="tree")


@pytest.mark.parametrize("unroll", [2, 8, SHORT])
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_unroll_changes_no_number_beyond_rounding(unroll, complex_):
    x = random_recurrence(SHORT, complex_)
    arguments = (x["a"], x["b"], x["initial"], x["c"])

    unrolled = values_and_gradients("sequential", unroll)(*arguments)

    reference = values_and_gradients("sequential")(*arguments)
    if not complex_:
        np.testing.assert_array_equal(unrolled[0], reference[0])  # the real forward: bit for bit
    # XLA contracts multiply-adds into fused multiply-adds differently in an unrolled body (the
    # complex forward pass, every backward pass): measured up to 3 epsilons of the largest
    # magnitude; we allow 8
    for name, u, r in zip(("h", "d/da", "d/db", "d/dinitial"), unrolled, reference, strict=True):
        atol = 8 * EPSILON * float(jnp.max(jnp.abs(r)))
        np.testing.assert_allclose(u, r, rtol=0, atol=atol, err_msg=name)


def test_auto_picks_the_scan_measured_faster_on_this_backend():
    expected = "sequential" if jax.default_backend() == "cpu" else "parallel"
    assert resolve_method("auto") == expected
    assert resolve_method("parallel") == "parallel"
