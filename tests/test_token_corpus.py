"""Task tokens (train/tasks/tokens.py) on corpora the tests build: on the bytes tokenizer its
memory-mapped batches and evaluation splits are the text task's own; a lazy batch reads only
the rows asked for (shard_batch never reads it whole); bits_per_byte is the scored nats over
their bytes; an interrupted run resumes to the uninterrupted one; the run keeps the tokenizer
and samples text through it; a missing or damaged corpus is one clear error."""

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import types

import jax
import numpy as np
import optax
import pytest
from helpers import cli_error
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from resume_driver import plant

from arch import MODELS
from arch.decoding import generate
from arch.errors import ConfigError
from train.checkpoint import CheckpointConfig
from train.decide import ConfigMismatchError
from train.guards import Preempted
from train.load import load_run, text_codec
from train.loop import RunConfig, evaluate, fit
from train.optim import OptimConfig
from train.sharding import host_batch, shard_batch
from train.step import init_state, make_eval_step
from train.tasks import DataPosition, MarkovLanguage, TextFile, TokenCorpus
from train.tasks.tokens import TokenWindows
from train.tokenize import ByteTokenizer, build_corpus
from train.validate import adapt_model

LENGTH, BATCH = 16, 8


@pytest.fixture(scope="module")
def byte_tasks(tmp_path_factory):
    """A 3 MB file of every byte value (no valid UTF-8 needed), as `text` and as `tokens` on
    the corpus of the bytes tokenizer: thousands of batches' worth."""
    root = tmp_path_factory.mktemp("bytes")
    path = root / "noise.bin"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 3_000_000, np.uint8).tobytes())
    text = TextFile(path=str(path), length=LENGTH, batch_size=BATCH, num_eval=8)
    build_corpus(str(root / "corpus"), text, "bytes")
    return text, TokenCorpus(str(root / "corpus"), batch_size=BATCH, length=LENGTH, num_eval=8)


@pytest.fixture(scope="module")
def bpe_task(tmp_path_factory):
    """`tokens` on a BPE corpus (300 tokens) of a file of words."""
    root = tmp_path_factory.mktemp("bpe")
    rng = np.random.default_rng(1)
    words = np.array(["the", "cat", "sat", "on", "mat", "héllo", "dog's", "ran", "\n", "日本"])
    path = root / "words.txt"
    path.write_text(" ".join(rng.choice(words, 40_000)), encoding="utf-8")
    build_corpus(str(root / "corpus"), TextFile(path=str(path), length=LENGTH), "bpe", 300)
    return TokenCorpus(str(root / "corpus"), batch_size=BATCH, length=LENGTH, num_eval=7)


def test_a_bytes_corpus_gives_the_text_tasks_batches_and_splits(byte_tasks):
    text, tokens = byte_tasks
    assert tokens.vocab_size == text.vocab_size == 256
    assert all(isinstance(m, np.memmap) and m.mode == "r" for m in tokens.tokens.values())
    for epoch, index in [(0, 0), (0, 1), (0, 4321), (2, 7)]:
        position = DataPosition(epoch, index)
        ours, theirs = tokens.train_batch(position), text.train_batch(position)
        assert isinstance(ours["inputs"], TokenWindows)
        for key in ("inputs", "targets", "mask"):
            np.testing.assert_array_equal(np.asarray(ours[key]), theirs[key])
            assert np.asarray(ours[key]).dtype == theirs[key].dtype
    for split in ("train", "validation", "test"):
        for ours, theirs in zip(tokens.data[split], text.data[split], strict=True):
            np.testing.assert_array_equal(ours, theirs)


class RecordingTokens:
    """A token array that records the positions every read asks for."""

    def __init__(self, tokens: np.ndarray):
        self.tokens, self.reads = tokens, []

    def __getitem__(self, index):
        self.reads.append(np.asarray(index))
        return self.tokens[index]


