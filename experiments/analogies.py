"""Word analogies: skip-gram with negative sampling recovers relations planted in a corpus.

Claim: trained through the shared `fit` on the planted corpus (task "planted_corpus": 24
entity words on a group x gender x age grid, king / queen / prince / princess, man / woman /
boy / girl, ...; markers drawn from the entity's attribute values with probability 0.8), SGNS
("word2vec") answers the planted analogies "b is to a as c is to d" (3CosAdd: d = the word
nearest a - b + c, a, b and c excluded) far above chance = 1 / (vocabulary - 3) = 1/69, for
every relation kind (gender, age, group), and above the "only c" baseline (d = the nearest
neighbour of c, a and b excluded: Linzen 2016), which an analogy test can pass without any
consistent offset. The nearest neighbour of an entity is an entity differing from it in
exactly one attribute (chance 7/71). "holds" = at marker noise 0.2, for every seed and kind,
3CosAdd accuracy >= 0.5 and above the only-c baseline, and >= 90% of the 24 entities have a
one-attribute neighbour as their nearest word.

A sweep of the marker noise shows where the relations come from: at noise 0.5 the gender and
age markers are independent of gender and age, nothing is planted, and king / queen / prince /
princess share one context distribution.

Command: python -m experiments.analogies        (--smoke: 1 seed, noise 0.2 and 0.5, 800 steps)
The result is in README.md's table of experiments.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np

from arch import MODELS
from arch.errors import ConfigError
from arch.word2vec import analogy_accuracy, nearest_neighbours, unit_rows, word_vectors
from experiments.common.scaffold import Experiment, ExperimentConfig
from train.loop import RunConfig, fit
from train.optim import OptimConfig
from train.report import figure, format_table, save_figure
from train.tasks import TASKS

CLAIM = (
    "SGNS on the planted corpus answers the planted gender / age / group analogies far above "
    "chance and above the only-c baseline; an entity's nearest neighbour differs from it in "
    "one attribute."
)
MIN_ACCURACY, MIN_NEIGHBOUR_FRACTION = 0.5, 0.9
KIND_COLOURS = {"group": "tab:blue", "gender": "tab:red", "age": "tab:green"}
GROUP_COLOURS = ("tab:purple", "tab:blue", "tab:green", "tab:orange", "tab:red", "tab:brown")


@dataclasses.dataclass(frozen=True)
class Config(ExperimentConfig):
    steps: int = 1500
    seeds: tuple[int, ...] = (0, 1, 2)
    """Each seed sets the initialisation and the sentences drawn."""
    noises: tuple[float, ...] = (0.0, 0.2, 0.3, 0.4, 0.5)
    """Marker noise levels of the sweep; the claim is tested at `claim_noise`."""
    claim_noise: float = 0.2
    embed_size: int = 32
    batch_size: int = 256
    num_negatives: int = 5
    window: int = 4
    lr: float = 1e-2
    shown_words: tuple[str, ...] = ("king", "girl", "mare", "he", "crown")
    """Words whose nearest neighbours are printed (seed 0, claim noise)."""

    def smoke_settings(self) -> dict:
        return dict(steps=800, seeds=self.seeds[:1], noises=(0.2, 0.5))


def only_c_accuracy(table: jnp.ndarray, quadruples: np.ndarray) -> float:
    """The baseline that ignores a and b: d = the nearest neighbour of c (a, b, c excluded)."""
    unit = unit_rows(table)  # [v, d]
    scores = unit[quadruples[:, 2]] @ unit.T  # cos(w_c, w_j) [q, v]
    rows = np.arange(len(quadruples))
    for column in range(3):
        scores = scores.at[rows, quadruples[:, column]].set(-jnp.inf)
    return float(jnp.mean(jnp.argmax(scores, axis=-1) == quadruples[:, 3]))


def one_attribute_neighbour_fraction(table: jnp.ndarray, attributes: np.ndarray) -> float:
    """The fraction of entities (ids 0..e-1, attributes int [e, 3]) whose nearest word is an
    entity differing from it in exactly one attribute."""
    entities = np.arange(len(attributes))
    nearest = np.asarray(nearest_neighbours(table, entities, 1))[:, 0]  # [e]
    is_entity = nearest < len(attributes)
    differing = (attributes[entities] != attributes[np.minimum(nearest, len(entities) - 1)]).sum(1)
    return float(np.mean(is_entity & (differing == 1)))


def summary_line(results: dict) -> str:
    """A row for README.md's table of experiments: command, claim, result."""
    key = results["claim_noise"]
    mean = lambda values: float(np.mean(values))
    parts = ", ".join(
        f"{kind} {mean(values):.3f} (only-c {mean(results['only_c'][key][kind]):.3f})"
        for kind, values in results["accuracy"][key].items()
    )
    text = (
        f"| `python -m experiments.analogies` (~{results['wall_seconds']:.0f} s) | SGNS answers "
        f"planted gender / age / group analogies far above chance and above the only-c baseline "
        f"| **{'holds' if results['holds'] else 'fails'}.** 3CosAdd accuracy at marker noise "
        f"{key} over {len(results['seeds'])} seeds (chance {results['chance']:.4f}): {parts}; "
        f"entities whose nearest word differs in one attribute: "
        f"{mean(results['neighbour_fraction'][key]):.2f}."
    )
    if "0.5" in results["accuracy"]:
        control = results["accuracy"]["0.5"]
        text += " At noise 0.5 (gender and age not planted): " + ", ".join(
            f"{kind} {mean(values):.2f}" for kind, values in control.items()
        )
    return text + ". |"


