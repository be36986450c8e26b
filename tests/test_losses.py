"""Losses and metrics against numbers computed by hand (NumPy / math), with and without masks."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import losses

# One compiled program per function and shape: eager dispatch would compile every primitive.
softmax_cross_entropy = jax.jit(losses.softmax_cross_entropy)
binary_cross_entropy = jax.jit(losses.binary_cross_entropy)
mean_squared_error = jax.jit(losses.mean_squared_error)
accuracy = jax.jit(losses.accuracy)
binary_accuracy = jax.jit(losses.binary_accuracy)
masked_mean = jax.jit(losses.masked_mean)


def log_softmax_np(logits: np.ndarray) -> np.ndarray:
    """Reference log-softmax in float64: z - log sum exp z, row by row."""
    z = logits.astype(np.float64)
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def test_softmax_cross_entropy_two_classes_by_hand():
    a, b = 2.0, -1.0
    logits = jnp.array([[a, b], [a, b]])
    labels = jnp.array([0, 1])
    # -log(e^a / (e^a + e^b)) for label 0, -log(e^b / (e^a + e^b)) for label 1
    first = -math.log(math.exp(a) / (math.exp(a) + math.exp(b)))
    second = -math.log(math.exp(b) / (math.exp(a) + math.exp(b)))
    assert first == pytest.approx(0.04858735, rel=1e-6)
    assert second == pytest.approx(3.04858735, rel=1e-6)
    value = softmax_cross_entropy(logits, labels)
    assert value.dtype == jnp.float32
    assert float(value) == pytest.approx((first + second) / 2, rel=1e-6)


def test_softmax_cross_entropy_uniform_logits_is_log_k():
    logits = jnp.zeros((4, 7))
    labels = jnp.array([0, 3, 6, 2])
    assert float(softmax_cross_entropy(logits, labels)) == pytest.approx(math.log(7))


def test_softmax_cross_entropy_matches_numpy_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5)).astype(np.float32) * 3
    labels = rng.integers(0, 5, size=6)
    expected = -log_softmax_np(logits)[np.arange(6), labels].mean()
    value = softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    assert float(value) == pytest.approx(expected, rel=1e-5)


def test_softmax_cross_entropy_mask_ignores_padding():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(5, 3)).astype(np.float32)
    labels = np.array([0, 2, 1, 1, 0])
    mask = np.array([1.0, 0.0, 1.0, 0.0, 1.0], np.float32)
    per_example = -log_softmax_np(logits)[np.arange(5), labels]
    expected = per_example[[0, 2, 4]].mean()
    value = softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), mask)
    assert float(value) == pytest.approx(expected, rel=1e-5)
    # whatever (finite) logits and labels the padded rows hold, the value is the same
    garbage = logits.copy()
    garbage[[1, 3]] = [[1e4, -1e4, 0.0], [-300.0, 500.0, 7.0]]
    other_labels = labels.copy()
    other_labels[[1, 3]] = [1, 0]
    value_garbage = softmax_cross_entropy(jnp.asarray(garbage), jnp.asarray(other_labels), mask)
    assert float(value_garbage) == pytest.approx(expected, rel=1e-5)


def test_softmax_cross_entropy_mask_ignores_non_finite_padding():
    logits = jnp.array([[1.0, 2.0], [jnp.nan, 0.0]])
    labels = jnp.array([0, 1])
    mask = jnp.array([1.0, 0.0])
    expected = -math.log(math.exp(1.0) / (math.exp(1.0) + math.exp(2.0)))
    value = softmax_cross_entropy(logits, labels, mask)
    assert float(value) == pytest.approx(expected, rel=1e-6)


def test_softmax_cross_entropy_all_padding_is_zero_not_nan():
    logits = jnp.array([[3.0, -2.0, 0.5], [0.0, 1.0, 2.0]])
    labels = jnp.array([1, 0])
    mask = jnp.zeros(2)
    value = softmax_cross_entropy(logits, labels, mask)
    assert bool(jnp.isfinite(value))
    assert float(value) == 0.0
    grads = jax.jit(jax.grad(softmax_cross_entropy))(logits, labels, mask)
    chex.assert_trees_all_close(grads, jnp.zeros_like(logits))


def test_softmax_cross_entropy_bfloat16_logits_computed_in_float32():
    logits = jnp.array([[2.0, -1.0]], jnp.bfloat16)
    value = softmax_cross_entropy(logits, jnp.array([0]))
    assert value.dtype == jnp.float32
    assert float(value) == pytest.approx(math.log1p(math.exp(-3.0)), rel=1e-6)


def test_binary_cross_entropy_by_hand():
    z = np.array([0.0, 1.5, -2.0, 0.3])
    y = np.array([1.0, 0.0, 0.0, 1.0])
    sigma = 1 / (1 + np.exp(-z))
    # -[y log sigma(z) + (1 - y) log(1 - sigma(z))]
    per_example = -(y * np.log(sigma) + (1 - y) * np.log(1 - sigma))
    assert per_example[0] == pytest.approx(math.log(2))
    value = binary_cross_entropy(jnp.asarray(z, jnp.float32), jnp.asarray(y))
    assert float(value) == pytest.approx(per_example.mean(), rel=1e-6)
    mask = np.array([0.0, 1.0, 1.0, 0.0])
    masked = binary_cross_entropy(jnp.asarray(z, jnp.float32), jnp.asarray(y), mask)
    assert float(masked) == pytest.approx(per_example[[1, 2]].mean(), rel=1e-6)


def test_binary_cross_entropy_large_logits_finite_and_correct():
    z = jnp.array([50.0, -50.0, 50.0, -50.0])
    y = jnp.array([1.0, 0.0, 0.0, 1.0])
    per_example = binary_cross_entropy(z, y, jnp.array([1.0, 0.0, 0.0, 0.0]))
    # right side with margin 50: log(1 + e^-50) ~ 2e-22, which is 0 in float32
    assert bool(jnp.isfinite(per_example))
    assert float(per_example) == pytest.approx(math.log1p(math.exp(-50.0)), abs=1e-12)
    # wrong side with margin 50: -log sigma(-50) = 50 + log(1 + e^-50) ~ 50
    for i in (2, 3):
        mask = np.eye(4, dtype=np.float32)[i]
        value = binary_cross_entropy(z, y, mask)
        assert bool(jnp.isfinite(value))
        assert float(value) == pytest.approx(50.0, rel=1e-6)
    mean = binary_cross_entropy(z, y)
    assert float(mean) == pytest.approx((0 + 0 + 50 + 50) / 4, rel=1e-6)
    grads = jax.jit(jax.grad(binary_cross_entropy))(z, y)
    assert bool(jnp.all(jnp.isfinite(grads)))
    # d/dz = (sigma(z) - y) / n: ~0 on the right side, +-1/4 on the wrong side
    chex.assert_trees_all_close(grads, jnp.array([0.0, 0.0, 0.25, -0.25]), atol=1e-7)


def test_mean_squared_error_with_example_mask():
    predictions = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [-1.0, 4.0, 2.0]], np.float32)
    targets = np.array([[0.0, 2.0, 5.0], [9.0, 9.0, 9.0], [1.0, 1.0, 1.0]], np.float32)
    # squared errors: row 0 -> 1, 0, 4; row 1 -> 81 each; row 2 -> 4, 9, 1
    unmasked = mean_squared_error(jnp.asarray(predictions), jnp.asarray(targets))
    assert float(unmasked) == pytest.approx((1 + 0 + 4 + 81 * 3 + 4 + 9 + 1) / 9, rel=1e-6)
    mask = jnp.array([1.0, 0.0, 1.0])
    masked = mean_squared_error(jnp.asarray(predictions), jnp.asarray(targets), mask)
    # mean over the 6 elements of the 2 valid examples
    assert float(masked) == pytest.approx((1 + 0 + 4 + 4 + 9 + 1) / 6, rel=1e-6)


def test_mean_squared_error_all_padding_is_zero():
    value = mean_squared_error(jnp.ones((2, 3)), jnp.zeros((2, 3)), jnp.zeros(2))
    assert float(value) == 0.0


def test_accuracy_with_and_without_mask():
    logits = jnp.array([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 5.0], [1.0, 3.0, 2.0]])
    # arg-max: 1, 0, 2, 1
    labels = jnp.array([1, 2, 2, 0])
    assert float(accuracy(logits, labels)) == pytest.approx(2 / 4)
    mask = jnp.array([1.0, 1.0, 0.0, 0.0])
    assert float(accuracy(logits, labels, mask)) == pytest.approx(1 / 2)
    mask = jnp.array([0.0, 1.0, 0.0, 1.0])
    assert float(accuracy(logits, labels, mask)) == 0.0
    assert float(accuracy(logits, labels, jnp.zeros(4))) == 0.0


def test_binary_accuracy_with_and_without_mask():
    logits = jnp.array([2.0, -0.5, 0.1, -3.0, 0.7])
    labels = jnp.array([1.0, 1.0, 0.0, 0.0, 1.0])
    # logit > 0 vs label > 0.5: right, wrong, wrong, right, right
    assert float(binary_accuracy(logits, labels)) == pytest.approx(3 / 5)
    mask = jnp.array([0.0, 1.0, 1.0, 1.0, 0.0])
    assert float(binary_accuracy(logits, labels, mask)) == pytest.approx(1 / 3)


def test_masked_mean():
    values = jnp.array([1.0, 2.0, 3.0, 10.0])
    assert float(masked_mean(values)) == pytest.approx(4.0)
    assert float(masked_mean(values, jnp.array([1, 1, 1, 0]))) == pytest.approx(2.0)
    assert float(masked_mean(values, jnp.array([0.0, 0.0, 0.0, 1.0]))) == 10.0
    all_padding = masked_mean(values, jnp.zeros(4))
    assert bool(jnp.isfinite(all_padding)) and float(all_padding) == 0.0
    # a mask broadcasts over trailing axes: [b] values [b, d] need an explicit [b, 1] mask
    matrix = jnp.array([[1.0, 3.0], [100.0, 100.0]])
    assert float(masked_mean(matrix, jnp.array([[1.0], [0.0]]))) == pytest.approx(2.0)
    # integer and boolean values are averaged in float32
    ints = masked_mean(jnp.array([1, 2]), None)
    assert ints.dtype == jnp.float32 and float(ints) == 1.5
    bools = masked_mean(jnp.array([True, False, True]))
    assert float(bools) == pytest.approx(2 / 3)
