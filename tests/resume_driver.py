"""A training run in its own process, for tests/test_checkpoint.py to kill, interrupt and
resume: `python tests/resume_driver.py CASE RUN_DIR [--kill-at S | --kill-in-save S |
--term-at S | --nan-at S] [--skip-non-finite]`, or `... restore-sharded RUN_DIR` (restore the
latest checkpoint onto 4 simulated devices and compare it with RUN_DIR/final.npz).

Faults are planted at a step boundary: "at S" means after S train steps, when the loop asks
for the batch of step S + 1 (a checkpoint save of step S may be running in the background).
At the end it writes RUN_DIR/final.npz: every leaf of the parameters and optimizer state.
"""

import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def case(name: str):
    from arch import MODELS
    from train.tasks import TASKS

    if name == "mlp":  # an array task: epochs wrap (digits: 1257 / 32 = 39 batches an epoch)
        return MODELS["mlp"](hidden_sizes=(16,), dropout_rate=0.1), TASKS["digits"](batch_size=32)
    if name == "lstm":
        return MODELS["rnn"](cell="lstm", hidden_size=16), TASKS["adding"](length=12, batch_size=8)
    if name == "transformer":
        model = MODELS["gpt"](num_layers=1, features=16, num_heads=2, max_len=16, dropout_rate=0.1)
        return model, TASKS["markov"](length=16, batch_size=8, vocab_size=8)
    raise ValueError(name)


def configs(run_dir: str, skip_non_finite: bool):
    from train.checkpoint import CheckpointConfig
    from train.loop import RunConfig
    from train.optim import OptimConfig

    optim = OptimConfig(
        name="adamw", lr=3e-3, schedule="cosine", warmup_steps=5, skip_non_finite=skip_non_finite
    )
    run = RunConfig(
        steps=45,
        eval_every=20,
        log_every=4,  # checkpoints at 10 and 30 fall inside a logged interval
        run_dir=run_dir,
        progress="off",
        tensorboard=False,
        compilation_cache=False,
        checkpoint=CheckpointConfig(every=10, keep_last=2, keep_best=1),
    )
    return optim, run


def plant(task, at: int, action):
    """Call `action(task, position, original train_batch)` when the loop asks for the batch of
    step `at` + 1 (its result, if not None, is that batch); returns a function that undoes it."""
    cls = type(task)
    original = cls.train_batch
    target = task.position_after(at)

    def train_batch(self, position):
        if position == target:
            result = action(self, position, original)
            if result is not None:
                return result
        return original(self, position)

    cls.train_batch = train_batch
    return lambda: setattr(cls, "train_batch", original)


def poison(task, position, original):
    """The batch with NaN inputs."""
    import numpy as np

    batch = dict(original(task, position))
    batch["inputs"] = np.full_like(batch["inputs"], np.nan)
    return batch


def kill_in_save(step: int) -> None:
    """SIGKILL inside orbax's save of `step`, right before its atomic rename."""
    from orbax.checkpoint._src.path import atomicity

    original = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self):
        if os.path.basename(str(self._final_path)) == str(step):
            os.kill(os.getpid(), signal.SIGKILL)
        return await original(self)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize


def save_final(state, path: str) -> None:
    import jax
    import numpy as np

    leaves = jax.tree.leaves((state.params, state.opt_state))
    np.savez(path, *[np.asarray(x) for x in leaves])


def restore_sharded(run_dir: str) -> None:
    """Restore onto a fresh state whose arrays are split over a 4-device mesh."""
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from train.checkpoint import Checkpoints
    from train.optim import make_optimizer
    from train.step import init_state
    from train.validate import adapt_model

    assert jax.device_count() == 4, jax.devices()
    model, task = case("mlp")
    optim, run = configs(run_dir, False)
    model = adapt_model(model, task)
    fresh = init_state(
        model,
        make_optimizer(optim, run.steps),
        task.train_batch(task.position_after(0))["inputs"],
        run.seed,
    )
    mesh = Mesh(np.array(jax.devices()), ("data",))

    def place(x):
        split = x.ndim and x.shape[0] % 4 == 0
        spec = PartitionSpec("data") if split else PartitionSpec()
        return jax.device_put(x, NamedSharding(mesh, spec))

    fresh = jax.tree.map(place, fresh)
    restored = Checkpoints(run_dir, run.checkpoint).restore(fresh)
    kernel = restored.state.params["hidden_0"]["kernel"]
    assert len(kernel.sharding.device_set) == 4, kernel.sharding  # really on 4 devices
    leaves = jax.tree.leaves((restored.state.params, restored.state.opt_state))
    expected = np.load(os.path.join(run_dir, "final.npz"))
    for i, leaf in enumerate(leaves):
        np.testing.assert_array_equal(np.asarray(leaf), expected[f"arr_{i}"])
    print("restored onto 4 devices: identical")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("case")
    parser.add_argument("run_dir")
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--kill-in-save", type=int)
    parser.add_argument("--term-at", type=int)
    parser.add_argument("--nan-at", type=int)
    parser.add_argument("--skip-non-finite", action="store_true")
    args = parser.parse_args()
    if args.case == "restore-sharded":
        restore_sharded(args.run_dir)
        return

    from train.guards import NonFiniteError, Preempted
    from train.loop import fit

    model, task = case(args.case)
    optim, run = configs(args.run_dir, args.skip_non_finite)
    if args.kill_at is not None:
        plant(task, args.kill_at, lambda *_: os.kill(os.getpid(), signal.SIGKILL))
    if args.term_at is not None:
        plant(task, args.term_at, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
    if args.nan_at is not None:
        plant(task, args.nan_at - 1, poison)  # the batch OF step nan_at
    if args.kill_in_save is not None:
        kill_in_save(args.kill_in_save)
    try:
        result = fit(model, task, optim, run)
    except Preempted as stop:
        print(stop)
        sys.exit(128 + stop.signal_number)
    except NonFiniteError as error:
        print(f"NonFiniteError: {error}")
        sys.exit(3)
    save_final(result.state, os.path.join(args.run_dir, "final.npz"))


if __name__ == "__main__":
    main()
