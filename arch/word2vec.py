"""Skip-gram with negative sampling (SGNS, Mikolov et al. 2013), and queries on word vectors.

Legend: b batch, v vocabulary, d embedding width, k negatives (in `nearest_neighbours`: the
neighbours asked for), q queries.

Each word w has two vectors: an input ("center") vector v_w and an output ("context") vector
u_w. A training example is a center word, one context word seen within a window of it, and k
negative words drawn from a noise distribution; the model scores each pair by a dot product
and the task's loss is the SGNS objective, binary cross-entropy with the true context as the
positive:  -log sigma(v_c . u_o) - sum_i log sigma(-v_c . u_{n_i}).
At its optimum v_w . u_c = PMI(w, c) - log k (Levy and Goldberg 2014): relations that shift
co-occurrence statistics consistently become consistent offsets between word vectors.

The queries (`nearest_neighbours`, `analogy`) take any table [v, d], usually the center
vectors `params["center"]["embedding"]` (see `word_vectors`).
"""

import functools
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from arch.errors import ConfigError


class SkipGram(nn.Module):
    """Skip-gram with negative sampling: dot products of center and context word vectors.

    inputs int32 [b, 2 + k] = (center, true context, k negatives) -> logits [b, 1 + k] =
    (v_center . u_context, v_center . u_negative_1, ..., v_center . u_negative_k).
    `num_outputs` = 1 + k is set by the task; inputs of another width are refused.
    """

    vocab_size: int = 64
    embed_size: int = 32
    num_outputs: int = 6
    """1 + the number of negatives per example."""
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, inputs: jax.Array, *, train: bool = False) -> jax.Array:
        if inputs.ndim != 2 or inputs.shape[-1] != self.num_outputs + 1:
            raise ConfigError(
                f"SkipGram with num_outputs {self.num_outputs} takes word ids [batch, "
                f"{self.num_outputs + 1}] = (center, context, {self.num_outputs - 1} "
                f"negatives), got shape {tuple(inputs.shape)}"
            )
        # word2vec's initialisation: input vectors U(-0.5 / d, 0.5 / d), output vectors zero
        scale = 0.5 / self.embed_size
        center_table = nn.Embed(
            self.vocab_size,
            self.embed_size,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            embedding_init=lambda key, shape, dtype: jax.random.uniform(
                key, shape, dtype, -scale, scale
            ),
            name="center",
        )
        context_table = nn.Embed(
            self.vocab_size,
            self.embed_size,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            embedding_init=nn.initializers.zeros,
            name="context",
        )
        center = center_table(inputs[:, 0])  # v_c [b, d]
        others = context_table(inputs[:, 1:])  # u_o, u_{n_1}, ..., u_{n_k} [b, 1 + k, d]
        # s_j = v_c . u_j, accumulated in float32 whatever the compute dtype
        return jnp.einsum(
            "bd,bjd->bj", center, others, preferred_element_type=jnp.float32
        )  # [b, 1 + k]


def word_vectors(params: Any, which: Literal["center", "sum"] = "center") -> jax.Array:
    """The word-vector table [v, d] of trained SkipGram parameters: the input (center)
    vectors v_w, as word2vec publishes them, or v_w + u_w (Pennington et al. 2014's sum)."""
    if which not in ("center", "sum"):
        raise ConfigError(f"which must be 'center' or 'sum', got {which!r}")
    center = params["center"]["embedding"]
    return center if which == "center" else center + params["context"]["embedding"]


def unit_rows(table: jax.Array) -> jax.Array:
    """Each row divided by its Euclidean norm (a zero row stays zero)."""
    table = table.astype(jnp.float32)
    norms = jnp.linalg.norm(table, axis=-1, keepdims=True)
    return table / jnp.maximum(norms, 1e-12)


@functools.partial(jax.jit, static_argnames="k")
def nearest_neighbours(table: jax.Array, ids: jax.Array, k: int) -> jax.Array:
    """The k words most cosine-similar to each query word, the query itself excluded.

    table [v, d], ids int [q] -> neighbour ids [q, k], the most similar first.
    """
    unit = unit_rows(table)  # [v, d]
    ids = jnp.asarray(ids)
    similarity = unit[ids] @ unit.T  # cos(w_q, w_j) [q, v]
    similarity = similarity.at[jnp.arange(ids.shape[0]), ids].set(-jnp.inf)
    return jax.lax.top_k(similarity, k)[1]


@jax.jit
def analogy(table: jax.Array, a: jax.Array, b: jax.Array, c: jax.Array) -> jax.Array:
    """The d of "b is to a as c is to d": the d maximising cos(w_d, w_a - w_b + w_c)
    (3CosAdd, Mikolov et al. 2013) over every word but a, b and c. With a = king, b = man,
    c = woman the answer is queen when the man -> king offset is also the woman -> queen one.

    Vectors are unit-normalised before the offset is formed, as in word2vec's compute-accuracy.
    table [v, d], a, b, c int [q] -> d int [q].
    """
    unit = unit_rows(table)  # [v, d]
    a, b, c = jnp.asarray(a), jnp.asarray(b), jnp.asarray(c)
    target = unit[a] - unit[b] + unit[c]  # [q, d]
    scores = target @ unit.T  # proportional to the cosine for each query row [q, v]
    rows = jnp.arange(a.shape[0])
    for excluded in (a, b, c):
        scores = scores.at[rows, excluded].set(-jnp.inf)
    return jnp.argmax(scores, axis=-1)


def analogy_accuracy(table: jax.Array, quadruples: jax.Array) -> float:
    """The fraction of rows (a, b, c, d) of quadruples int [q, 4] where analogy(a, b, c) = d.

    Choosing d at random from the v - 3 candidates scores 1 / (v - 3) in expectation.
    """
    quadruples = jnp.asarray(quadruples)
    answers = analogy(table, quadruples[:, 0], quadruples[:, 1], quadruples[:, 2])
    return float(jnp.mean(answers == quadruples[:, 3]))
