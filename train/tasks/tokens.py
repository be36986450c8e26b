"""Next-token language modelling on a built corpus: memory-mapped token files, never read whole.

Legend: b batch, t time (tokens), v vocabulary. `python -m train build-corpus DIR TASK` writes
the corpus (train/tokenize.py); this task opens each split's .bin read-only with np.memmap, so
a corpus larger than memory trains as well as a small one: a batch reads its b windows of
t + 1 tokens and nothing else. Its batches are TextFile's, in tokens instead of bytes: on a
corpus of the bytes tokenizer they are the `text` task's own, batch for batch.
"""

import dataclasses
import functools
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from arch.errors import ConfigError
from train import losses
from train.tasks.base import SPLITS, Batch, DataPosition, Split, StreamTask, require_at_least
from train.tasks.language import LanguageModelLoss, evaluation_offsets, training_offsets
from train.tokenize import Tokenizer, tokenizer_from_json

BUILD = "python -m train build-corpus DIR text --task.path FILE"


class TokenWindows:
    """The windows tokens[starts[i] : starts[i] + length] as an int32 array [n, t] that reads
    on demand: indexing reads only the rows asked for (what each device's callback asks for in
    `train.sharding.shard_batch`, so that no process of a multi-host run reads the whole global
    batch), and np.asarray reads them all (the one-device path)."""

    def __init__(self, tokens: Any, starts: np.ndarray, length: int) -> None:
        self.tokens, self.starts, self.length = tokens, np.asarray(starts), length
        self.shape = (len(self.starts), length)
        self.dtype = np.dtype(np.int32)

    @property
    def ndim(self) -> int:
        return 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        if any(i is Ellipsis or i is None for i in index):  # beyond basic rows-then-steps
            return np.asarray(self)[index]
        starts = self.starts[index[0]]  # [r] for a slice or array of rows, () for one row
        steps = np.asarray(starts)[..., None] + np.arange(self.length)  # [r, t] or [t]
        rows = self.tokens[steps].astype(np.int32)
        return rows[(slice(None),) * np.ndim(starts) + index[1:]]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        rows = self[:]
        return rows if dtype is None else rows.astype(dtype)

    def __repr__(self) -> str:
        return f"TokenWindows(shape={self.shape}, dtype=int32)"


