"""RNN encoder-decoder (Sutskever et al. 2014; Cho et al. 2014), without attention (the
context-vector bottleneck) and with Bahdanau (additive) or Luong (dot / general) attention.

Legend: b batch, s source positions, t target positions, e embedding width, n hidden units,
m memory width (n, or 2n with a bidirectional encoder), a attention width, v vocabulary.

The encoder is arch/rnn_layer.py's RNN layer over the embedded source (masked: a padded step
leaves the state unchanged, so the final state of a right-padded sequence is the state after
its last real token; the backward direction starts from zeros over the padding). The decoder
starts from the encoder's final state, per layer (bidirectional: s_0 = tanh(W [h_fwd; h_bwd] +
b), per state tensor). Inputs and outputs follow EncoderDecoderTransformer: {"source" [b, s],
"target" [b, t] (BOS + the output shifted right), "source_mask" [b, s]} -> logits [b, t, v].

- "none": the decoder is an RNN over the target from s_0 alone: everything it knows of the
  source passes through the fixed-size final state (the bottleneck).
- "bahdanau": at step t the previous top state s_{t-1} attends over the memory,
  score_j = v^T tanh(W_s s_{t-1} + W_h h_j + b), and the cell reads [y_{t-1}; c_t]. The context
  depends on the state, so the teacher-forced pass is a `jax.lax.scan` over target steps. W_h h_j
  is computed once per source, before the scan (the keys): AdditiveAttention would recompute it
  at every step (the same numbers, tests/test_seq2seq.py).
- "luong_dot" / "luong_general": the decoder RNN runs first; its new state h_t attends,
  score_j = h_t . h_j or h_t^T W h_j (global attention without input feeding), so every step is
  attended at once after the RNN.
With attention the output is W_o tanh(W_c [c_t; h_t]); without, W_o h_t.

Decoding: `encode(source, source_mask)` -> the memory (encoder states, attention keys and the
decoder's initial state); `init_cache(b, max_len, memory, source_mask)`; `decode_step(cache,
tokens) -> (logits, cache)`, the signatures of EncoderDecoderTransformer, so arch/decoding.py's
greedy and beam search run both. `decode(..., return_attention=True)` / `attention_weights`
return the weights [b, t, s] of the teacher-forced pass: fed the decoded tokens they are the
weights the decoder used while decoding.
"""

from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from arch.attention import attend
from arch.errors import ConfigError
from arch.layers import check_chrono
from arch.rnn_cells import CELLS, Cell, State, matmul
from arch.rnn_layer import RNN

AttentionKind = Literal["none", "bahdanau", "luong_dot", "luong_general"]
Memory = dict[str, Any]
Cache = dict[str, Any]