def plot(out_dir: str, task, table: np.ndarray, results: dict) -> None:
    """Left: the entity vectors on their first two principal components, arrows male -> female
    (solid) and adult -> young (dashed). Right: accuracy per kind against the marker noise."""
    fig, (left, right) = figure(1, 2, figsize=(13, 5.5))
    attributes = task.entity_attributes  # [e, 3]
    vectors = np.asarray(unit_rows(table))[: len(attributes)]  # [e, d]
    centred = vectors - vectors.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    points = centred @ components[:2].T  # [e, 2]
    for entity, (group, _, age) in enumerate(attributes):
        colour = GROUP_COLOURS[group]
        marker = "o" if age == 0 else "^"
        left.scatter(*points[entity], c=colour, marker=marker, s=30)
        left.annotate(task.vocabulary[entity], points[entity], fontsize=7, color=colour)
        for column, style in ((1, "-"), (2, "--")):  # gender, age
            if attributes[entity, column] == 0:
                target = attributes[entity].copy()
                target[column] = 1
                end = points[task.entity(*target)]
                left.annotate(
                    "",
                    end,
                    points[entity],
                    arrowprops={"arrowstyle": "->", "color": colour, "linestyle": style},
                )
    left.set_title("entity vectors, PCA (seed 0): -> male to female, --> adult to young")
    noise_keys = list(results["accuracy"])  # "0", "0.2", ...
    noises = [float(key) for key in noise_keys]
    for kind, colour in KIND_COLOURS.items():
        means = [np.mean(results["accuracy"][key][kind]) for key in noise_keys]
        baseline = [np.mean(results["only_c"][key][kind]) for key in noise_keys]
        right.plot(noises, means, "o-", color=colour, label=f"{kind} (3CosAdd)")
        right.plot(noises, baseline, "x:", color=colour, label=f"{kind} (only c)")
    right.axhline(results["chance"], color="k", linewidth=0.8, label="chance")
    right.set_xlabel("marker noise (0.5: gender and age not planted)")
    right.set_ylabel(f"analogy accuracy, mean of {len(results['seeds'])} seeds")
    right.legend(fontsize=8)
    save_figure(fig, f"{out_dir}/analogies.png", dpi=100)


