"""RunConfig: how long a run trains, how often it logs and evaluates, where it writes, and
its checkpoint and sharding settings (the `--steps` ... options of `python -m train`)."""

import dataclasses
from typing import Annotated, Any

import tyro

from arch.errors import ConfigError
from train.checkpoint import CheckpointConfig
from train.logger import Progress
from train.profiling import profile_steps
from train.sharding import ShardingConfig


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """How long to train, how often to log and evaluate, and where to write."""

    steps: int = 1000
    """Train steps (micro-batches when gradients are accumulated)."""
    eval_every: int = 250
    log_every: int = 50
    seed: int = 0
    """Seed of parameter initialisation and dropout (the task's own seed orders the data)."""
    run_dir: str | None = None
    """Where to write config.json, metrics.jsonl, summary.json, TensorBoard (None: nowhere;
    `python -m train` then uses runs/MODEL-TASK)."""
    eval_batch_size: int = 512
    compilation_cache: bool = True
    """Keep compiled programs in a user cache directory so the next start skips compilation."""
    progress: Progress = "auto"
    tensorboard: bool = True
    checkpoint: Annotated[CheckpointConfig, tyro.conf.Suppress] = CheckpointConfig()
    """Checkpoints in RUN_DIR/checkpoints (train/checkpoint.py); re-running the same command
    with the same run directory resumes from the latest."""
    distributed: bool = False
    """Join a multi-process run (jax.distributed.initialize; `python -m train` calls it before
    touching a device): SLURM and TPU pods are detected, elsewhere set JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES and JAX_PROCESS_ID."""
    profile: str | None = None
    """START:STOP: a jax.profiler trace of train steps START to STOP in RUN_DIR/profile (view it
    with TensorBoard's profile plugin, or perfetto_trace.json.gz at ui.perfetto.dev)."""
    sharding: Annotated[ShardingConfig, tyro.conf.Suppress] = ShardingConfig()
    """The device mesh when more than one device is present (train/sharding.py); default:
    data parallel over every device."""

    @classmethod
    def quiet(cls, steps: int, evaluations: int = 1, **fields: Any) -> "RunConfig":
        """A run inside a study: evaluated and logged `evaluations` times (the last at the
        end), no progress output, no TensorBoard; `fields` set anything else."""
        every = max(steps // evaluations, 1)
        defaults = {
            "eval_every": every,
            "log_every": every,
            "progress": "off",
            "tensorboard": False,
            "checkpoint": CheckpointConfig(enabled=False),
        }
        return cls(steps=steps, **{**defaults, **fields})

    def __post_init__(self) -> None:
        for name in ("steps", "eval_every", "log_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)} (set {flag})")
        profile_steps(self.profile, self.steps)
        if self.run_dir is not None and not self.run_dir.strip():
            raise ConfigError(
                "run_dir is empty; give --run-dir a directory (without --run-dir the command "
                "line writes to runs/MODEL-TASK)"
            )
