"""Training over simulated devices or several processes, for tests/test_sharding.py:
`XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharding_driver.py mesh`
prints one JSON line of results; `... distributed` is run as two processes (JAX_PROCESS_ID 0
and 1) that join through `jax.distributed.initialize`."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STEPS = 6


def run(case: str, sharding=None) -> dict:
    """Train losses and parameter shardings of one small run (the test repeats it on one
    device)."""
    from arch import MODELS
    from train.loop import RunConfig, fit
    from train.optim import OptimConfig
    from train.sharding import ShardingConfig, describe
    from train.tasks import TASKS

    if case == "gpt":
        model = MODELS["gpt"](num_layers=1, features=32, num_heads=4, max_len=16)
        task = TASKS["markov"](length=16, batch_size=16, vocab_size=8)
    else:
        model, task = MODELS["mlp"](hidden_sizes=(32, 32)), TASKS["digits"](batch_size=32)
    quiet = dict(progress="off", tensorboard=False, compilation_cache=False)
    config = RunConfig(
        steps=STEPS, log_every=1, eval_every=STEPS, eval_batch_size=64,
        sharding=sharding or ShardingConfig(), **quiet,
    )  # fmt: skip
    result = fit(model, task, OptimConfig(name="adamw", lr=3e-3), config)
    losses = [h["loss"] for h in result.history if h["split"] == "train"]
    return {"losses": losses, "specs": describe(result.state.params)}


def accumulation(sharded: bool) -> float:
    """Largest |difference| between the parameters after one update from 4 accumulated
    micro-batches of 32 and after one update from their concatenation (batch 128)."""
    import jax
    import numpy as np

    from arch import MODELS
    from train.optim import OptimConfig, make_optimizer
    from train.sharding import Placement, ShardingConfig
    from train.step import init_state, make_train_step
    from train.tasks import TASKS

    model = MODELS["mlp"](hidden_sizes=(32,), num_outputs=10)
    task = TASKS["digits"](batch_size=128)
    big = task.train_batch(task.position_after(0))
    micro = [{k: v[32 * i : 32 * (i + 1)] for k, v in big.items()} for i in range(4)]
    config = ShardingConfig(data=2, fsdp=4, fsdp_min_size=64)
    placement = Placement.for_run(config) if sharded else Placement(None, config)
    params = []
    for accumulate, batches in ((4, micro), (1, [big])):
        tx = make_optimizer(OptimConfig(name="adam", lr=0.01, accumulate=accumulate), 100)
        state = init_state(
            model, tx, big["inputs"], 0, None, placement.state_shardings(tx, model, big["inputs"])
        )
        step = make_train_step(model, task, tx, placement.step_shardings(state))
        for batch in batches:
            state, _ = step(state, placement.batch(batch))
        params.append(jax.tree.leaves(state.params))
    return max(float(np.max(np.abs(a - b))) for a, b in zip(*params, strict=True))


def main() -> None:
    import jax

    if sys.argv[1] == "distributed":
        from train.sharding import initialize_distributed

        initialize_distributed()
        result = {"process": jax.process_index(), "devices": jax.device_count(), **run("mlp")}
    else:
        from train.sharding import ShardingConfig

        assert jax.device_count() == 8, "needs XLA_FLAGS=--xla_force_host_platform_device_count=8"
        result = {"devices": jax.device_count(), "accumulation": accumulation(True)}
        for name, config in {
            "mlp-data": ("mlp", ShardingConfig()),
            "gpt-fsdp": ("gpt", ShardingConfig(data=2, fsdp=4, fsdp_min_size=256)),
            "gpt-tensor": ("gpt", ShardingConfig(data=2, tensor=4)),
        }.items():
            result[name] = run(*config)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
