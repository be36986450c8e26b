"""Losses and metrics. Each returns the mean over the examples whose mask is 1.

Legend: b batch (any leading axes), k classes. A mask is 1 for a real example, 0 for padding.
Losses are computed in float32 whatever the dtype of the logits.
"""

import jax
import jax.numpy as jnp
import optax


def masked_mean(values: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean of `values` over the entries where `mask` is 1 (all entries when mask is None)."""
    values = values.astype(jnp.float32)
    if mask is None:
        return jnp.mean(values)
    mask = jnp.broadcast_to(mask.astype(jnp.float32), values.shape)
    # where, not a product: a NaN in a padded entry must not leak (0 * nan = nan)
    total = jnp.sum(jnp.where(mask > 0, values * mask, 0.0))
    return total / jnp.maximum(jnp.sum(mask), 1.0)


def softmax_cross_entropy(
    logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """-log softmax(logits)[label], averaged. logits [b, k], integer labels [b]."""
    per_example = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels
    )
    return masked_mean(per_example, mask)


def binary_cross_entropy(
    logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """-[y log sigma(z) + (1 - y) log(1 - sigma(z))], from logits z for numerical stability."""
    per_example = optax.sigmoid_binary_cross_entropy(
        logits.astype(jnp.float32), labels.astype(jnp.float32)
    )
    return masked_mean(per_example, mask)


def mean_squared_error(
    predictions: jax.Array, targets: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """(prediction - target)^2, averaged over every element (and the valid examples)."""
    per_element = jnp.square(predictions.astype(jnp.float32) - targets.astype(jnp.float32))
    if mask is not None:
        mask = mask.reshape(mask.shape + (1,) * (per_element.ndim - mask.ndim))
    return masked_mean(per_element, mask)


def accuracy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Fraction of examples whose arg-max class is the label. logits [b, k], labels [b]."""
    return masked_mean(jnp.argmax(logits, axis=-1) == labels, mask)


def binary_accuracy(
    logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """Fraction of examples on the right side of the decision boundary logit = 0."""
    return masked_mean((logits > 0) == (labels > 0.5), mask)
