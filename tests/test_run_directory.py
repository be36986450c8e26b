"""A run directory is never damaged (train/rundir.py, train/checkpoint.py, train/loop.py): a
refused or impossible resume leaves it byte for byte as it was; one process holds it at a
time; a full disk, a damaged checkpoint, a signal at any moment and non-finite updates each end
in one line that says what happened and what was kept."""

import dataclasses
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from arch.errors import ConfigError
from train.checkpoint import CheckpointConfig
from train.guards import NonFiniteError
from train.loop import RunConfig, fit
from train.optim import OptimConfig
from train.rundir import RunLock, StorageError, holder_pid

sys.path.insert(0, os.path.dirname(__file__))
from resume_driver import case, configs  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def snapshot(root) -> dict:
    """Every path under `root` with its type, size, modification time and content hash."""
    entries = {}
    for directory, names, files in os.walk(root):
        for name in names + files:
            path = os.path.join(directory, name)
            status = os.lstat(path)
            digest = None
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            relative = os.path.relpath(path, root)
            entries[relative] = (status.st_mode, status.st_size, status.st_mtime_ns, digest)
    status = os.lstat(root)
    entries["."] = (status.st_mode, status.st_mtime_ns)
    return entries


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "train", *args]


def cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(*args), capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kwargs
    )


def one_line_error(result: subprocess.CompletedProcess, code: int = 2) -> str:
    """The single 'error: ...' line a refusal prints, after checking the exit status."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


MLP_RUN = ["mlp", "digits", "--steps", "20", "--progress", "off", "--no-tensorboard"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run directory of the command line (two checkpoints, metrics, TensorBoard)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    result = cli(*MLP_RUN, "--eval-every", "10", "--tensorboard", "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.fixture
def copy_of(finished, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir, symlinks=True)
    return run_dir


def test_a_refused_resume_leaves_the_run_directory_as_it_was(copy_of):
    before = snapshot(copy_of)
    assert len((copy_of / "metrics.jsonl").read_text().splitlines()) == 4
    refused = cli(*MLP_RUN, "--eval-every", "10", "--optim.lr", "0.003", "--run-dir", str(copy_of))
    line = one_line_error(refused)
    assert "1 field differs: optim.lr: 0.001 -> 0.003" in line
    assert snapshot(copy_of) == before  # metrics, config.json, TensorBoard: all untouched


def test_a_forced_resume_with_other_shapes_is_refused_naming_the_parameters(copy_of):
    before = snapshot(copy_of)
    refused = cli(
        *MLP_RUN,
        *("--eval-every", "10", "--model.hidden-sizes", "64", "--checkpoint.resume", "force"),
        *("--run-dir", str(copy_of)),
    )
    line = one_line_error(refused)
    assert "params/hidden_0/kernel: (64, 128) saved, (64, 64) now" in line
    assert line.index("params/") < line.index("opt_state/")  # the parameters are named first
    assert snapshot(copy_of) == before
    assert not any(name.startswith("damaged") for name in os.listdir(copy_of))


def test_every_optimizer_configuration_resumes_past_the_shape_check(tmp_path):
    """The shape check compares orbax's metadata with the state's own tree: any naming slip
    between the two would refuse a legitimate resume."""
    model, task = case("mlp")
    _, run = configs(str(tmp_path), False)
    variants = [
        OptimConfig(name="sgd", lr=0.1),
        OptimConfig(name="momentum", nesterov=True, clip_norm=1.0),
        OptimConfig(name="adamw", weight_decay=0.1, accumulate=2, schedule="cosine"),
        OptimConfig(freeze=("hidden_0",), lr_scale=(("head", 0.5),), skip_non_finite=True),
    ]
    for index, optim in enumerate(variants):
        quiet = dataclasses.replace(run, run_dir=str(tmp_path / str(index)), steps=10)
        fit(model, task, optim, quiet)
        longer = CheckpointConfig(every=10, resume="force")  # run.steps differs: 10 -> 12
        resumed = fit(model, task, optim, dataclasses.replace(quiet, steps=12, checkpoint=longer))
        assert resumed.summary["resumed_from"] == 10


def test_every_checkpoint_unreadable_is_refused_and_nothing_moved(copy_of):
    for root, _, files in os.walk(copy_of / "checkpoints"):
        for file in files:
            if "state" in root:
                with open(os.path.join(root, file), "wb") as f:
                    f.write(b"garbage")
    before = snapshot(copy_of)
    refused = cli(*MLP_RUN, "--eval-every", "10", "--run-dir", str(copy_of))
    line = one_line_error(refused)
    assert "no checkpoint in" in line and "can be read" in line and "nothing was changed" in line
    assert "step 20:" in line and "step 10:" in line and "bound method" not in line
    assert snapshot(copy_of) == before


def test_a_damaged_checkpoint_is_set_aside_beside_an_earlier_one_of_its_step(copy_of, capsys):
    (copy_of / "damaged-checkpoint-20").mkdir()
    (copy_of / "damaged-checkpoint-20" / "earlier").write_text("kept")
    for root, _, files in os.walk(copy_of / "checkpoints" / "20" / "state"):
        for file in files:
            with open(os.path.join(root, file), "wb") as f:
                f.write(b"garbage")
    model, task = case("mlp")
    resumed = cli(*MLP_RUN, "--eval-every", "10", "--progress", "lines", "--run-dir", str(copy_of))
    assert resumed.returncode == 0, resumed.stderr
    message = next(line for line in resumed.stdout.splitlines() if "cannot be read" in line)
    assert "bound method" not in message and "checkpoint at step 20 cannot be read (" in message
    assert "moved to" in message and message.endswith(
        "damaged-checkpoint-20.2, trying the previous one"
    )
    assert (copy_of / "damaged-checkpoint-20" / "earlier").read_text() == "kept"
    assert (copy_of / "damaged-checkpoint-20.2").is_dir()
    assert "resuming from the checkpoint at step 10" in resumed.stdout


SLOW_BATCHES = textwrap.dedent("""
    import runpy, sys, time
    from train.tasks import TASKS
    digits = TASKS["digits"]
    original = digits.train_batch
    def train_batch(self, position):
        time.sleep(0.05)  # 200 steps take 10 s or more: long enough to be disturbed
        return original(self, position)
    digits.train_batch = train_batch
    sys.argv = ["train", *sys.argv[1:]]
    runpy.run_module("train", run_name="__main__")
