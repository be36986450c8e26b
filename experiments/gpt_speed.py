"""Speed of a small GPT's training step: ours (the shared train step) against PyTorch.

Claim: the decoder-only Transformer ("gpt", arch/transformer.py) trained by the ONE shared
train step (train/step.py: AdamW, loss, metrics and norms included) is at least as fast as an
equivalent PyTorch model trained by eager PyTorch with AdamW, in tokens per second.

Command: python -m experiments.gpt_speed                  (--smoke: a 1-layer width-32 model)
         python -m experiments.gpt_speed --no-torch --kernels einsum

Workload: 4 layers, width 256, 4 heads, length 256, batch 16, vocabulary 256,
pre-norm, learned positions, tied embeddings, GELU (tanh form), float32; random tokens. Both
sides have the same architecture and parameter count (checked). FLOPs per step come from XLA's
cost analysis of our compiled step and are used for both sides, so FLOP/s is comparable;
utilisation is FLOP/s over the measured float32 matmul peak (a 2048^3 product) of JAX and, as
"own peak", of each framework's own matmul. Each implementation is timed round-robin (median,
min-max); compile time is reported apart.

"holds" = our faster kernel's tokens/s is at least bench.TIE times eager PyTorch's (None without
PyTorch). Every projection is one 2-D product over all rows (arch.layers.RowDense): the weight
gradient of a [b, t, d] dot_general contracts two axes and misses XLA:CPU's fast path.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from arch.transformer import TransformerLM
from experiments.common.scaffold import Experiment, ExperimentConfig
from train.measure import bench
from train.optim import OptimConfig, make_optimizer
from train.report import format_table
from train.state import parameter_count
from train.step import init_state, make_train_step

CLAIM = "our GPT train step is at least as fast as eager PyTorch"


@dataclasses.dataclass(frozen=True)
class Config(ExperimentConfig):
    layers: int = 4
    width: int = 256
    heads: int = 4
    length: int = 256
    batch: int = 16
    vocab: int = 256
    kernels: tuple[str, ...] = ("einsum", "xla")
    """Our attention kernels to time (arch/attention.py)."""
    repeats: int = 5
    min_sample_seconds: float = 1.0
    torch: bool = True
    seed: int = 0

    def smoke_settings(self) -> dict:
        return dict(layers=1, width=32, heads=2, length=16, batch=2, repeats=2,
                    min_sample_seconds=0.0)  # fmt: skip


def jax_step(config: Config, kernel: str, batch: dict) -> tuple[Any, Any, dict]:
    """(a call running one train step, the compiled step, facts about it)."""
    model = TransformerLM(
        num_outputs=config.vocab,
        vocab_size=config.vocab,
        num_layers=config.layers,
        features=config.width,
        num_heads=config.heads,
        max_len=config.length,
        kernel=kernel,
    )
    tx = make_optimizer(OptimConfig(name="adamw", lr=3e-4, weight_decay=0.01), 1000)
    state = init_state(model, tx, batch["inputs"], config.seed)
    step = make_train_step(model, bench.RandomTokens(vocab_size=config.vocab), tx)
    compiled, compile_seconds = bench.compile_timed(step, state, batch)
    holder = {"state": state}

    def call() -> None:
        holder["state"], metrics = compiled(holder["state"], batch)
        jax.block_until_ready(metrics["loss"])

    facts = {
        "parameters": parameter_count(state.params),
        "compile_seconds": compile_seconds,
        **bench.cost(compiled),
        "memory": bench.memory(compiled),
    }
    return call, compiled, facts


def torch_step(torch: Any, config: Config, batch: dict) -> tuple[Any, dict]:
    """The same GPT in PyTorch (pre-norm blocks, SDPA causal attention, tied embeddings), one
    eager AdamW step per call."""
    nn, functional = torch.nn, torch.nn.functional
    d, h = config.width, config.heads

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.hidden, self.output = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, x: Any) -> Any:
            b, t, _ = x.shape
            q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
            attended = functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.out(attended.transpose(1, 2).reshape(b, t, d))
            hidden = functional.gelu(self.hidden(self.norm2(x)), approximate="tanh")
            return x + self.output(hidden)

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(config.vocab, d)
            self.positions = nn.Embedding(config.length, d)
            self.blocks = nn.ModuleList(Block() for _ in range(config.layers))
            self.norm = nn.LayerNorm(d)

        def forward(self, tokens: Any) -> Any:
            x = self.embedding(tokens) + self.positions.weight[: tokens.shape[1]]
            for block in self.blocks:
                x = block(x)
            return self.norm(x) @ self.embedding.weight.T  # tied output projection

    torch.manual_seed(config.seed)
    model = GPT()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    inputs = torch.from_numpy(np.array(batch["inputs"])).long()  # a writable copy
    targets = torch.from_numpy(np.array(batch["targets"])).long()

    def call() -> None:
        optimizer.zero_grad(set_to_none=True)
        logits = model(inputs)
        loss = functional.cross_entropy(logits.reshape(-1, config.vocab), targets.reshape(-1))
        loss.backward()
        optimizer.step()

    return call, {"parameters": sum(p.numel() for p in model.parameters())}


def study(config: Config, out: str) -> dict:
    rng = np.random.default_rng(config.seed)
    tokens = rng.integers(0, config.vocab, (config.batch, config.length + 1)).astype(np.int32)
    batch = {
        "inputs": jnp.asarray(tokens[:, :-1]),
        "targets": jnp.asarray(tokens[:, 1:]),
        "mask": jnp.ones((config.batch, config.length), jnp.float32),
    }
    calls, facts = {}, {}
    for kernel in config.kernels:
        name = f"ours ({kernel})"
        calls[name], _, facts[name] = jax_step(config, kernel, batch)
    torch, _ = bench.load_torch(config.torch)
    if torch is not None:
        calls["torch eager"], facts["torch eager"] = torch_step(torch, config, batch)
    size = 256 if config.smoke else 2048
    peak = bench.matmul_peak(size, repeats=2 if config.smoke else 5)
    torch_peak = (
        None if torch is None else bench.torch_matmul_peak(torch, size, 2 if config.smoke else 5)
    )
    timings = bench.time_round_robin(calls, config.repeats, config.min_sample_seconds)
    flops = facts[f"ours ({config.kernels[0]})"]["flops"]
    tokens_per_step = config.batch * config.length
    rows = []
    for name, timing in timings.items():
        rate = timing.rate(tokens_per_step)
        rows.append(
            {
                "implementation": name,
                "tokens_per_second": rate,
                "step_ms": timing.median * 1e3,
                "flops_per_second": flops / timing.median,
                "utilisation": flops / timing.median / peak["median"],
                "utilisation_of_own_peak": flops
                / timing.median
                / (torch_peak if name == "torch eager" else peak)["median"],
                "parameters": facts[name]["parameters"],
                "compile_seconds": facts[name].get("compile_seconds"),
                "samples": list(timing.samples),
            }
        )
    torch_row = next((r for r in rows if r["implementation"] == "torch eager"), None)
    for row in rows:
        if torch_row is not None:
            row["vs_torch"] = (
                row["tokens_per_second"]["median"] / (torch_row["tokens_per_second"]["median"])
            )
    ours = [r for r in rows if r["implementation"].startswith("ours")]
    best = max(ours, key=lambda r: r["tokens_per_second"]["median"])
    results = {
        "holds": None if torch_row is None else best["vs_torch"] >= bench.TIE,
        "device": bench.device_description(),
        "flops_per_step": flops,
        "matmul_peak": peak,
        "torch_matmul_peak": torch_peak,
        "rows": rows,
        "facts": facts,
    }
    table = [
        {
            "implementation": r["implementation"],
            "tokens/s": r["tokens_per_second"]["median"],
            "step ms": r["step_ms"],
            "GFLOP/s": r["flops_per_second"] / 1e9,
            "of peak": r["utilisation"],
            "of own peak": r["utilisation_of_own_peak"],
            "vs torch": r.get("vs_torch", "-"),
            "params": r["parameters"],
            "compile s": r["compile_seconds"] or "-",
        }
        for r in rows
    ]
    print(format_table(table, list(table[0])))
    torch_text = "" if torch_peak is None else f", PyTorch's {torch_peak['median'] / 1e9:.0f}"
    print(
        f"matmul peak (JAX) {peak['median'] / 1e9:.0f} GFLOP/s{torch_text}; "
        f"{flops / 1e9:.2f} GFLOP per step"
    )
    return results


EXPERIMENT = Experiment("gpt_speed", CLAIM, Config, study)
main = EXPERIMENT.main_of(__name__)
