"""The context-vector bottleneck of the RNN encoder-decoder, and the attention that removed it.

Claim: an RNN encoder-decoder without attention squeezes the source into its final state, so
its exact-match accuracy falls as the source grows; with attention (Bahdanau's additive
attention over every encoder state, or the Transformer encoder-decoder) it holds.

Task (train/tasks/translation.py, "translation"): a rule-based language pair, 20 words a side,
each word translated through a fixed lexicon and the word order reversed (the target's first
word translates the source's last); sources of 3 to 64 words, uniform, in one training stream.
Three models of similar size train through the shared train step on it: a bidirectional GRU
encoder-decoder without attention (the decoder starts from the projected final states), the
same with Bahdanau attention, and MODELS["transformer_seq2seq"]. Each is then decoded greedily
(arch.decoding.translate) on fixed test sets of 128 sentences at each source length; exact
match = every word and the EOS right. "holds" = the model without attention keeps less than
half of its shortest-length exact match at the longest length, and every attention model keeps
at least 90% of its own. The heat map shows the Bahdanau decoder's attention on one decoded
test sentence (reversal: the anti-diagonal); "anti-diagonal mass" is the mean weight on source
position L - 1 - i at output i over the test sentences of that length.

Command: `python -m experiments.seq2seq_bottleneck` (`--smoke`: seconds).
The result is in README.md's table of experiments.
"""

import dataclasses
import functools
import os
import resource
import time

import jax
import numpy as np

from arch import MODELS
from arch.errors import ConfigError
from experiments.common.scaffold import Experiment, TrainingConfig, runtime_text
from train.loop import RunConfig, fit
from train.report import figure, format_table, save_figure
from train.tasks import TASKS
from train.tasks.translation import BOS, PAD

CLAIM = (
    "Without attention an RNN encoder-decoder's exact-match accuracy falls as the source "
    "grows (the context-vector bottleneck); with attention (Bahdanau, Transformer) it holds."
)
FALLS = 0.5
"""No attention: exact match at the longest length < FALLS x at the shortest."""
HOLDS = 0.9
"""Attention: exact match at the longest length >= HOLDS x at the shortest."""


@dataclasses.dataclass(frozen=True)
class Config(TrainingConfig):
    lengths: tuple[int, ...] = (5, 10, 20, 30, 40, 60)
    """Source lengths of the test sets."""
    min_length: int = 3
    """Shortest training source."""
    max_length: int = 64
    """Longest training source (>= the longest test length, so that it is not at the edge)."""
    num_words: int = 20
    steps: int = 2400
    batch_size: int = 64
    hidden_size: int = 64
    """n of the Bahdanau GRU encoder-decoder (each direction of the encoder, and the decoder)."""
    bottleneck_hidden_size: int = 88
    """n of the GRU encoder-decoder without attention: 88 matches the Bahdanau model's size."""
    embed_size: int = 32
    features: int = 48
    """d of the Transformer (2 + 2 layers, 4 heads, feed-forward ffn_hidden)."""
    ffn_hidden: int = 144
    num_eval: int = 128
    """Test sentences per source length."""
    heatmap_length: int = 20
    seed: int = 0

    def smoke_settings(self) -> dict:
        return dict(
            lengths=(3, 6),
            max_length=6,
            steps=6,
            warmup_steps=2,
            batch_size=8,
            hidden_size=8,
            bottleneck_hidden_size=8,
            embed_size=8,
            features=8,
            ffn_hidden=16,
            num_eval=8,
            heatmap_length=4,
        )

    def check(self) -> None:
        if list(self.lengths) != sorted(set(self.lengths)) or len(self.lengths) < 2:
            raise ConfigError(
                f"--lengths must be at least two increasing lengths, got {self.lengths}"
            )
        if max(self.lengths) > self.max_length:
            raise ConfigError(f"--lengths go beyond the trained --max-length {self.max_length}")
        if not self.min_length <= self.heatmap_length <= self.max_length:
            raise ConfigError("--heatmap-length must lie within the trained lengths")