""")


def test_a_second_process_on_a_held_run_directory_exits_2_naming_the_holder(tmp_path):
    run_dir = tmp_path / "run"
    args = [*MLP_RUN, "--steps", "200", "--log-every", "10", "--run-dir", str(run_dir)]
    first = subprocess.Popen(
        [sys.executable, "-c", SLOW_BATCHES, *args, "--progress", "lines"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        for line in first.stdout:  # wait until it trains: it holds the lock by then
            if line.startswith("step "):
                break
        line = one_line_error(cli(*args))  # the same command, so only the lock can refuse it
        assert f"is in use by process {first.pid}" in line
        rest, errors = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, errors
    records = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(10, 201, 10))
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 200


def test_a_restored_state_lowers_to_the_fresh_states_program(tmp_path):
    """Else a resumed run misses the compilation cache and compiles its train step again."""
    from train.checkpoint import Checkpoints
    from train.optim import make_optimizer
    from train.step import init_state, make_train_step

    model, task = case("transformer")
    optim, run = configs(str(tmp_path), False)
    fit(model, task, optim, run)
    model = model.clone(vocab_size=task.vocab_size, num_outputs=task.vocab_size)
    tx = make_optimizer(optim, run.steps)
    batch = task.train_batch(task.position_after(0))
    fresh = init_state(model, tx, batch["inputs"], run.seed)
    checkpoints = Checkpoints(str(tmp_path), run.checkpoint)
    restored = checkpoints.restore(fresh).state
    checkpoints.close()
    step = make_train_step(model, task, tx)
    assert step.lower(fresh, batch).as_text() == step.lower(restored, batch).as_text()


def test_the_lock_dies_with_its_holder(tmp_path):
    run_dir = str(tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from train.rundir import RunLock
            with RunLock({run_dir!r}):
                print("held", flush=True)
                time.sleep(300)
        """)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    assert holder_pid(run_dir) == holder.pid
    with pytest.raises(ConfigError, match=f"in use by process {holder.pid}"):
        RunLock(run_dir).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with RunLock(run_dir):  # no stale lock after a SIGKILL
        assert holder_pid(run_dir) == os.getpid()
    assert os.listdir(run_dir) == []  # locking wrote nothing into the directory