def test_indexing_a_lazy_batch_reads_only_those_rows(byte_tasks):
    _, tokens = byte_tasks
    full = np.asarray(tokens.train_batch(DataPosition(0, 3))["inputs"])
    lazy = tokens.train_batch(DataPosition(0, 3))["inputs"]
    recording = RecordingTokens(tokens.tokens["train"])
    windows = TokenWindows(recording, lazy.starts, LENGTH)
    np.testing.assert_array_equal(windows[2:5], full[2:5])
    (read,) = recording.reads
    np.testing.assert_array_equal(read, lazy.starts[2:5, None] + np.arange(LENGTH))
    np.testing.assert_array_equal(windows[1], full[1])
    np.testing.assert_array_equal(windows[(slice(4, 6), slice(3, 9))], full[4:6, 3:9])
    np.testing.assert_array_equal(windows[np.array([7, 0])], full[[7, 0]])
    assert windows.shape == full.shape == (BATCH, LENGTH) and windows.dtype == full.dtype


def test_shard_batch_places_a_lazy_batch_row_by_row(byte_tasks):
    _, tokens = byte_tasks

    class Unreadable(TokenWindows):
        def __array__(self, dtype=None, copy=None):
            raise AssertionError("read whole")

    lazy = tokens.train_batch(DataPosition(0, 9))
    recording = RecordingTokens(tokens.tokens["train"])
    batch = {**lazy, "inputs": Unreadable(recording, lazy["inputs"].starts, LENGTH)}
    sharding = NamedSharding(Mesh(np.array(jax.devices()[:1]), ("data",)), PartitionSpec("data"))
    placed = shard_batch(batch, sharding)
    np.testing.assert_array_equal(placed["inputs"], np.asarray(lazy["inputs"]))
    np.testing.assert_array_equal(placed["targets"], np.asarray(lazy["targets"]))
    assert sum(r.size for r in recording.reads) == BATCH * LENGTH  # every row once
    plain = host_batch(lazy)  # the one-device path: NumPy arrays, plain leaves untouched
    assert isinstance(plain["inputs"], np.ndarray) and plain["mask"] is lazy["mask"]


def fresh_state(task):
    model = adapt_model(MODELS["gpt"](num_layers=1, features=16, num_heads=2, max_len=LENGTH), task)
    state = init_state(model, optax.sgd(0.1), np.zeros((1, LENGTH), np.int32), 0)
    return model, state


def test_bits_per_byte_on_bytes_is_bits_per_token_and_the_text_tasks(byte_tasks):
    text, tokens = byte_tasks
    model, state = fresh_state(tokens)
    ours = evaluate(make_eval_step(model, tokens), state, tokens, "validation", 3)
    theirs = evaluate(make_eval_step(model, text), state, text, "validation", 3)
    assert ours["bytes_per_token"] == 1.0
    assert ours["bits_per_byte"] == pytest.approx(ours["bits_per_char"], rel=1e-6)
    assert ours["bits_per_byte"] == pytest.approx(theirs["bits_per_char"], rel=1e-6)


def test_bits_per_byte_on_bpe_is_the_scored_nats_over_their_bytes(bpe_task):
    task = bpe_task
    model, state = fresh_state(task)
    metrics = evaluate(make_eval_step(model, task), state, task, "test", 3)  # 7 = 3 + 3 + 1
    inputs, targets, _ = task.data["test"]
    logits = np.asarray(jax.jit(model.apply)(state.variables, inputs), np.float64)  # [n, t, v]
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nats = -np.take_along_axis(log_probs, targets[..., None], -1).sum()
    scored_bytes = task.token_bytes[targets].sum()
    assert scored_bytes > 1.5 * targets.size  # merged tokens: bytes and tokens differ
    assert metrics["bits_per_byte"] == pytest.approx(nats / scored_bytes / math.log(2), rel=1e-5)
    assert metrics["loss"] == pytest.approx(nats / targets.size, rel=1e-5)


# a run on tokens: resumed, its tokenizer kept, sampled as text

TIMING = ("examples_per_second",)


