"""--profile START:STOP (train/profiling.py): the trace exists in RUN_DIR/profile and its step
annotations are exactly steps START..STOP; a bad range is one clear error."""

import glob
import gzip
import json

import pytest

from arch import MODELS
from arch.errors import ConfigError
from train.loop import RunConfig, fit
from train.optim import OptimConfig
from train.tasks import TASKS


def test_the_trace_covers_exactly_the_profiled_steps(tmp_path):
    run = RunConfig(steps=8, eval_every=4, log_every=4, run_dir=str(tmp_path), progress="off",
                    tensorboard=False, profile="3:5")  # fmt: skip
    fit(MODELS["mlp"](hidden_sizes=(8,)), TASKS["digits"](batch_size=16), OptimConfig(), run)
    [perfetto] = glob.glob(str(tmp_path / "profile/plugins/profile/*/perfetto_trace.json.gz"))
    assert glob.glob(str(tmp_path / "profile/plugins/profile/*/*.xplane.pb"))  # TensorBoard's
    with gzip.open(perfetto) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    steps = sorted(int(e["args"]["step_num"]) for e in events if e.get("name") == "train")
    assert steps == [3, 4, 5]


@pytest.mark.parametrize("spec", ["0:2", "3:2", "4:9", "3", "a:b"])
def test_a_bad_range_is_one_clear_error(spec):
    with pytest.raises(ConfigError, match=r"--profile takes START:STOP with 1 <= START <= STOP"):
        RunConfig(steps=8, profile=spec)