@pytest.mark.parametrize(
    "run_dir, words",
    [("FILE", "is a file, not a directory"), ("/proc/lineage/run", "cannot be used as a run")],
)
def test_a_run_directory_that_cannot_be_one_is_a_one_line_error(tmp_path, run_dir, words):
    if run_dir == "FILE":
        run_dir = str(tmp_path / "file")
        open(run_dir, "w").close()
    line = one_line_error(cli(*MLP_RUN, "--run-dir", run_dir, timeout=120))
    assert words in line


def test_an_empty_run_directory_name_is_refused():
    with pytest.raises(ConfigError, match="run_dir is empty"):
        RunConfig(run_dir="")
    line = one_line_error(cli(*MLP_RUN, "--run-dir", "", timeout=120))
    assert "run_dir is empty" in line


def test_a_misspelt_best_metric_is_refused_before_compiling(tmp_path):
    run_dir = tmp_path / "run"
    line = one_line_error(
        cli(*MLP_RUN, "--checkpoint.best-metric", "acuracy", "--run-dir", str(run_dir))
    )
    assert "'acuracy' is not a validation metric of Digits" in line and "accuracy" in line
    assert not run_dir.exists()


def test_an_update_that_overflows_the_parameters_is_skipped_though_the_gradients_are_finite():
    """optax.apply_if_finite looks at the gradients only: an update scaled past float32's range
    (1e30 * 1e30) from finite gradients would be applied and the parameters become infinite."""
    import jax
    import optax

    from train.step import init_state, train_step_function

    model, task = case("mlp")
    tx = optax.chain(optax.scale(1e30), optax.scale(1e30))
    batch = task.train_batch(task.position_after(0))
    state = init_state(model.clone(num_outputs=10), tx, batch["inputs"], seed=0)
    step = jax.jit(train_step_function(model.clone(num_outputs=10), task, tx, True))
    after, metrics = step(state, batch)
    assert np.isfinite(metrics["grad_norm"]) and float(metrics["skipped"]) == 1.0
    for kept, before in zip(
        jax.tree.leaves(after.params), jax.tree.leaves(state.params), strict=True
    ):
        np.testing.assert_array_equal(kept, before)
    assert int(after.step) == 1 and float(metrics["update_norm"]) == 0.0


def test_skipping_non_finite_updates_counts_what_it_skipped(tmp_path):
    """SGD at lr 1e30: step 1 moves the parameters to ~1e30 (finite), every later loss is
    infinite. The stop must count the skipped updates truly."""
    model, task = case("mlp")
    optim = OptimConfig(name="sgd", lr=1e30, skip_non_finite=True, max_skipped=3)
    run = RunConfig(
        steps=20, log_every=2, eval_every=10, progress="off", tensorboard=False,
        compilation_cache=False, run_dir=str(tmp_path / "run"),
    )  # fmt: skip
    with pytest.raises(NonFiniteError, match=r"4 updates in a row were non-finite and skipped "
                       r"\(steps 2-5, more than --optim.max-skipped 3") as error:  # fmt: skip
        fit(model, task, optim, run)
    records = error.value.history
    assert [(r["step"], r["skipped"]) for r in records if r["split"] == "train"] == [
        (2, 1.0), (4, 2.0),
    ]  # fmt: skip


