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
utilisation is FLOP/s over bench.peak_reference (the data-sheet peak of a known accelerator,
else JAX's float32 2048^3 matmul timed in the same passes) and, as "own peak" for PyTorch, over
its own matmul's, timed in the same passes too. Every implementation is timed side by side by
bench.measure (round-robin: median, min-max); compile time is reported apart.

"holds" = our faster kernel's tokens/s is at least bench.TIE times eager PyTorch's (None without
PyTorch). Every projection is one 2-D product over all rows (arch.layers.RowDense): the weight
gradient of a [b, t, d] dot_general contracts two axes and misses XLA:CPU's fast path.
"""

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from arch.transformer import TransformerLM
from experiments.common.scaffold import Experiment, ExperimentConfig
from train.measure import bench, torch_models
from train.optim import OptimConfig, make_optimizer
from train.report import format_table
from train.state import parameter_count
from train.step import init_state, make_train_step

CLAIM = "our GPT train step is at least as fast as eager PyTorch"
TORCH_PEAK = "(torch matmul peak)"


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


def jax_step(config: Config, kernel: str, batch: dict) -> tuple[bench.Program, int]:
    """(our train step compiled for the batch, ready to time; the model's parameter count)."""
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
    return bench.program(step, state, batch, carry=True), parameter_count(state.params)


def torch_step(torch: Any, config: Config, batch: dict) -> tuple[Any, int]:
    """The same GPT in PyTorch (pre-norm blocks, SDPA causal attention, tied embeddings), one
    eager AdamW step per call."""
    torch.manual_seed(config.seed)
    model = torch_models.language_model(
        torch, "gpt", config.width, config.layers, config.vocab, config.heads,
        max_len=config.length, positional="learned",
    )  # fmt: skip
    optimizer = torch_models.adamw(torch, model, lr=3e-4, weight_decay=0.01)  # our decay groups
    inputs = torch.from_numpy(np.array(batch["inputs"])).long()  # a writable copy
    targets = torch.from_numpy(np.array(batch["targets"])).long()

    def call() -> None:
        optimizer.zero_grad(set_to_none=True)
        logits, _ = model(inputs)
        flat = logits.reshape(-1, config.vocab)
        loss = torch.nn.functional.cross_entropy(flat, targets.reshape(-1))
        loss.backward()
        optimizer.step()

    return call, sum(p.numel() for p in model.parameters())


def study(config: Config, out: str) -> dict:
    rng = np.random.default_rng(config.seed)
    tokens = rng.integers(0, config.vocab, (config.batch, config.length + 1)).astype(np.int32)
    batch = {
        "inputs": jnp.asarray(tokens[:, :-1]),
        "targets": jnp.asarray(tokens[:, 1:]),
        "mask": jnp.ones((config.batch, config.length), jnp.float32),
    }
    programs, parameters = {}, {}
    for kernel in config.kernels:
        name = f"ours ({kernel})"
        programs[name], parameters[name] = jax_step(config, kernel, batch)
    torch, _ = bench.load_torch(config.torch)
    if torch is not None:
        programs["torch eager"], parameters["torch eager"] = torch_step(torch, config, batch)
    # both matmul peaks are timed in the same round-robin passes as the steps (a peak measured
    # apart, on a machine whose load changed since, gave utilisations above 100%)
    size = 256 if config.smoke else 2048
    reference = bench.peak_reference("float32", size=size)
    if torch is not None:
        generator = torch.Generator().manual_seed(0)
        a, b = (torch.randn(size, size, generator=generator) for _ in range(2))
        programs[TORCH_PEAK] = lambda: a @ b
    tokens_per_step = config.batch * config.length
    measured = bench.measure(
        programs, tokens_per_step, reference, config.repeats, config.min_sample_seconds
    )
    peak = next(result["peak"] for result in measured.values() if "peak" in result)
    torch_peak = None
    if torch is not None:
        timing = measured.pop(TORCH_PEAK)["seconds"]
        torch_peak = {"size": size, "median": 2.0 * size**3 / timing["median"]}
    # every row is credited the FLOPs XLA counts in our first step (the same model and
    # optimizer), so FLOP/s and utilisation compare across frameworks
    flops = measured[f"ours ({config.kernels[0]})"]["xla_cost"]["flops"]
    rows = []
    for name, result in measured.items():
        seconds = result["seconds"]["median"]
        own_peak = torch_peak["median"] if name == "torch eager" else peak["flops_per_second"]
        rows.append(
            {
                "implementation": name,
                "tokens_per_second": result["per_second"],
                "step_ms": seconds * 1e3,
                "flops_per_second": flops / seconds,
                "utilisation": flops / seconds / peak["flops_per_second"],
                "utilisation_of_own_peak": flops / seconds / own_peak,
                "parameters": parameters[name],
                "compile_seconds": result.get("compile_s"),
                "samples": result["samples"],
            }
        )
    torch_row = next((r for r in rows if r["implementation"] == "torch eager"), None)
    for row in rows:
        if torch_row is not None:
            ratio = row["tokens_per_second"]["median"] / torch_row["tokens_per_second"]["median"]
            row["vs_torch"] = ratio
    ours = [r for r in rows if r["implementation"].startswith("ours")]
    best = max(ours, key=lambda r: r["tokens_per_second"]["median"])
    return {
        "holds": None if torch_row is None else best["vs_torch"] >= bench.TIE,
        "device": bench.device_description(),
        "flops_per_step": flops,
        "matmul_peak": peak,
        "torch_matmul_peak": torch_peak,
        "rows": rows,
        "measured": measured,
    }


def report(results: dict, config: Config, out: str) -> None:
    peak, torch_peak, flops = (
        results[k] for k in ("matmul_peak", "torch_matmul_peak", "flops_per_step")
    )
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
        for r in results["rows"]
    ]
    print(format_table(table, list(table[0])))
    torch_text = "" if torch_peak is None else f", PyTorch's {torch_peak['median'] / 1e9:.0f}"
    print(
        f"float32 peak {peak['flops_per_second'] / 1e9:.0f} GFLOP/s ({peak['source']})"
        f"{torch_text}; {flops / 1e9:.2f} GFLOP per step (XLA's count)"
    )


EXPERIMENT = Experiment("gpt_speed", CLAIM, Config, study, report)
main = EXPERIMENT.main_of(__name__)
