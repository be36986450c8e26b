"""PyTorch's fastest form of the sequence families it has, at our sizes, for the flagship study's
best-against-best column (experiments/recurrence_vs_attention.py --reference torch): byte-level
language models on nn.RNN (tanh) / nn.LSTM / nn.GRU (oneDNN's fused kernels where PyTorch has
them) and a pre-norm GPT with rotary positions and `scaled_dot_product_attention` (PyTorch's
fused CPU flash kernel); one AdamW step with our decay groups (train.optim: matrices and the
token table decay, biases and norms do not), the forward pass over a prompt under
inference_mode, and greedy token-by-token generation from a filled cache (the recurrent state,
or a preallocated key / value cache). `measure` gives the fields of the study's rows.

Legend: b batch, t time, d width, h heads, e head width, v vocabulary, L prompt length.
"""

from typing import Any

from train.measure.bench import time_round_robin

CELLS = {"elman": "RNN", "lstm": "LSTM", "gru": "GRU"}
FAMILIES = (*CELLS, "gpt")


def rotate(x: Any, cos: Any, sin: Any) -> Any:
    """Rotary positions (the rotate-half form) on x [b, h, t, e] with cos / sin [t, e]."""
    half = x.shape[-1] // 2
    turned = x.new_empty(x.shape)
    turned[..., :half], turned[..., half:] = -x[..., half:], x[..., :half]
    return x * cos + turned * sin


def language_model(torch: Any, family: str, width: int, layers: int, vocab: int, heads: int = 1,
                   max_len: int = 512, positional: str = "rotary") -> Any:  # fmt: skip
    """The family's byte-level language model: `forward(tokens [b, t], cache=None, index=0)` ->
    (logits [b, t, v], the cache after these tokens). The GPT's positions are rotary (the
    flagship study's gpt) or a learned table `positions` (experiments/gpt_speed.py's)."""
    nn, functional = torch.nn, torch.nn.functional
    if family in CELLS:

        class RecurrentLM(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.embedding = nn.Embedding(vocab, width)
                rnn = getattr(nn, CELLS[family])
                self.rnn = rnn(width, width, num_layers=layers, batch_first=True)
                self.head = nn.Linear(width, vocab)

            def forward(self, tokens: Any, cache: Any = None, index: int = 0) -> tuple:
                outputs, cache = self.rnn(self.embedding(tokens), cache)
                return self.head(outputs), cache

        return RecurrentLM()
    if family != "gpt":
        raise ValueError(f"PyTorch has no form of {family!r}; it has {FAMILIES}")
    if positional not in ("rotary", "learned"):
        raise ValueError(f"positional must be 'rotary' or 'learned', got {positional!r}")
    e = width // heads
    rates = 10000.0 ** (-torch.arange(0, e, 2, dtype=torch.float32) / e)  # [e / 2]
    angles = torch.arange(max_len, dtype=torch.float32)[:, None] * rates  # [max_len, e / 2]
    cos, sin = (f(torch.cat([angles, angles], dim=-1)) for f in (torch.cos, torch.sin))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
            self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
            self.hidden, self.output = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

        def forward(self, x: Any, cache: Any, index: int) -> Any:
            b, t, _ = x.shape
            q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, heads, e).permute(2, 0, 3, 1, 4)
            where = slice(index, index + t)
            if positional == "rotary":
                q, k = rotate(q, cos[where], sin[where]), rotate(k, cos[where], sin[where])
            if cache is not None:  # [2, b, h, max_len, e]: write these positions, read all so far
                cache[0, :, :, where], cache[1, :, :, where] = k, v
                k, v = cache[0, :, :, : index + t], cache[1, :, :, : index + t]
            causal = t > 1  # one new query attends to every cached key
            attended = functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
            x = x + self.out(attended.transpose(1, 2).reshape(b, t, width))
            hidden = functional.gelu(self.hidden(self.norm2(x)), approximate="tanh")
            return x + self.output(hidden)

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(vocab, width)
            if positional == "learned":
                self.positions = nn.Embedding(max_len, width)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.norm = nn.LayerNorm(width)

        def forward(self, tokens: Any, cache: Any = None, index: int = 0) -> tuple:
            x = self.embedding(tokens)
            if positional == "learned":
                x = x + self.positions.weight[index : index + tokens.shape[1]]
            for i, block in enumerate(self.blocks):
                x = block(x, None if cache is None else cache[i], index)
            return self.norm(x) @ self.embedding.weight.T, cache  # tied output projection

    return GPT()


