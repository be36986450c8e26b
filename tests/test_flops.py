"""train/measure/flops.py: loop-aware FLOP counts against XLA's own count and hand formulas."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from train.measure.bench import cost
from train.measure.flops import count

W = jnp.ones((64, 32))
X = jnp.ones((8, 64))


def xla_flops(function, *args) -> float:
    return cost(jax.jit(function).lower(*args).compile())["flops"]


def test_matmul_is_two_m_n_k():
    assert count(jnp.matmul, X, W).flops == 2 * 8 * 64 * 32


def test_batched_einsum_counts_the_batch_and_contraction():
    q, k = jnp.ones((2, 4, 16, 8)), jnp.ones((2, 4, 24, 8))
    assert count(lambda q, k: jnp.einsum("bhqd,bhkd->bhqk", q, k), q, k).flops == (
        2 * 2 * 4 * 16 * 24 * 8
    )


def test_convolution_counts_every_tap():
    conv = nn.Conv(features=6, kernel_size=(3, 3), use_bias=False)
    x = jnp.ones((2, 10, 10, 4))
    variables = conv.init(jax.random.key(0), x)
    # 'SAME' padding: 2 * (2*10*10*6 outputs) * (3*3*4 taps), exactly
    assert count(conv.apply, variables, x).flops == 2 * (2 * 10 * 10 * 6) * (3 * 3 * 4)


def unrolled(x, steps=50):
    w = jnp.ones((64, 64)) * 0.01
    for _ in range(steps):
        x = jnp.tanh(x @ w) + 1.0
    return x


def scanned(x, steps=50):
    w = jnp.ones((64, 64)) * 0.01

    def body(h, _):
        return jnp.tanh(h @ w) + 1.0, None

    return jax.lax.scan(body, x, None, length=steps)[0]


@pytest.mark.parametrize("gradient", [False, True])
def test_scan_counts_as_its_unrolled_loop_where_xla_counts_the_body_once(gradient):
    f, g = scanned, unrolled
    if gradient:
        f, g = (jax.grad(lambda x, h=h: h(x).sum()) for h in (f, g))
    ours_scan, ours_unrolled = count(f, X).flops, count(g, X).flops
    assert ours_scan == pytest.approx(ours_unrolled, rel=1e-3)
    assert ours_unrolled == pytest.approx(xla_flops(g, X), rel=0.01)  # loop-free: XLA agrees
    assert xla_flops(f, X) < ours_scan / 10  # the loop-blind count this module exists to fix
    assert count(f, X).transcendentals == 50 * 8 * 64  # tanh per step


def test_cond_counts_the_dearer_branch():
    def f(p, x):
        return jax.lax.cond(p, lambda x: x @ W, lambda x: x[:, :32] * 2.0, x)

    assert count(f, True, X).flops == 2 * 8 * 64 * 32


def test_while_loop_with_unknown_trip_count_is_reported_not_guessed():
    def f(x, n):
        return jax.lax.while_loop(
            lambda c: c[1] < n, lambda c: (c[0] @ jnp.eye(64), c[1] + 1), (x, 0)
        )[0]

    result = count(f, X, 3)
    assert any(name.startswith("while loop") for name in result.uncounted)


def test_dead_code_is_not_counted():
    """A product whose result nothing uses costs nothing (XLA drops it too), e.g. the primal
    output of a jax.vjp taken only for its pullback."""

    def f(x):
        _ = x @ W  # dead
        return x + 1.0

    assert count(f, X).flops == 8 * 64

    def pullback_only(x):
        _, pull = jax.vjp(lambda x: x @ W, x)
        return pull(jnp.ones((8, 32)))[0]

    assert count(pullback_only, X).flops == 2 * 8 * 32 * 64  # g W^T only, not x W
