"""Ensembles (train/ensemble.py): N members in one vmapped train step equal N separate runs
of the shared loop with the same seeds and learning rates."""

import jax
import numpy as np
import pytest

from arch import MODELS
from arch.errors import ConfigError
from train.ensemble import fit_ensemble, member
from train.loop import RunConfig, fit
from train.optim import OptimConfig
from train.tasks import TASKS

STEPS, SEEDS, FACTORS = 25, (0, 1, 2), (1.0, 0.5, 2.0)
OPTIM = OptimConfig(name="adamw", lr=2e-3, warmup_steps=5, weight_decay=1e-3, schedule="cosine")


def model():
    return MODELS["mlp"](hidden_sizes=(32,), dropout_rate=0.1)  # dropout: the seed matters


@pytest.fixture(scope="module")
def ensemble():
    return fit_ensemble(model(), TASKS["digits"](), OPTIM, STEPS, SEEDS, FACTORS)


@pytest.mark.parametrize("index", range(len(SEEDS)))
def test_each_member_equals_a_separate_run(ensemble, index):
    optim = OptimConfig(**{**OPTIM.__dict__, "lr": OPTIM.lr * FACTORS[index]})
    run = RunConfig.quiet(STEPS, seed=SEEDS[index], compilation_cache=False)
    alone = fit(model(), TASKS["digits"](), optim, run)
    mine = member(ensemble.states, index)
    for a, b in zip(jax.tree.leaves(mine.params), jax.tree.leaves(alone.state.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    final = ensemble.final[index]["test"]
    assert final["accuracy"] == pytest.approx(alone.summary["final"]["test"]["accuracy"], abs=1e-6)
    assert final["loss"] == pytest.approx(alone.summary["final"]["test"]["loss"], rel=1e-4)


def test_members_differ_and_losses_are_recorded_per_member(ensemble):
    assert ensemble.losses.shape == (STEPS, len(SEEDS))
    first = [member(ensemble.states, i).params["hidden_0"]["kernel"] for i in range(3)]
    assert not np.allclose(first[0], first[1])


def test_bad_ensembles_are_refused():
    with pytest.raises(ConfigError, match="one lr factor per seed"):
        fit_ensemble(model(), TASKS["digits"](), OPTIM, 1, (0, 1), (1.0,))
    with pytest.raises(ConfigError, match="lr factors must be > 0"):
        fit_ensemble(model(), TASKS["digits"](), OPTIM, 1, (0,), (0.0,))
