"""Mixed precision: bfloat16 compute with float32 parameters and optimizer state trains to
within a stated tolerance of float32 on the digits and the known-entropy language."""

import jax
import jax.numpy as jnp
import pytest

from arch import MODELS
from train.loop import RunConfig, fit
from train.optim import OptimConfig
from train.tasks import TASKS

CASES = {
    # name: (model fields, task, steps, metric, tolerance)
    "digits": (("mlp", {"hidden_sizes": (64,)}), TASKS["digits"](), 300, "accuracy", 0.03),
    "language": (
        ("gpt", {"num_layers": 1, "features": 32, "num_heads": 2, "max_len": 32}),
        TASKS["markov"](length=32, batch_size=16),
        200,
        "loss",
        0.05,
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_bfloat16_trains_within_tolerance_of_float32(name):
    (model_name, fields), task, steps, metric, tolerance = CASES[name]
    results = {}
    for dtype in ("float32", "bfloat16"):
        model = MODELS[model_name](**fields, dtype=dtype)
        run = RunConfig.quiet(steps, compilation_cache=False)
        results[dtype] = fit(model, task, OptimConfig(lr=3e-3), run)
    low = results["bfloat16"]
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(low.state.params))
    assert all(x.dtype in (jnp.float32, jnp.int32) for x in jax.tree.leaves(low.state.opt_state))
    final = {d: r.summary["final"]["test"][metric] for d, r in results.items()}
    assert abs(final["bfloat16"] - final["float32"]) <= tolerance, final


def test_bfloat16_models_multiply_in_bfloat16():
    model = MODELS["mlp"](hidden_sizes=(64,), dtype="bfloat16", num_outputs=10)
    x = jnp.ones((4, 64))
    params = jax.eval_shape(model.init, jax.random.key(0), x)
    text = str(jax.make_jaxpr(model.apply)(params, x))
    assert "dot_general" in text and "bf16[4,64]" in text