def run_config(run_dir) -> RunConfig:
    return RunConfig(
        steps=8, eval_every=4, log_every=2, run_dir=str(run_dir), progress="off",
        tensorboard=False, compilation_cache=False, eval_batch_size=4,
        checkpoint=CheckpointConfig(every=2, keep_last=2, keep_best=0),
    )  # fmt: skip


def train(task, run_dir):
    model = MODELS["gpt"](num_layers=1, features=16, num_heads=2, max_len=LENGTH)
    return fit(
        model, task, OptimConfig(name="adamw", lr=3e-3, schedule="cosine"), run_config(run_dir)
    )


def sigterm() -> None:
    """SIGTERM as the kernel delivers it to fit(): its handler called (a real signal would end
    a test worker that runs off the main thread, where fit() does not take the signals)."""
    handler = signal.getsignal(signal.SIGTERM)
    assert callable(handler), "fit() holds SIGTERM while it trains"
    handler(signal.SIGTERM, None)


@pytest.fixture(scope="module")
def runs(bpe_task, tmp_path_factory):
    """(uninterrupted, resumed after a SIGTERM at step 5, the resumed run's directory)."""
    straight = train(bpe_task, tmp_path_factory.mktemp("straight"))
    run_dir = tmp_path_factory.mktemp("interrupted")
    undo = plant(bpe_task, 5, lambda *_: sigterm())
    try:
        with pytest.raises(Preempted, match="stopped after step 5"):
            train(bpe_task, run_dir)
    finally:
        undo()
    return straight, train(bpe_task, run_dir), run_dir


def test_an_interrupted_run_resumes_to_the_uninterrupted_one(runs):
    straight, resumed, _ = runs
    assert resumed.summary["resumed_from"] == 5
    leaves = lambda result: jax.tree.leaves((result.state.params, result.state.opt_state))
    for a, b in zip(leaves(resumed), leaves(straight), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    history = lambda result: [
        {k: v for k, v in r.items() if k not in TIMING} for r in result.history
    ]
    assert history(resumed) == history(straight)
    assert resumed.summary["final"] == straight.summary["final"]
    assert {"bits_per_byte", "bytes_per_token"} <= set(resumed.summary["final"]["test"])


def test_the_run_keeps_the_tokenizer_and_samples_text_through_it(runs, bpe_task, capsys):
    from train.__main__ import main

    _, resumed, run_dir = runs
    kept = (run_dir / "tokenizer.json").read_text()
    with open(bpe_task.tokenizer_path) as f:
        assert kept == f.read()
    capsys.readouterr()
    record = main(["sample", str(run_dir), "--prompt", "the cat", "--num-tokens", "6",
                   "--temperature", "0"])  # fmt: skip
    tokenizer = bpe_task.tokenizer
    assert record["prompt"] == tokenizer.encode("the cat") and len(record["prompt"]) < 7
    loaded = load_run(str(run_dir))
    expected = generate(loaded.model, loaded.variables, np.array([record["prompt"]]), 6)
    assert record["tokens"] == np.asarray(expected)[0, len(record["prompt"]) :].tolist()
    assert capsys.readouterr().out == "the cat" + tokenizer.decode(record["tokens"]) + "\n"
    evaluated = main(["eval", str(run_dir)])
    assert evaluated["metrics"] == resumed.summary["final"]["test"]


def test_the_text_codec_is_the_runs_tokenizer_then_the_tasks(bpe_task, tmp_path):
    codec = lambda task: text_codec(types.SimpleNamespace(run_dir=str(tmp_path), task=task))
    assert codec(bpe_task).kind == "bpe"  # no copy in the run directory: the corpus's
    assert codec(TextFile()) == ByteTokenizer() and codec(MarkovLanguage()) is None
    (tmp_path / "tokenizer.json").write_text(ByteTokenizer().to_json())
    assert codec(bpe_task) == ByteTokenizer()


def test_a_run_whose_tokenizer_changed_refuses_to_resume(runs, bpe_task, tmp_path):
    _, _, run_dir = runs
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "tokenizer.json").write_text(ByteTokenizer().to_json())
    with pytest.raises(ConfigMismatchError, match="whose tokenizer.json differs from the task's"):
        train(bpe_task, copy)
    assert (copy / "tokenizer.json").read_text() == ByteTokenizer().to_json()  # untouched