def cache_bytes(cache: Any) -> int:
    tensors = cache if isinstance(cache, tuple) else (cache,)
    return int(sum(t.numel() * t.element_size() for t in tensors))


def adamw(torch: Any, model: Any, lr: float, weight_decay: float) -> Any:
    """AdamW with train.optim's groups: matrices (Linear / RNN weights, the token table) decay;
    biases, LayerNorm parameters and a learned position table (a module named `positions`, as
    ours: table/embedding) do not."""
    named = list(model.named_parameters())
    decays = lambda name, p: p.ndim > 1 and not name.startswith("positions")
    groups = [
        {"params": [p for n, p in named if decays(n, p)], "weight_decay": weight_decay},
        {"params": [p for n, p in named if not decays(n, p)], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr)


def measure(torch: Any, model: Any, kind: str, tokens: Any, length: int, new_tokens: int,
            repeats: int, min_sample_seconds: float, heads: int = 1,
            autocast: bool = False) -> dict[str, Any]:  # fmt: skip
    """One of the study's measurements of a PyTorch model: "train" (an AdamW step on [b, L]),
    "prefill" (the forward pass over a prompt [b, L]) or "generate" (N greedy tokens after a
    cache filled with L - 1 prompt tokens). tokens: int64 [b, >= L + N + 1]."""
    b = tokens.shape[0]
    inputs, targets = tokens[:, :length], tokens[:, 1 : length + 1]
    vocab = model.embedding.num_embeddings
    extra: dict[str, Any] = {}
    if kind == "train":
        optimizer = adamw(torch, model, 3e-4, 0.01)

        def call() -> None:
            optimizer.zero_grad(set_to_none=True)
            logits, _ = model(inputs)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))
            loss.backward()
            optimizer.step()

        amount = b * length
    elif kind == "prefill":

        def call() -> None:
            with torch.inference_mode():
                model(inputs)

        amount = b * length
    else:
        start = kv_cache(torch, model, b, length + new_tokens, heads)
        with torch.inference_mode():
            _, filled = model(inputs[:, :-1], start, 0)
        extra["cache_bytes"] = cache_bytes(filled)

        def call() -> None:
            with torch.inference_mode():
                cache, token = filled, inputs[:, -1:]
                for i in range(new_tokens):
                    logits, cache = model(token, cache, length - 1 + i)
                    token = logits[:, -1:].argmax(-1)

        amount = b * new_tokens
    if autocast:  # bfloat16 compute, float32 parameters: the study's --precision bfloat16
        plain = call

        def call() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                plain()

    timing = time_round_robin({kind: call}, repeats, min_sample_seconds)[kind]
    if kind == "generate":
        extra["ms_per_token"] = 1e3 * timing.median / new_tokens
    return {
        "seconds_median": timing.median, "seconds_min": timing.min, "seconds_max": timing.max,
        "tokens_per_second": amount / timing.median, **extra,
    }  # fmt: skip


def kv_cache(torch: Any, model: Any, batch: int, max_len: int, heads: int) -> Any:
    """A GPT's preallocated keys and values [layers, 2, b, h, max_len, e] (zeros); None for a
    recurrence, whose layer returns its state."""
    if not hasattr(model, "blocks"):
        return None
    width = model.embedding.embedding_dim
    shape = (len(model.blocks), 2, batch, heads, max_len, width // heads)
    return torch.zeros(shape)


def parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())