def make_models(config: Config, max_length: int) -> dict:
    gru = dict(cell="gru", bidirectional=True, embed_size=config.embed_size)
    return {
        "gru": MODELS["rnn_seq2seq"](hidden_size=config.bottleneck_hidden_size, **gru),
        "gru_bahdanau": MODELS["rnn_seq2seq"](
            hidden_size=config.hidden_size, attention="bahdanau", **gru
        ),
        "transformer": MODELS["transformer_seq2seq"](
            features=config.features,
            num_layers=2,
            num_heads=4,
            ffn_hidden=config.ffn_hidden,
            max_len=max_length + 1,
        ),
    }


def attention_example(result, task, length: int) -> dict:
    """The Bahdanau decoder's weights [t, s] on one decoded sentence of `length` words, and
    the mean weight on the anti-diagonal (output i on source L - 1 - i) over the test set."""
    inputs, targets, mask = task.length_split(length, task.num_eval)
    decoded = task.decode(result.model, result.state.variables, inputs)  # [n, t]
    fed = {
        **inputs,
        "target": np.concatenate([np.full((len(decoded), 1), BOS), decoded[:, :-1]], 1),
    }
    fed["target"] = fed["target"].astype(np.int32)
    weigh = jax.jit(functools.partial(result.model.apply, method="attention_weights"))
    weights = np.asarray(weigh(result.state.variables, fed))  # [n, t, s]
    steps = np.arange(length)
    anti_diagonal = weights[:, steps, length - 1 - steps].mean()
    return {
        "length": length,
        "source": inputs["source"][0, :length].tolist(),
        "decoded": [int(t) for t in decoded[0] if t != PAD],
        "weights": weights[0, : length + 1, :length].tolist(),  # the words and the EOS step
        "anti_diagonal_mass": float(anti_diagonal),
    }


def train_and_measure(name: str, model, task, config: Config, out: str) -> tuple[dict, object]:
    run = RunConfig.quiet(
        config.steps, 4, seed=config.seed, eval_batch_size=256, run_dir=os.path.join(out, name)
    )
    result = fit(model, task, config.optim(config.steps), run)
    start = time.perf_counter()
    by_length = {}
    for length in config.lengths:
        inputs, targets, mask = task.length_split(length, config.num_eval)
        decoded = task.decode(result.model, result.state.variables, inputs)
        by_length[length] = task.decoded_metrics(decoded, targets, mask)
    inputs, targets, mask = task.data["test"]
    test = task.decoded_metrics(
        task.decode(result.model, result.state.variables, inputs), targets, mask
    )
    return {
        "model": name,
        "class": type(result.model).__name__,
        "parameters": result.summary["parameters"],
        "exact_match": [by_length[n]["exact_match"] for n in config.lengths],
        "token_accuracy": [by_length[n]["token_accuracy"] for n in config.lengths],
        "bleu": [by_length[n]["bleu"] for n in config.lengths],
        "test_decoded": test,
        "test_teacher_forced": result.summary["final"]["test"],
        "validation_steps": [s for s, _ in result.curve("accuracy")],
        "validation_accuracy": [a for _, a in result.curve("accuracy")],
        "train_time_s": result.summary["train_time"],
        "compile_time_s": result.summary["compile_time"],
        "decode_time_s": time.perf_counter() - start,
    }, result


def verdicts(runs: list[dict]) -> dict[str, bool]:
    """Per model: falls (no attention) or holds (attention), from shortest to longest length."""
    out = {}
    for r in runs:
        first, last = r["exact_match"][0], r["exact_match"][-1]
        out[r["model"]] = last < FALLS * first if r["model"] == "gru" else last >= HOLDS * first
    return out