# errors


def test_a_missing_or_damaged_corpus_is_one_clear_error(bpe_task, tmp_path, capsys):
    first = DataPosition()
    with pytest.raises(ConfigError, match="needs a built corpus: run `python -m train build-c"):
        TokenCorpus().train_batch(first)
    with pytest.raises(ConfigError, match="nowhere does not exist; build the corpus with"):
        TokenCorpus(str(tmp_path / "nowhere")).train_batch(first)
    with pytest.raises(ConfigError, match="holds no meta.json: it is not a built corpus"):
        TokenCorpus(str(tmp_path)).train_batch(first)
    damaged = tmp_path / "damaged"
    shutil.copytree(bpe_task.data_dir, damaged)
    with open(damaged / "train.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ConfigError, match=r"train.bin should hold \d+ uint16 tokens .* has 100"):
        TokenCorpus(str(damaged)).train_batch(first)
    meta = json.loads((damaged / "meta.json").read_text())
    (damaged / "meta.json").write_text(json.dumps({**meta, "vocab_size": 999}))
    with pytest.raises(
        ConfigError, match=f"has {bpe_task.vocab_size} tokens, but meta.json says 999"
    ):
        TokenCorpus(str(damaged)).run_files()
    error = cli_error(capsys, ["gpt", "tokens", "--task.data-dir", str(tmp_path / "no")])
    assert "build the corpus with `python -m train build-corpus" in error
    assert dataclasses.asdict(TokenCorpus())["data_dir"] == ""


FOUR_DEVICES = r"""
import json, sys
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from train.sharding import shard_batch
from train.tasks import DataPosition, TokenCorpus
from train.tasks.tokens import TokenWindows

class Recording:  # the memory map, recording which token positions each read asks for
    def __init__(self, tokens):
        self.tokens, self.reads = tokens, []
    def __getitem__(self, index):
        self.reads.append(np.asarray(index))
        return self.tokens[index]

task = TokenCorpus(sys.argv[1], batch_size=8, length=16, num_eval=8)
lazy = task.train_batch(DataPosition(0, 5))
recording = Recording(task.tokens["train"])
windows = TokenWindows(recording, lazy["inputs"].starts, 16)
mesh = Mesh(np.array(jax.devices()), ("data",))
placed = shard_batch({"inputs": windows}, NamedSharding(mesh, PartitionSpec("data")))
starts = [sorted(set((r[:, 0]).tolist())) for r in recording.reads]
print("RESULT " + json.dumps({
    "devices": jax.device_count(), "rows_per_read": [len(r) for r in recording.reads],
    "starts": starts, "all_starts": lazy["inputs"].starts.tolist(),
    "equal": bool(np.array_equal(np.asarray(placed["inputs"]), np.asarray(lazy["inputs"]))),
}))
"""


def test_on_four_devices_each_devices_callback_reads_only_its_own_rows(byte_tasks):
    _, tokens = byte_tasks
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    env["JAX_PLATFORMS"] = "cpu"
    process = subprocess.run(
        [sys.executable, "-c", FOUR_DEVICES, tokens.data_dir],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    line = next(x for x in process.stdout.splitlines() if x.startswith("RESULT "))
    found = json.loads(line[len("RESULT ") :])
    assert found["devices"] == 4 and found["equal"]
    assert found["rows_per_read"] == [2, 2, 2, 2]  # 8 rows over 4 devices: 2 each, once
    every = found["all_starts"]
    quarters = sorted(sorted(every[i : i + 2]) for i in range(0, 8, 2))
    assert sorted(found["starts"]) == quarters
