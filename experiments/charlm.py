"""Character LMs: a decoder-only Transformer, an LSTM and a GRU against a known entropy rate.

Claim: on the generated language of known entropy (MarkovLanguage's default: 16 symbols, an
order-2 Markov chain with Dirichlet(0.5) transitions, entropy rate 3.043 bits/char; uniform
guessing 4), both families, attention ("gpt": TransformerLM) and recurrence ("rnn_lm" with
an LSTM or a GRU cell), reach a test bits per character within 0.1 of the entropy rate, at
roughly matched parameter counts and the same data, steps and optimizer. "holds" = every
model's test bits/char - entropy rate < 0.1.

Sizes (about 57-67k parameters each):

    gpt   d 48, 2 layers, 4 heads, feed-forward 192, rotary positions, tied embeddings
    lstm  hidden 112, embedding 32
    gru   hidden 128, embedding 32

Samples: `arch.decoding.generate` continues test prompts by sampling at each temperature of
`--temperatures`, and the TRUE chain scores the new tokens (bits/char of the samples under
the source): E_q[-log2 p] = H(q) + KL(q || p), near the entropy rate at temperature 1 when
the model's samples look like the language, lower at temperatures below 1 (the samples
concentrate on the likely continuations).

Command: `python -m experiments.charlm` (`--steps 3000`, `--smoke`).
The result is in README.md's table of experiments.
"""

import dataclasses
import math
import os
from typing import Any

import jax
import numpy as np

from arch import MODELS
from arch.decoding import generate
from arch.errors import ConfigError
from arch.layers import Positional
from experiments.common.language import LanguageModelConfig, fit_language_model, table_row
from experiments.common.scaffold import Experiment, runtime_text
from train.loop import FitResult
from train.report import figure, format_table, save_figure
from train.tasks import MarkovLanguage

CLAIM = (
    "On the known-entropy Markov language, a decoder-only Transformer, an LSTM and a GRU of "
    "about the same size all get within 0.1 bits per character of the entropy rate."
)
MAX_GAP_BITS = 0.1
PRINTED_SAMPLES = 2  # per model and temperature (results.json keeps them all)
PRINTED_CHARACTERS = 64


@dataclasses.dataclass(frozen=True)
class Config(LanguageModelConfig):
    gpt_features: int = 48
    gpt_layers: int = 2
    gpt_heads: int = 4
    gpt_positional: Positional = "rotary"
    lstm_hidden: int = 112
    gru_hidden: int = 128
    embed_size: int = 32
    """Token embedding of the recurrent models (the GPT embeds into its width d)."""
    lr: float = 6e-3
    """Peak learning rate of Adam for every model."""
    temperatures: tuple[float, ...] = (1.0, 0.7)

    def smoke_settings(self) -> dict:
        return dict(
            steps=20,
            gpt_features=16,
            gpt_layers=1,
            gpt_heads=2,
            lstm_hidden=16,
            gru_hidden=16,
            embed_size=8,
            length=32,
            num_eval=16,
            sample_tokens=32,
            num_samples=4,
            evaluations=2,
        )


def make_models(config: Config) -> dict[str, Any]:
    """The three language models, vocabulary set by the task (fit adapts it)."""
    longest = max(config.length, config.prompt_length + config.sample_tokens)
    return {
        "gpt": MODELS["gpt"](
            features=config.gpt_features,
            num_layers=config.gpt_layers,
            num_heads=config.gpt_heads,
            positional=config.gpt_positional,
            max_len=longest,
        ),
        "lstm": MODELS["rnn_lm"](
            cell="lstm", hidden_size=config.lstm_hidden, embed_size=config.embed_size
        ),
        "gru": MODELS["rnn_lm"](
            cell="gru", hidden_size=config.gru_hidden, embed_size=config.embed_size
        ),
    }


def samples(result: FitResult, task: MarkovLanguage, config: Config) -> list[dict]:
    """Per temperature: sampled continuations of test prompts, scored under the source, in
    all and split at the training length (positions < length were seen in training, the
    rest were not: None where there are none)."""
    within = max(min(config.length - config.prompt_length, config.sample_tokens), 0)
    mean = lambda bits: float(bits.mean()) if bits.size else None
    prompts = np.asarray(task.data["test"][0][: config.num_samples, : config.prompt_length])
    out = []
    for temperature in config.temperatures:
        key = jax.random.key(config.seed)
        tokens = generate(
            result.model,
            result.state.variables,
            prompts,
            config.sample_tokens,
            key,
            temperature,
        )
        tokens = np.asarray(tokens)  # [num_samples, p + s]
        bits = task.chain.surprisal_bits(tokens, config.prompt_length)
        out.append(
            {
                "temperature": temperature,
                "source_bits_per_char": float(bits.mean()),
                "source_bits_within_training_length": mean(bits[:, :within]),
                "source_bits_beyond_training_length": mean(bits[:, within:]),
                "source_bits_per_position": bits.mean(axis=0).tolist(),  # new tokens [s]
                "texts": [task.as_text(row[config.prompt_length :]) for row in tokens],
                "tokens": tokens.tolist(),
            }
        )
    return out


def train_model(name: str, model: Any, task: MarkovLanguage, config: Config, out: str) -> dict:
    result, row = fit_language_model(name, model, task, config, out)
    return {**row, "samples": samples(result, task, config)}


