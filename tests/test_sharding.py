"""Sharding (train/sharding.py): the one train step over 8 simulated CPU devices (data
parallel, FSDP, tensor parallel) and over two processes joined by jax.distributed.initialize
gives the losses of one device; parameters really are split; gradient accumulation over k
micro-batches equals one step on the k-times batch, sharded or not."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from sharding_driver import accumulation, run  # noqa: E402

from arch.errors import ConfigError
from train.sharding import ShardingConfig  # noqa: E402

DRIVER = os.path.join(os.path.dirname(__file__), "sharding_driver.py")
TOLERANCE = dict(rtol=2e-5, atol=1e-6)  # float32: a sharded reduction sums in another order


def result_of(process: subprocess.CompletedProcess) -> dict:
    assert process.returncode == 0, process.stderr[-3000:]
    line = next(x for x in process.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


@pytest.fixture(scope="module")
def eight_devices() -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    env["JAX_PLATFORMS"] = "cpu"
    process = subprocess.run(
        [sys.executable, DRIVER, "mesh"], capture_output=True, text=True, env=env, timeout=600
    )
    return result_of(process)


@pytest.fixture(scope="module")
def one_device() -> dict:
    return {"mlp": run("mlp"), "gpt": run("gpt")}


@pytest.mark.parametrize(
    ("name", "case"), [("mlp-data", "mlp"), ("gpt-fsdp", "gpt"), ("gpt-tensor", "gpt")]
)
def test_sharded_training_gives_the_losses_of_one_device(eight_devices, one_device, name, case):
    assert eight_devices["devices"] == 8
    np.testing.assert_allclose(
        eight_devices[name]["losses"], one_device[case]["losses"], **TOLERANCE
    )


def test_data_parallel_replicates_the_parameters(eight_devices):
    assert set(eight_devices["mlp-data"]["specs"].values()) == {"P()"}


def test_fsdp_splits_every_large_parameter_and_keeps_small_ones_whole(eight_devices):
    specs = eight_devices["gpt-fsdp"]["specs"]
    assert specs["decoder/blocks_0/feed_forward/hidden/kernel"] == "P(None, 'fsdp')"
    assert specs["decoder/blocks_0/self_attention/query/kernel"] == (
        "P('fsdp', None, None)"
    )  # [d 32, h 4, e 8]: the largest axis
    assert specs["decoder/blocks_0/norms_0/scale"] == "P()"  # 32 < 256 elements


def test_tensor_parallel_splits_heads_and_hidden_units(eight_devices):
    specs = eight_devices["gpt-tensor"]["specs"]
    block = "decoder/blocks_0/"
    assert specs[block + "self_attention/query/kernel"] == "P(None, 'tensor', None)"
    assert specs[block + "self_attention/out/kernel"] == "P('tensor', None, None)"
    assert specs[block + "feed_forward/hidden/kernel"] == "P(None, 'tensor')"
    assert specs[block + "feed_forward/output/kernel"] == "P('tensor', None)"
    assert specs["embedding/embedding"] == "P()"


@pytest.mark.parametrize("sharded", [False, True])
def test_accumulating_k_micro_batches_equals_one_step_on_the_k_times_batch(eight_devices, sharded):
    difference = eight_devices["accumulation"] if sharded else accumulation(False)
    assert difference < 1e-6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_through_jax_distributed_agree_with_one(one_device):
    address = f"localhost:{free_port()}"
    processes = [
        subprocess.Popen(
            [sys.executable, DRIVER, "distributed"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "JAX_COORDINATOR_ADDRESS": address,
                "JAX_NUM_PROCESSES": "2",
                "JAX_PROCESS_ID": str(index),
                "JAX_PLATFORMS": "cpu",
            },
        )
        for index in range(2)
    ]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        results.append(
            result_of(subprocess.CompletedProcess(process.args, process.returncode, out, err))
        )
    assert [r["process"] for r in results] == [0, 1]
    assert all(r["devices"] == 2 for r in results)  # one CPU device per process, one mesh
    for r in results:
        np.testing.assert_allclose(r["losses"], one_device["mlp"]["losses"], **TOLERANCE)


@pytest.mark.parametrize(
    ("config", "devices", "message"),
    [
        (ShardingConfig(data=3), 8, r"data 3 x fsdp 1 x tensor 1 = 3 devices, but 8 are present"),
        (ShardingConfig(fsdp=3), 8, r"8 devices do not split into fsdp x tensor = 3"),
        (ShardingConfig(data=-1, fsdp=-1), 8, r"one of them may be -1"),
    ],
)
def test_a_mesh_that_does_not_fit_the_devices_is_refused(config, devices, message):
    with pytest.raises(ConfigError, match=message):
        config.shape(devices)


def test_the_mesh_shape_fills_the_free_axis():
    assert ShardingConfig().shape(8) == (8, 1, 1)
    assert ShardingConfig(data=2, fsdp=-1, tensor=2).shape(8) == (2, 2, 2)