def test_a_full_disk_during_a_save_is_one_message_naming_what_was_kept(tmp_path):
    """The OSError is planted where orbax commits a save in its background thread (the step
    of 20): the message names the step, the path and the complete checkpoint of step 10."""
    run_dir = tmp_path / "run"
    plant = textwrap.dedent("""
        import errno, os, runpy, sys
        from orbax.checkpoint._src.path import atomicity
        original = atomicity.AtomicRenameTemporaryPath.finalize
        async def finalize(self):
            if os.path.basename(str(self._final_path)) == "20":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self._final_path))
            return await original(self)
        atomicity.AtomicRenameTemporaryPath.finalize = finalize
        sys.argv = ["train", *sys.argv[1:]]
        runpy.run_module("train", run_name="__main__")
    """)
    args = [*MLP_RUN, "--steps", "40", "--eval-every", "10", "--run-dir", str(run_dir)]
    result = subprocess.run(
        [sys.executable, "-c", plant, *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    line = one_line_error(result, code=1)
    assert "could not write the checkpoint of step 20" in line and "No space left on device" in line
    assert f"the checkpoint at step 10 in {run_dir}/checkpoints is complete and kept" in line
    assert "10" in os.listdir(run_dir / "checkpoints")
    resumed = cli(*args)  # the disk has room again: it resumes from what was kept
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from"] == 10 and summary["steps"] == 40


def test_a_real_full_disk_is_one_line(tmp_path):
    """A 300 KB tmpfs: the first save (about 450 KB of a 38k-parameter MLP and its Adam state)
    cannot be written. Needs root and mount(8); skipped where a tmpfs cannot be mounted."""
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(small)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        args = [*MLP_RUN, "--steps", "60", "--eval-every", "20", "--model.hidden-sizes", "512"]
        line = one_line_error(cli(*args, "--run-dir", str(small / "run")), code=1)
    finally:
        subprocess.run(["umount", str(small)], check=True)
    assert "could not write the checkpoint of step 20" in line
    assert "(No space left on device); no complete checkpoint exists" in line


def test_a_metrics_file_that_cannot_be_written_is_storage_error(tmp_path):
    from train.logger import MetricsLogger

    class FullDisk:
        name = str(tmp_path / "run" / "metrics.jsonl")

        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def close(self):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    os.makedirs(tmp_path / "run")
    logger = MetricsLogger(str(tmp_path / "run"), 10, "off", tensorboard=False)
    logger.jsonl.close()
    logger.jsonl = FullDisk()
    with pytest.raises(StorageError, match=r"metrics.jsonl at step 3: No space left on device"):
        logger.log(3, "train", {"loss": 1.0})
    logger.close()  # a full disk was reported when it happened: closing raises nothing more


@pytest.mark.parametrize("delay", [0.3, 1.5, 3.0, 4.5, 6.0])
def test_ctrl_c_at_any_moment_stops_with_130_and_one_line(tmp_path, delay):
    """SIGINT while importing, parsing, checking, compiling or training (200,000 steps take
    minutes: 2000 once finished inside 6 s on CI, and the signal met the teardown)."""
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        command(*MLP_RUN, "--steps", "200000", "--run-dir", str(run_dir)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 130, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("SIGINT received"), err
    assert "Traceback" not in out + err


def test_ctrl_c_after_the_summary_is_one_line_or_nothing_never_a_silent_kill(tmp_path):
    """The interpreter's teardown (over 0.5 s with XLA loaded) put the default handlers back,
    and a SIGINT then killed the process with no word (exit -2); now it ends 130 with the one
    line, or 0 if the process was already gone."""
    process = subprocess.Popen(
        command(*MLP_RUN, "--run-dir", str(tmp_path / "run")),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    for line in process.stdout:
        if "run directory:" in line:
            break
    time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert process.returncode in (0, 130), (process.returncode, err)
    expected = ["SIGINT received after the run ended (its files are complete): stopped"]
    assert err.strip().splitlines() == (expected if process.returncode else []), err
