"""Decoding shared by every autoregressive model: `generate`, and greedy and beam search with
an end-of-sequence token.

A model that offers `init_cache(batch, max_len)` and `decode_step(cache, tokens) -> (logits,
cache)` generates through `generate`: the prompt is fed one token at a time (prefill), then new
tokens are drawn greedily or by sampling (temperature, top-k), each fed back; both loops are
`jax.lax.scan`s, so compile time does not grow with the number of tokens.

`greedy_search` and `beam_search` start from a cache the caller made (an encoder-decoder's
`init_cache(b, max_len, encode(source), source_mask)`; `translate` does both steps) and stop a
sequence at `eos_id`: after it a sequence emits `pad_id` only and its score stops changing.
Beam search tiles every cache leaf to b * k rows and, after each step's top-k, gathers the rows
of the surviving beams; a cache leaf of rank >= 1 must have the batch as its leading axis
(scalars, e.g. a shared position index, are shared by every row).

Legend: b batch, p prompt length, s new tokens, v vocabulary, k beam width.
"""

import functools
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from arch.errors import ConfigError


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
        raise ConfigError(f"need temperature >= 0 and top_k >= 1, got {temperature}, {top_k}")
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


LengthNormalisation = Literal["gnmt", "power"]


def length_normaliser(
    length: jax.Array, alpha: float | jax.Array, kind: LengthNormalisation
) -> jax.Array:
    """lp(length) that a hypothesis' log-likelihood is divided by: GNMT's ((5 + |Y|) / 6)^alpha
    (Wu et al. 2016) or |Y|^alpha; alpha 0: no normalisation. |Y| counts the EOS token."""
    length = length.astype(jnp.float32)
    if kind == "gnmt":
        return ((5.0 + length) / 6.0) ** alpha
    if kind == "power":
        return jnp.maximum(length, 1.0) ** alpha
    raise ConfigError(f"length normalisation must be 'gnmt' or 'power', got {kind!r}")


@functools.partial(jax.jit, static_argnames=("model", "num_tokens", "eos_id", "pad_id"))
def greedy_search(
    model: nn.Module,
    variables: dict,
    cache: Any,
    start_tokens: jax.Array,
    num_tokens: int,
    eos_id: int,
    pad_id: int = 0,
) -> tuple[jax.Array, jax.Array]:
    """The arg-max token at every step, fed back, from start_tokens [b] -> (sequences
    [b, num_tokens], total log-likelihood [b]). After EOS a sequence emits pad_id only."""
    step = functools.partial(model.apply, variables, method=model.decode_step)

    def extend(carry, _):
        cache, tokens, finished, score = carry
        logits, cache = step(cache, tokens)
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [b, v]
        best = jnp.argmax(log_probs, axis=-1)  # [b]
        gained = jnp.take_along_axis(log_probs, best[:, None], axis=-1)[:, 0]
        tokens = jnp.where(finished, pad_id, best).astype(start_tokens.dtype)
        score = score + jnp.where(finished, 0.0, gained)
        return (cache, tokens, finished | (tokens == eos_id), score), tokens

    batch = start_tokens.shape[0]
    start = (cache, start_tokens, jnp.zeros(batch, bool), jnp.zeros(batch, jnp.float32))
    (_, _, _, score), tokens = jax.lax.scan(extend, start, None, length=num_tokens)
    return tokens.T, score  # [b, s], [b]


def tile_beams(cache: Any, beam_width: int) -> Any:
    """Every batch-leading cache leaf [b, ...] -> [b * k, ...], each row repeated k times."""
    tile = lambda x: jnp.repeat(x, beam_width, axis=0) if jnp.ndim(x) else x
    return jax.tree.map(tile, cache)


def gather_beams(cache: Any, rows: jax.Array) -> Any:
    """Every batch-leading cache leaf [b * k, ...] -> its rows `rows` [b * k]."""
    return jax.tree.map(lambda x: x[rows] if jnp.ndim(x) else x, cache)