class RNNSeq2Seq(nn.Module):
    """RNN encoder-decoder, without attention or with Bahdanau / Luong attention."""

    num_outputs: int = 256
    vocab_size: int | None = 256
    """Target vocabulary."""
    source_vocab_size: int | None = None
    """None: source and target share the target's embedding table."""
    cell: Literal["lstm", "gru"] = "gru"
    hidden_size: int = 64
    embed_size: int = 32
    num_layers: int = 1
    bidirectional: bool = False
    """Encoder only; the decoder's initial state is projected from both directions."""
    attention: AttentionKind = "none"
    attention_size: int | None = None
    """a, Bahdanau's tanh layer; None: hidden_size."""
    chrono: int | None = None
    """Chrono initialisation (Tallec & Ollivier 2018) of every encoder and decoder cell's gates
    with T_max = chrono time steps (arch/rnn_cells.py); None: the default biases."""
    unroll: int = 2
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.nowrap
    def make_cell(self, detached: bool = True) -> Cell:
        """A cell; detached (parent=None): the RNN layer that receives it adopts it."""
        check_chrono(self.chrono)
        options = {"parent": None} if detached else {}
        return CELLS[self.cell](
            self.hidden_size,
            chrono=self.chrono,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            **options,
        )

    @nn.nowrap
    def rnn(self, reverse: bool = False) -> RNN:
        return RNN(self.make_cell(), reverse=reverse, unroll=self.unroll)

    @property
    def memory_size(self) -> int:
        return self.hidden_size * (2 if self.bidirectional else 1)

    def setup(self) -> None:
        if self.vocab_size is None:
            raise ConfigError("RNNSeq2Seq needs vocab_size (token inputs)")
        if self.cell not in ("lstm", "gru"):
            raise ConfigError(f"cell must be 'lstm' or 'gru', got {self.cell!r}")
        if self.attention == "luong_dot" and self.memory_size != self.hidden_size:
            raise ConfigError(
                "luong_dot scores h_t . h_j need the memory width (2n, bidirectional) to equal "
                "hidden_size; use luong_general or a one-way encoder"
            )
        dense = lambda features, **kw: nn.Dense(
            features, dtype=self.dtype, param_dtype=self.param_dtype, **kw
        )
        self.embedding = nn.Embed(self.vocab_size, self.embed_size, param_dtype=self.param_dtype)
        if self.source_vocab_size is not None:
            self.source_embedding = nn.Embed(
                self.source_vocab_size, self.embed_size, param_dtype=self.param_dtype
            )
        self.encoder = [self.rnn() for _ in range(self.num_layers)]
        if self.bidirectional:
            self.encoder_backward = [self.rnn(reverse=True) for _ in range(self.num_layers)]
            tensors = 2 if self.cell == "lstm" else 1
            self.bridge = [dense(self.hidden_size) for _ in range(self.num_layers * tensors)]
        if self.attention == "bahdanau":
            size = self.attention_size or self.hidden_size
            init = nn.initializers.lecun_normal()
            self.attention_query = self.param(
                "attention_query", init, (self.hidden_size, size), self.param_dtype
            )  # W_s [n, a]
            self.attention_memory = dense(size)  # W_h h_j + b: the keys [b, s, a]
            self.attention_score = self.param(
                "attention_score", init, (size, 1), self.param_dtype
            )  # v [a, 1]
            self.decoder_cells = [self.make_cell(detached=False) for _ in range(self.num_layers)]
        else:
            self.decoder = [self.rnn() for _ in range(self.num_layers)]
            if self.attention == "luong_general":
                self.attention_memory = dense(self.hidden_size, use_bias=False)  # W^T h_j
        if self.attention != "none":
            self.combine = dense(self.hidden_size)  # W_c [c; h]
        self.head = dense(self.num_outputs)

    def encode(
        self, source: jax.Array, source_mask: jax.Array | None = None, *, train: bool = False
    ) -> Memory:
        """Source ids [b, s] -> {"states": [b, s, m], "keys": [b, s, a or n] (attention only),
        "initial_state": the decoder's state per layer}."""
        embed = self.embedding if self.source_vocab_size is None else self.source_embedding
        x = embed(source)  # [b, s, e]
        initial = []
        for i in range(self.num_layers):
            outputs, final = self.encoder[i](x, source_mask)  # [b, s, n]
            if self.bidirectional:
                backward, backward_final = self.encoder_backward[i](x, source_mask)
                outputs = jnp.concatenate([outputs, backward], axis=-1)  # [b, s, 2n]
                final = self.bridge_state(i, final, backward_final)
            x = outputs
            initial.append(final)
        memory = {"states": x, "initial_state": initial}
        if self.attention in ("bahdanau", "luong_general"):
            memory["keys"] = self.attention_memory(x)  # [b, s, a] / [b, s, n]
        elif self.attention == "luong_dot":
            memory["keys"] = x
        return memory

    def bridge_state(self, layer: int, forward: State, backward: State) -> State:
        """s_0 = tanh(W [forward; backward] + b) for each tensor of the state (h; or C and h)."""
        join = lambda k, f, b: jnp.tanh(self.bridge[k](jnp.concatenate([f, b], axis=-1)))
        if self.cell == "lstm":
            return tuple(join(2 * layer + k, forward[k], backward[k]) for k in range(2))
        return join(layer, forward, backward)

    def additive_scores(self, query: jax.Array, keys: jax.Array) -> jax.Array:
        """score_j = v^T tanh(W_s s + keys_j): query [b, n], keys [b, s, a] -> [b, s] float32."""
        projected = matmul(query, self.attention_query, self.dtype)[:, None, :] + keys
        return matmul(jnp.tanh(projected), self.attention_score, self.dtype)[..., 0]

    def bahdanau_weights(self, input_size: int) -> list:
        """The decoder cells' weights (read here, outside the scan that runs the steps); the
        first layer reads [y; c] of `input_size` features."""
        sizes = [input_size] + [self.hidden_size] * (self.num_layers - 1)
        return [cell.weights(size) for cell, size in zip(self.decoder_cells, sizes, strict=True)]

    def bahdanau_step(
        self, weights: list, state: list, y: jax.Array, memory: Memory, mask: jax.Array
    ) -> tuple[list, jax.Array, jax.Array, jax.Array]:
        """One decoder step: y_{t-1} [b, e] -> (new states, h_t [b, n], c_t [b, m], a_t [b, s]).
        A pure function of arrays (no parameter is read here), so it runs inside a scan."""
        query = self.decoder_cells[-1].output(state[-1])  # s_{t-1} of the top layer
        scores = self.additive_scores(query, memory["keys"])
        context, attention = attend(scores, memory["states"], mask)  # c_t [b, m], a_t [b, s]
        x = jnp.concatenate([y, context.astype(y.dtype)], axis=-1)  # [y_{t-1}; c_t]
        new_state = []
        for cell, cell_weights, layer_state in zip(self.decoder_cells, weights, state, strict=True):
            layer_state = cell.step(cell_weights, layer_state, cell.project_inputs(cell_weights, x))
            x = cell.output(layer_state)
            new_state.append(layer_state)
        return new_state, x, context, attention

    def luong_context(
        self, hidden: jax.Array, memory: Memory, mask: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """h_t [b, t, n] attends the memory -> (c_t [b, t, m], a_t [b, t, s])."""
        scores = jnp.einsum(
            "btn,bsn->bts", hidden, memory["keys"], preferred_element_type=jnp.float32
        )
        return jax.vmap(attend, in_axes=(1, None, None), out_axes=1)(scores, memory["states"], mask)

    def output(self, hidden: jax.Array, context: jax.Array | None) -> jax.Array:
        """W_o h_t, or W_o tanh(W_c [c_t; h_t]) with attention: [..., n] -> [..., v]."""
        if context is not None:
            joined = jnp.concatenate([context.astype(hidden.dtype), hidden], axis=-1)
            hidden = jnp.tanh(self.combine(joined))
        return self.head(hidden.astype(self.dtype))

    def decode(
        self,
        target: jax.Array,
        memory: Memory,
        source_mask: jax.Array | None = None,
        *,
        train: bool = False,
        return_attention: bool = False,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Teacher forcing: target ids [b, t] (BOS + the output shifted right) and the memory
        -> next-token logits [b, t, v] (and the attention weights [b, t, s])."""
        if return_attention and self.attention == "none":
            raise ValueError("a decoder without attention has no attention weights to return")
        mask = self.source_mask(memory, source_mask)
        y = self.embedding(target)  # [b, t, e]
        state, context, attention = memory["initial_state"], None, None
        if self.attention == "bahdanau":
            weights = self.bahdanau_weights(y.shape[-1] + self.memory_size)

            def step(carry, y_t):
                carry, hidden, context, attention = self.bahdanau_step(
                    weights, carry, y_t, memory, mask
                )
                return carry, (hidden, context, attention)

            _, outputs = jax.lax.scan(step, state, jnp.swapaxes(y, 0, 1), unroll=self.unroll)
            hidden, context, attention = (jnp.swapaxes(o, 0, 1) for o in outputs)  # [b, t, .]
        else:
            hidden = y
            for layer, layer_state in zip(self.decoder, state, strict=True):
                hidden, _ = layer(hidden, None, layer_state)  # [b, t, n]
            if self.attention != "none":
                context, attention = self.luong_context(hidden, memory, mask)
        logits = self.output(hidden, context)
        return (logits, attention) if return_attention else logits

    @nn.nowrap
    def source_mask(self, memory: Memory, source_mask: jax.Array | None) -> jax.Array:
        if source_mask is None:
            return jnp.ones(memory["states"].shape[:2], bool)
        return source_mask.astype(bool)

    def __call__(self, inputs: dict[str, jax.Array], *, train: bool = False) -> jax.Array:
        source_mask = inputs.get("source_mask")
        memory = self.encode(inputs["source"], source_mask, train=train)
        return self.decode(inputs["target"], memory, source_mask, train=train)

    def attention_weights(self, inputs: dict[str, jax.Array]) -> jax.Array:
        """The attention weights [b, t, s] of the teacher-forced pass over `inputs`."""
        source_mask = inputs.get("source_mask")
        memory = self.encode(inputs["source"], source_mask)
        return self.decode(inputs["target"], memory, source_mask, return_attention=True)[1]

    @nn.nowrap
    def init_cache(
        self,
        batch_size: int,
        max_len: int,
        memory: Memory | None = None,
        source_mask: jax.Array | None = None,
    ) -> Cache:
        """The decoding state: the decoder's state per layer and, with attention, the memory
        [b, s, m], its keys and mask [b, s]. Its size does not depend on max_len."""
        if memory is None:
            raise ValueError("the encoder-decoder decodes from a memory: pass encode(source)")
        cache = {"state": memory["initial_state"]}
        if self.attention != "none":
            cache.update(
                states=memory["states"],
                keys=memory["keys"],
                source_mask=self.source_mask(memory, source_mask),
            )
        return cache

    def decode_step(self, cache: Cache, tokens: jax.Array) -> tuple[jax.Array, Cache]:
        """tokens [b] -> (next-token logits [b, v], the updated cache)."""
        y = self.embedding(tokens)  # [b, e]
        context = None
        if self.attention == "bahdanau":
            weights = self.bahdanau_weights(y.shape[-1] + self.memory_size)
            state, hidden, context, _ = self.bahdanau_step(
                weights, cache["state"], y, cache, cache["source_mask"]
            )
        else:
            hidden, state = y, []
            for layer, layer_state in zip(self.decoder, cache["state"], strict=True):
                layer_state, hidden = layer.step(layer_state, hidden)  # [b, n]
                state.append(layer_state)
            if self.attention != "none":
                context, _ = self.luong_context(hidden[:, None], cache, cache["source_mask"])
                context = context[:, 0]
        return self.output(hidden, context), {**cache, "state": state}