def study(config: Config, out_dir: str) -> dict:
    if config.claim_noise not in config.noises:
        raise ConfigError(f"claim_noise {config.claim_noise} must be one of noises {config.noises}")
    model = MODELS["word2vec"](embed_size=config.embed_size)
    optim = OptimConfig(name="adam", lr=config.lr)

    accuracy, only_c, neighbour_fraction, test_loss = {}, {}, {}, {}
    for noise in config.noises:
        key = f"{noise:g}"
        accuracy[key], only_c[key] = {}, {}
        neighbour_fraction[key], test_loss[key] = [], []
        for seed in config.seeds:
            task = TASKS["planted_corpus"](
                batch_size=config.batch_size,
                seed=seed,
                num_negatives=config.num_negatives,
                window=config.window,
                noise=noise,
            )
            result = fit(model, task, optim, RunConfig.quiet(config.steps, seed=seed))
            table = word_vectors(result.state.params)  # [v, d]
            for kind, quadruples in task.analogies.items():
                accuracy[key].setdefault(kind, []).append(analogy_accuracy(table, quadruples))
                only_c[key].setdefault(kind, []).append(only_c_accuracy(table, quadruples))
            neighbour_fraction[key].append(
                one_attribute_neighbour_fraction(table, task.entity_attributes)
            )
            test_loss[key].append(result.summary["final"]["test"]["loss"])
            if noise == config.claim_noise and seed == config.seeds[0]:
                shown_task, shown_table = task, np.asarray(table)

    ids = np.array([shown_task.word_id(w) for w in config.shown_words])
    neighbours = {
        shown_task.vocabulary[i]: [shown_task.vocabulary[j] for j in row]
        for i, row in zip(ids, np.asarray(nearest_neighbours(shown_table, ids, 5)), strict=True)
    }
    key = f"{config.claim_noise:g}"
    holds = (
        all(
            min(values) >= MIN_ACCURACY
            and all(a > b for a, b in zip(values, only_c[key][kind], strict=True))
            for kind, values in accuracy[key].items()
        )
        and min(neighbour_fraction[key]) >= MIN_NEIGHBOUR_FRACTION
    )
    results = {
        "holds": bool(holds),
        "criterion": f"at noise {key}, for every seed and kind: 3CosAdd accuracy >= "
        f"{MIN_ACCURACY} and > the only-c baseline; one-attribute nearest-neighbour fraction "
        f">= {MIN_NEIGHBOUR_FRACTION}",
        "claim_noise": key,
        "vocab_size": shown_task.vocab_size,
        "chance": 1 / (shown_task.vocab_size - 3),
        "neighbour_chance": 7 / (shown_task.vocab_size - 1),
        "analogies_per_kind": {k: len(q) for k, q in shown_task.analogies.items()},
        "accuracy": accuracy,
        "only_c": only_c,
        "neighbour_fraction": neighbour_fraction,
        "test_loss": test_loss,
        "neighbours": neighbours,
        "seeds": list(config.seeds),
    }
    plot(out_dir, shown_task, shown_table, results)

    rows = [
        {
            "noise": noise,
            **{
                kind: f"{np.mean(v):.3f} / {np.min(v):.3f} ({np.mean(only_c[noise][kind]):.3f})"
                for kind, v in per_kind.items()
            },
            "neighbours": float(np.mean(neighbour_fraction[noise])),
            "test loss": float(np.mean(test_loss[noise])),
        }
        for noise, per_kind in accuracy.items()
    ]
    print(format_table(rows))
    print(f"chance {results['chance']:.4f}; nearest neighbours (seed {config.seeds[0]}):")
    for word, words in neighbours.items():
        print(f"  {word}: {' '.join(words)}")
    return results


EXPERIMENT = Experiment("analogies", CLAIM, Config, study, summary_line=summary_line)
main = EXPERIMENT.main_of(__name__)