@functools.partial(
    jax.jit,
    static_argnames=("model", "num_tokens", "beam_width", "eos_id", "pad_id", "normalisation"),
)
def beam_search(
    model: nn.Module,
    variables: dict,
    cache: Any,
    start_tokens: jax.Array,
    num_tokens: int,
    beam_width: int,
    eos_id: int,
    pad_id: int = 0,
    length_penalty: float = 0.0,
    normalisation: LengthNormalisation = "gnmt",
) -> tuple[jax.Array, jax.Array]:
    """Beam search from start_tokens [b] -> (best sequences [b, num_tokens], their scores [b]).

    The k best hypotheses of each row are kept at every step, ranked by log-likelihood /
    lp(length) (`length_normaliser`, alpha = length_penalty; 0: plain log-likelihood, so a
    score is the total log-likelihood). A hypothesis that emitted EOS is finished: it keeps its
    score and extends with pad_id only, competing for a place among the k with the live ones.
    At the first step only one copy of each row is live, so the k beams start distinct.
    Width 1 is greedy search.
    """
    if beam_width < 1:
        raise ConfigError(f"beam_width must be >= 1, got {beam_width}")
    batch, width = start_tokens.shape[0], beam_width
    step = functools.partial(model.apply, variables, method=model.decode_step)
    first = jnp.where(jnp.arange(width) == 0, 0.0, -jnp.inf)  # [k]: one live copy per row
    offsets = (jnp.arange(batch) * width)[:, None]  # [b, 1]: a row's first beam

    def extend(carry, index):
        cache, tokens, log_likelihood, lengths, finished, sequences = carry
        logits, cache = step(cache, tokens.reshape(-1))  # [b * k, v]
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        log_probs = log_probs.reshape(batch, width, -1)  # [b, k, v]
        vocab = log_probs.shape[-1]
        only_pad = jnp.where(jnp.arange(vocab) == pad_id, 0.0, -jnp.inf)  # [v]
        log_probs = jnp.where(finished[..., None], only_pad, log_probs)
        candidates = log_likelihood[..., None] + log_probs  # [b, k, v]
        candidate_lengths = jnp.where(finished, lengths, index + 1)[..., None]  # [b, k, 1]
        normaliser = length_normaliser(candidate_lengths, length_penalty, normalisation)
        ranking = (candidates / normaliser).reshape(batch, width * vocab)
        scores, chosen = jax.lax.top_k(ranking, width)  # [b, k], best first
        beams, tokens = chosen // vocab, chosen % vocab  # [b, k]
        pick = lambda x: jnp.take_along_axis(x, beams, axis=1)
        log_likelihood = jnp.take_along_axis(candidates.reshape(batch, -1), chosen, axis=1)
        lengths, was_finished = pick(jnp.where(finished, lengths, index + 1)), pick(finished)
        sequences = jnp.take_along_axis(sequences, beams[..., None], axis=1)
        sequences = sequences.at[:, :, index].set(tokens.astype(sequences.dtype))
        cache = gather_beams(cache, (offsets + beams).reshape(-1))
        finished = was_finished | (tokens == eos_id)
        carry = (cache, tokens.astype(start_tokens.dtype), log_likelihood, lengths, finished)
        return (*carry, sequences), scores

    start = (
        tile_beams(cache, width),
        jnp.repeat(start_tokens[:, None], width, axis=1),  # [b, k]
        jnp.broadcast_to(first, (batch, width)),
        jnp.zeros((batch, width), jnp.int32),
        jnp.zeros((batch, width), bool),
        jnp.full((batch, width, num_tokens), pad_id, start_tokens.dtype),
    )
    carry, scores = jax.lax.scan(extend, start, jnp.arange(num_tokens))
    return carry[-1][:, 0], scores[-1][:, 0]  # the best beam: top_k sorts best first


@functools.partial(
    jax.jit,
    static_argnames=(
        "model",
        "num_tokens",
        "bos_id",
        "eos_id",
        "pad_id",
        "beam_width",
        "normalisation",
    ),
)
def translate(
    model: nn.Module,
    variables: dict,
    source: jax.Array,
    source_mask: jax.Array | None,
    num_tokens: int,
    bos_id: int,
    eos_id: int,
    pad_id: int = 0,
    beam_width: int = 1,
    length_penalty: float = 0.0,
    normalisation: LengthNormalisation = "gnmt",
) -> tuple[jax.Array, jax.Array]:
    """An encoder-decoder's output for source [b, s]: `encode`, `init_cache`, then greedy
    search (beam_width 1) or beam search -> (sequences [b, num_tokens], scores [b])."""
    memory = model.apply(variables, source, source_mask, method=model.encode)
    cache = model.init_cache(source.shape[0], num_tokens, memory, source_mask)
    start = jnp.full((source.shape[0],), bos_id, jnp.int32)
    if beam_width == 1:
        return greedy_search(model, variables, cache, start, num_tokens, eos_id, pad_id)
    return beam_search(
        model,
        variables,
        cache,
        start,
        num_tokens,
        beam_width,
        eos_id,
        pad_id,
        length_penalty,
        normalisation,
    )