def summary_line(results: dict) -> str:
    """A row for README.md's table of experiments: command, claim, result."""
    config, lengths = results["config"], results["config"]["lengths"]
    cells = "; ".join(
        f"{r['model']} ({r['parameters'] / 1000:.0f}k) "
        + " ".join(f"{a:.2f}" for a in r["exact_match"])
        + f", test BLEU {r['test_decoded']['bleu']:.1f}"
        for r in results["runs"]
    )
    runtime = runtime_text(results)
    return (
        f"| `python -m experiments.seq2seq_bottleneck` (~{runtime}) | without attention a GRU "
        f"encoder-decoder's exact match falls as the source grows; with Bahdanau attention or "
        f"a Transformer it holds | **{'holds' if results['holds'] else 'fails'}.** Greedy exact "
        f"match on reversed-and-translated sentences of {', '.join(map(str, lengths))} words, "
        f"after {config['steps']} Adam steps: {cells}. Bahdanau attention on the "
        f"anti-diagonal: {results['attention']['anti_diagonal_mass']:.2f}. |"
    )


def plot(results: dict, out: str) -> None:
    fig, axes = figure(1, 2, figsize=(11, 4))
    lengths = results["config"]["lengths"]
    for r in results["runs"]:
        axes[0].plot(
            lengths, r["exact_match"], marker="o", label=f"{r['model']} ({r['parameters']:,})"
        )
    axes[0].set(xlabel="source length (words)", ylabel="exact match (greedy)", ylim=(-0.02, 1.02))
    axes[0].set_title("Exact match against source length")
    axes[0].legend(fontsize=8)
    for r in results["runs"]:
        axes[1].plot(r["validation_steps"], r["validation_accuracy"], marker=".", label=r["model"])
    axes[1].set(xlabel="step", ylabel="validation token accuracy (teacher-forced)", ylim=(0, 1.02))
    axes[1].legend(fontsize=8)
    save_figure(fig, os.path.join(out, "seq2seq_bottleneck.png"))
    example = results["attention"]
    fig, ax = figure(1, 1, figsize=(5, 5))
    image = ax.imshow(np.array(example["weights"]), cmap="viridis", vmin=0, vmax=1)
    ax.set(xlabel="source position", ylabel="output position (last: EOS)")
    ax.set_title(f"Bahdanau attention, one sentence of {example['length']} words")
    fig.colorbar(image, ax=ax, fraction=0.046)
    save_figure(fig, os.path.join(out, "attention.png"))


def study(config: Config, out: str) -> dict:
    cpu_start = resource.getrusage(resource.RUSAGE_SELF)
    task = TASKS["translation"](
        batch_size=config.batch_size,
        seed=config.seed,
        num_words=config.num_words,
        min_length=config.min_length,
        max_length=config.max_length,
        num_eval=config.num_eval,
    )
    runs, attention = [], None
    for name, model in make_models(config, task.max_length).items():
        row, result = train_and_measure(name, model, task, config, out)
        runs.append(row)
        if name == "gru_bahdanau":
            attention = attention_example(result, task, config.heatmap_length)
    per_model = verdicts(runs)
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    results = {
        "holds": all(per_model.values()),
        "holds_per_model": per_model,
        "criterion": f"no attention: exact match at the longest length < {FALLS} x the "
        f"shortest; attention: >= {HOLDS} x the shortest",
        "runs": runs,
        "attention": attention,
        "total_cpu_time_s": cpu.ru_utime + cpu.ru_stime - cpu_start.ru_utime - cpu_start.ru_stime,
    }
    return results


def report(results: dict, config: Config, out: str) -> None:
    plot(results, out)
    runs, attention, per_model = results["runs"], results["attention"], results["holds_per_model"]
    table = [
        {
            "model": r["model"],
            "parameters": r["parameters"],
            **{f"L={n}": a for n, a in zip(config.lengths, r["exact_match"], strict=True)},
            "test BLEU": r["test_decoded"]["bleu"],
            "test exact": r["test_decoded"]["exact_match"],
            "train s": r["train_time_s"],
        }
        for r in runs
    ]
    print(format_table(table))
    print(
        f"anti-diagonal attention mass at length {attention['length']}: "
        f"{attention['anti_diagonal_mass']:.3f}; holds per model: {per_model} "
        f"({results['total_cpu_time_s']:.0f} s CPU)"
    )


EXPERIMENT = Experiment("seq2seq_bottleneck", CLAIM, Config, study, report, summary_line)
main = EXPERIMENT.main_of(__name__)