@dataclasses.dataclass(frozen=True)
class TokenCorpus(LanguageModelLoss, StreamTask):
    """Language model on a built token corpus (--task.data-dir; see `build-corpus`).

    Windows of length + 1 tokens (inputs and the next-token targets) start at random offsets
    of train.bin, drawn by a generator seeded with (seed, epoch, index), as TextFile draws
    them. Each evaluation split (and "train") is up to `num_eval` non-overlapping windows of
    its file, evenly spaced. Besides the loss, accuracy, perplexity and "bits_per_char" (bits
    per token: the name LanguageModelLoss gives it), it reports "bytes_per_token" (the mean
    bytes the scored targets stand for) and "bits_per_byte" = the scored tokens' nats / their
    bytes / ln 2, exact and comparable across tokenizers.
    """

    data_dir: str = ""
    """A directory `python -m train build-corpus` wrote."""
    batch_size: int = 32
    seed: int = 0
    length: int = 128
    num_eval: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, length=1, num_eval=1)

    @functools.cached_property
    def meta(self) -> dict[str, Any]:
        """meta.json of the corpus (the build writes it last: without it there is none)."""
        if not self.data_dir:
            raise ConfigError(
                f"task tokens needs a built corpus: run `{BUILD}`, then pass --task.data-dir DIR"
            )
        path = os.path.join(self.data_dir, "meta.json")
        if not os.path.isdir(self.data_dir):
            raise ConfigError(
                f"--task.data-dir {self.data_dir} does not exist; build the corpus with `{BUILD}`"
            )
        if not os.path.isfile(path):
            raise ConfigError(
                f"--task.data-dir {self.data_dir} holds no meta.json: it is not a built corpus "
                f"(or its build did not finish); build one with `{BUILD}`"
            )
        try:
            with open(path) as f:
                meta = json.load(f)
            counts = [int(meta["splits"][split]["tokens"]) for split in SPLITS]
            known = int(meta["vocab_size"]) > 0 and np.dtype(meta["dtype"]).kind == "u"
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"{path} is not a corpus's meta.json ({error!r})") from None
        if not known or min(counts) < 0:
            raise ConfigError(f"{path} is not a corpus's meta.json (its vocab_size or dtype)")
        return meta

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def tokenizer_path(self) -> str:
        return os.path.join(self.data_dir, "tokenizer.json")

    @functools.cached_property
    def tokenizer_json(self) -> str:
        """tokenizer.json's text as the build wrote it, parsed and checked against meta.json."""
        path = self.tokenizer_path
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as error:
            raise ConfigError(
                f"cannot read {path} ({error.strerror}): build the corpus again with `{BUILD}`"
            ) from None
        vocab = tokenizer_from_json(text, path).vocab_size
        if vocab != self.vocab_size:
            raise ConfigError(
                f"{path} has {vocab} tokens, but meta.json says {self.vocab_size}: the corpus "
                "is damaged; build it again"
            )
        return text

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        """The corpus's tokenizer: the text codec of prompts and samples."""
        return tokenizer_from_json(self.tokenizer_json, self.tokenizer_path)

    @functools.cached_property
    def token_bytes(self) -> np.ndarray:
        """[v] int32: the bytes each token id stands for."""
        return self.tokenizer.token_bytes.astype(np.int32)

    def run_files(self) -> dict[str, str]:
        """Files a run on this task keeps in its run directory (train.decide.begin writes
        them): the tokenizer, so that the run decodes its samples whatever becomes of the
        corpus. Read (and checked) when the run is prepared, before anything is written."""
        return {"tokenizer.json": self.tokenizer_json}

    @functools.cached_property
    def tokens(self) -> dict[str, np.memmap]:
        """{split: the split's token ids [n]}, memory-mapped read-only."""
        dtype, files = np.dtype(self.meta["dtype"]), {}
        for split in SPLITS:
            path = os.path.join(self.data_dir, f"{split}.bin")
            count = int(self.meta["splits"][split]["tokens"])
            size = os.path.getsize(path) if os.path.isfile(path) else None
            if size != count * dtype.itemsize:
                raise ConfigError(
                    f"{path} should hold {count} {dtype.name} tokens ({count * dtype.itemsize} "
                    f"bytes) but {'is missing' if size is None else f'has {size} bytes'}: the "
                    "corpus is damaged; build it again"
                )
            if count < self.length + 1:
                raise ConfigError(
                    f"{path} holds {count} tokens, fewer than one window of task.length + 1 = "
                    f"{self.length + 1}; use a smaller --task.length or a larger corpus"
                )
            files[split] = np.memmap(path, dtype, mode="r", shape=(count,))
        return files

    def windows(self, split: str, offsets: np.ndarray) -> Split:
        """The windows of `split` starting at `offsets`, read into memory."""
        steps = offsets[:, None] + np.arange(self.length + 1)  # [n, t + 1]
        tokens = self.tokens[split][steps].astype(np.int32)
        return tokens[:, :-1], tokens[:, 1:], np.ones((len(offsets), self.length), np.float32)

    def load(self) -> dict[str, Split]:
        data = {}
        for split in SPLITS:
            offsets = evaluation_offsets(len(self.tokens[split]), self.length, self.num_eval)
            data[split] = self.windows(split, offsets)
        return data

    def train_batch(self, position: DataPosition) -> Batch:
        """Inputs and targets are TokenWindows: they read the memory map when indexed."""
        train = self.tokens["train"]
        offsets = training_offsets(self, position, len(train))
        return {
            "inputs": TokenWindows(train, offsets, self.length),
            "targets": TokenWindows(train, offsets + 1, self.length),
            "mask": np.ones((self.batch_size, self.length), np.float32),
        }

    def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Adds bytes_per_token, a mean over the scored targets like the loss: averaged with
        the same weights (real positions) it is their total bytes over their count, so the
        mean loss over it is the total nats over the total bytes."""
        loss, metrics = super().loss(outputs, batch)
        target_bytes = jnp.asarray(self.token_bytes)[batch["targets"]]  # [b, t]
        return loss, {**metrics, "bytes_per_token": losses.masked_mean(target_bytes, batch["mask"])}

    def finalize_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        metrics = super().finalize_metrics(metrics)
        bits = metrics["loss"] / metrics["bytes_per_token"] / math.log(2)
        return {**metrics, "bits_per_byte": bits}
