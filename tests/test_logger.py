"""train/logger.py's TensorBoard events: the train and validation scalars, the configuration as
text and the final metrics, read back from the event files (tensorboardX's own protobufs)."""

import glob
import json
import struct

from tensorboardX.proto.event_pb2 import Event

from arch import MODELS
from train.loop import RunConfig, fit
from train.optim import OptimConfig
from train.tasks import TASKS


def events(directory) -> list[Event]:
    """Every event of the TFRecord files in `directory` (length, crc, data, crc framing)."""
    out = []
    for path in sorted(glob.glob(f"{directory}/events.out.tfevents.*")):
        with open(path, "rb") as f:
            data = f.read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            out.append(Event.FromString(data[offset + 12 : offset + 12 + length]))
            offset += 12 + length + 4
    return out


def test_tensorboard_holds_the_scalars_the_configuration_and_the_final_metrics(tmp_path):
    run = RunConfig(steps=6, eval_every=3, log_every=3, run_dir=str(tmp_path), progress="off")
    result = fit(
        MODELS["mlp"](hidden_sizes=(8,)), TASKS["digits"](batch_size=16), OptimConfig(), run
    )
    values = {}
    for event in events(tmp_path / "tensorboard"):
        for value in event.summary.value:
            values.setdefault(value.tag, []).append((event.step, value))
    assert [s for s, _ in values["train/loss"]] == [3, 6]
    assert [s for s, _ in values["validation/accuracy"]] == [3, 6]
    for split, metrics in result.summary["final"].items():
        for key, number in metrics.items():
            [(step, value)] = values[f"final/{split}/{key}"]
            assert step == 6 and abs(value.simple_value - number) <= 1e-6 * max(1, abs(number))
    [(_, text)] = values["config/text_summary"]
    shown = text.tensor.string_val[0].decode()
    config = json.loads("\n".join(line[4:] for line in shown.splitlines()))
    assert config == json.loads((tmp_path / "config.json").read_text())