def summary_line(results: dict) -> str:
    """A row for README.md's table of experiments: command, claim, result."""
    config = results["config"]
    number = lambda value: "-" if value is None else f"{value:.2f}"
    split = lambda sample: (
        f"{number(sample['source_bits_within_training_length'])}/"
        f"{number(sample['source_bits_beyond_training_length'])}"
    )
    parts = "; ".join(
        f"{r['model']} ({r['parameters'] / 1000:.0f}k) {r['test_bits_per_char']:.3f} "
        f"(gap **{r['gap_bits']:.3f}**, {r['train_time_s']:.0f} s)"
        for r in results["models"]
    )
    runtime = runtime_text(results)
    return (
        f"| `python -m experiments.charlm` (~{runtime}) | on the known-entropy language a "
        f"decoder-only Transformer, an LSTM and a GRU of about the same size all get within 0.1 "
        f"bits/char of the entropy rate | **{'holds' if results['holds'] else 'fails'}.** Test "
        f"bits/char after {config['steps']} steps (entropy rate "
        f"{results['entropy_rate_bits']:.3f}): {parts}. Samples (`generate`, temperature "
        f"{config['temperatures'][0]:g}) under the true source, positions < / >= the training "
        f"length {config['length']}: "
        + ", ".join(f"{r['model']} {split(r['samples'][0])}" for r in results["models"])
        + " bits/char. |"
    )


def sample_columns(samples: list[dict], length: int) -> dict[str, Any]:
    """Table cells: the samples' bits/char under the source per temperature, in all, within
    the training length and beyond it."""
    cells = {}
    for sample in samples:
        t = f"T={sample['temperature']:g}"
        within = sample["source_bits_within_training_length"]
        beyond = sample["source_bits_beyond_training_length"]
        cells[f"src {t}"] = sample["source_bits_per_char"]
        cells[f"src {t} <{length}"] = "-" if within is None else within
        cells[f"src {t} >={length}"] = "-" if beyond is None else beyond
    return cells


def plot(rows: list[dict], entropy_rate: float, config: Config, path: str) -> None:
    fig, (left, right, samples_axis) = figure(1, 3, figsize=(16, 4))
    for row in rows:
        steps = np.array(row["validation_steps"])
        seconds = steps / steps[-1] * row["train_time_s"]
        label = f"{row['model']} ({row['parameters']:,})"
        left.plot(steps, row["validation_bits_per_char"], marker=".", label=label)
        right.plot(seconds, row["validation_bits_per_char"], marker=".", label=label)
    for axis in (left, right):
        axis.axhline(entropy_rate, color="gray", label=f"entropy rate {entropy_rate:.3f}")
        axis.axhline(
            entropy_rate + MAX_GAP_BITS, color="gray", linestyle="--", label="claim: +0.1 bits"
        )
        axis.set_ylabel("validation bits per char")
        axis.legend(fontsize=8)
    window = min(16, config.sample_tokens)
    for row in rows:
        sample = row["samples"][0]
        bits = np.convolve(sample["source_bits_per_position"], np.ones(window) / window, "valid")
        positions = config.prompt_length + np.arange(len(bits)) + (window - 1) / 2
        samples_axis.plot(positions, bits, label=row["model"])
    samples_axis.axhline(entropy_rate, color="gray", label=f"entropy rate {entropy_rate:.3f}")
    samples_axis.axvline(config.length, color="k", linestyle=":", label="training length")
    samples_axis.set(xlabel="position in the sample", ylabel=f"source bits/char ({window}-mean)")
    samples_axis.set_title(f"Samples at temperature {row['samples'][0]['temperature']:g}")
    samples_axis.legend(fontsize=8)
    left.set(xlabel="step")
    right.set(xlabel="training seconds (this machine)")
    left.set_title("Markov language: Transformer against recurrence")
    right.set_title("The same curves against training time")
    save_figure(fig, path, dpi=120)


def study(config: Config, out: str) -> dict:
    task = MarkovLanguage(
        batch_size=config.batch_size,
        seed=config.seed,
        length=config.length,
        num_eval=config.num_eval,
    )
    if task.vocab_size > 26:
        raise ConfigError("samples are printed as letters: the language needs <= 26 symbols")
    rows = [train_model(name, m, task, config, out) for name, m in make_models(config).items()]
    results = {
        "holds": all(row["gap_bits"] < MAX_GAP_BITS for row in rows),
        "criterion": f"every model's test bits/char - entropy rate < {MAX_GAP_BITS}",
        "entropy_rate_bits": task.entropy_rate_bits,
        "log2_vocab_bits": math.log2(task.vocab_size),
        "source_test_bits_per_char": task.source_bits_per_char("test"),
        "models": rows,
    }
    plot(rows, task.entropy_rate_bits, config, os.path.join(out, "charlm.png"))
    table = [table_row(r, **sample_columns(r["samples"], config.length)) for r in rows]
    print(format_table(table))
    print(
        f"entropy rate {task.entropy_rate_bits:.4f} bits/char; the true source on the test "
        f"tokens {results['source_test_bits_per_char']:.4f}; log2(vocab) "
        f"{results['log2_vocab_bits']:.4f}"
    )
    for r in rows:
        for s in r["samples"]:
            for text in s["texts"][:PRINTED_SAMPLES]:
                print(f"{r['model']:4}  T={s['temperature']:<4g} {text[:PRINTED_CHARACTERS]}...")
    return results


EXPERIMENT = Experiment("charlm", CLAIM, Config, study, summary_line=summary_line)
main = EXPERIMENT.main_of(__name__)
