"""train/tasks/recall.py: the recall probes' generators against the answers worked out from each
sequence by hand (where the scored positions are, what they must answer), their configuration
errors, batches as pure functions of the data position, and the separation MQAR exists for:
attention beats chance on a tiny instance, an order-blind model cannot."""

import numpy as np
import pytest

from arch import MODELS
from arch.errors import ConfigError
from train.loop import RunConfig, fit
from train.optim import OptimConfig
from train.tasks import TASKS, DataPosition


def sample(name: str, n: int = 64, **fields):
    return TASKS[name](**fields).sample(np.random.default_rng(0), n)


@pytest.mark.parametrize("random_fill", [True, False])
def test_mqar_queries_each_key_once_and_answers_its_value(random_fill):
    v, pairs, length = 32, 4, 24
    inputs, targets, mask = sample(
        "mqar", vocab_size=v, num_pairs=pairs, length=length, random_fill=random_fill
    )
    for x, y, m in zip(inputs, targets, mask, strict=True):
        keys, values = x[0 : 2 * pairs : 2], x[1 : 2 * pairs : 2]
        assert len(set(keys)) == len(set(values)) == pairs
        assert keys.min() >= 1 and keys.max() < v // 2 <= values.min() and values.max() < v
        scored = np.flatnonzero(m)
        assert len(scored) == pairs and scored.min() >= 2 * pairs
        assert np.all((scored - 2 * pairs) % 2 == 0)  # a query every other position at most
        assert sorted(x[scored]) == sorted(keys)  # every key asked once
        answer = dict(zip(keys, values, strict=True))
        assert [answer[k] for k in x[scored]] == list(y[scored])
        assert np.all(y[m == 0] == 0)
        others = np.delete(np.arange(length), np.r_[np.arange(2 * pairs), scored])
        assert np.all(x[others] > 0) if random_fill else np.all(x[others] == 0)


def test_mqar_gaps_follow_the_power_law():
    """power_a 0.01: weights g^-0.99 over the 32 slots put most queries in the first slots."""
    _, _, mask = sample("mqar", n=400, vocab_size=64, num_pairs=2, length=68)
    slots = (np.argwhere(mask)[:, 1] - 4) // 2
    assert np.mean(slots < 4) > 0.4 and np.mean(slots >= 16) < 0.25  # uniform: 0.125, 0.5
    _, _, mask = sample("mqar", n=400, vocab_size=64, num_pairs=2, length=68, power_a=1.0)
    slots = (np.argwhere(mask)[:, 1] - 4) // 2
    assert np.mean(slots >= 16) == pytest.approx(0.5, abs=0.06)  # power_a 1: uniform


def test_selective_copy_answers_the_scattered_tokens_in_order():
    inputs, targets, mask = sample("selective_copy", num_symbols=6, copy_length=5, length=20)
    assert inputs.shape == (64, 25)
    for x, y, m in zip(inputs, targets, mask, strict=True):
        region = x[:20]
        data = region[region > 0]
        assert len(data) == 5 and data.max() <= 6
        assert list(y[20:]) == list(data) and np.all(y[:20] == 0)
        assert np.all(x[20:] == 7) and list(m) == [0] * 20 + [1] * 5  # the marker, 6 + 1
    positions = [tuple(np.flatnonzero(x[:20])) for x in inputs]
    assert len(set(positions)) > 50  # the positions vary (the copy task's are fixed)


def test_induction_answers_what_followed_the_special_tokens_first_occurrence():
    inputs, targets, mask = sample("induction", num_symbols=5, length=12)
    for x, y, m in zip(inputs, targets, mask, strict=True):
        where = np.flatnonzero(x == 5)
        assert len(where) == 2 and where[0] <= 9 and where[1] == 11
        assert y[-1] == x[where[0] + 1] < 5
        assert list(m) == [0] * 11 + [1] and np.all(y[:-1] == 0)


@pytest.mark.parametrize("name", ["mqar", "selective_copy", "induction"])
def test_a_batch_is_a_function_of_its_position(name):
    task = TASKS[name](batch_size=8)
    first, again = (task.train_batch(DataPosition(0, 3)) for _ in range(2))
    other = task.train_batch(DataPosition(0, 4))
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["inputs"], other["inputs"])


@pytest.mark.parametrize(
    ("name", "fields", "message"),
    [
        ("mqar", dict(num_pairs=8, length=30), r"length must be >= 4 \* num_pairs = 32"),
        ("mqar", dict(vocab_size=16, num_pairs=8), "has 7 keys, fewer than num_pairs 8"),
        ("mqar", dict(power_a=0.0), "power_a must be > 0"),
        ("selective_copy", dict(copy_length=9, length=8), "must hold copy_length 9"),
        ("induction", dict(length=2), "length"),
    ],
)
def test_bad_configurations_are_refused(name, fields, message):
    with pytest.raises(ConfigError, match=message):
        TASKS[name](**fields)


def test_attention_beats_chance_on_mqar_and_an_order_blind_model_cannot():
    """4 pairs: a model that cannot bind a value to its key (BERT's encoder without positions
    is permutation-equivariant) can at best pick among the context's 4 values, 1 / 4; the
    causal gpt with learned positions gets above it in 500 steps (0.356-0.365 over seeds 0-2,
    the order-blind model 0.188-0.198; measured on the 2-core CPU)."""
    task = TASKS["mqar"](vocab_size=32, num_pairs=4, length=16, batch_size=32, num_eval=512)
    sizes = dict(num_layers=2, features=64, num_heads=4, max_len=16)
    accuracy = {}
    for name, model in [("gpt", MODELS["gpt"](**sizes)),
                        ("blind", MODELS["bert"](**sizes, positional="none"))]:  # fmt: skip
        result = fit(model, task, OptimConfig(lr=3e-3, warmup_steps=50), RunConfig.quiet(500))
        accuracy[name] = result.summary["final"]["test"]["accuracy"]
    assert accuracy["gpt"] > 0.32 and accuracy["blind"] < 0.27, accuracy
