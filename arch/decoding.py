"""The one `generate` shared by every autoregressive model.

A model that offers `init_cache(batch, max_len)` and `decode_step(cache, tokens) -> (logits,
cache)` generates through it: the prompt is fed one token at a time (prefill), then new tokens
are drawn greedily or by sampling (temperature, top-k), each fed back; both loops are
`jax.lax.scan`s, so compile time does not grow with the number of tokens.

Legend: b batch, p prompt length, s new tokens, v vocabulary.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def sample_logits(
    logits: jax.Array, key: jax.Array, temperature: float, top_k: int | None
) -> jax.Array:
    """A token per row of logits [b, v]: arg-max when temperature is 0, else a sample from
    softmax(logits / temperature) restricted to the top_k most likely tokens."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1)
    logits = logits.astype(jnp.float32) / temperature
    if top_k is not None:
        kth_largest = jax.lax.top_k(logits, top_k)[0][:, -1:]  # [b, 1]
        logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1)


@functools.partial(jax.jit, static_argnames=("model", "num_tokens", "temperature", "top_k"))
def generate(
    model: nn.Module,
    variables: dict,
    prompt: jax.Array,
    num_tokens: int,
    key: jax.Array | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    cache: Any = None,
) -> jax.Array:
    """Continue `prompt` [b, p] (p >= 1) by `num_tokens` tokens; returns [b, p + num_tokens].

    temperature 0 is greedy decoding (no key needed); otherwise `key` seeds the sampling.
    `cache`: a decoding state made by the caller, e.g. an encoder-decoder's
    `init_cache(b, p + num_tokens, memory, source_mask)`; None: `model.init_cache(b, p + s)`.
    """
    if temperature < 0 or (top_k is not None and top_k < 1):
        raise ValueError(f"need temperature >= 0 and top_k >= 1, got {temperature}, {top_k}")
    if temperature > 0 and key is None:
        raise ValueError("sampling (temperature > 0) needs a PRNG key")
    key = jax.random.key(0) if key is None else key
    batch, prompt_len = prompt.shape
    step = functools.partial(model.apply, variables, method=model.decode_step)
    cache = model.init_cache(batch, prompt_len + num_tokens) if cache is None else cache

    def prefill(cache, tokens):  # tokens [b]
        logits, cache = step(cache, tokens)
        return cache, logits

    cache, logits = jax.lax.scan(prefill, cache, prompt.T)  # logits [p, b, v]

    def extend(carry, key):
        cache, logits = carry
        tokens = sample_logits(logits, key, temperature, top_k)  # [b]
        logits, cache = step(cache, tokens)
        return (cache, logits), tokens

    keys = jax.random.split(key, num_tokens)
    _, new_tokens = jax.lax.scan(extend, (cache, logits[-1]), keys)  # [s, b]
    return jnp.concatenate([prompt, new_tokens.T.astype(prompt.dtype)], axis=1)
