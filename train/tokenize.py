"""Tokenizers for text corpora, and `build-corpus`: a text task's regions as token files.

Two tokenizers share one small interface (`Tokenizer`), so that callers never branch on the
kind: "bytes" (a token is one UTF-8 byte, vocabulary 256: what the `text` task models) and
"bpe", a byte-level BPE (GPT-2's scheme, through Hugging Face `tokenizers`) trained on the
train region only, so that nothing of the validation and test text shapes the vocabulary.
Both are lossless on any bytes, not only on valid UTF-8: BPE encodes the runs of valid UTF-8
with its merges and every stray byte (a region cut inside a character, a file that is not
UTF-8) as its single-byte token, which a byte-level vocabulary always holds.

A built corpus (nanoGPT's and Levanter's layout) is a directory of train.bin, validation.bin
and test.bin (each region's token ids, flat, uint16 when the vocabulary fits, else uint32),
tokenizer.json (Hugging Face's format for BPE; {"kind": "bytes"} for bytes) and meta.json,
written last: a directory without it is not a corpus (train/tasks/tokens.py reads it).
"""

import dataclasses
import itertools
import json
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar, Protocol

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from arch.errors import ConfigError
from train.rundir import StorageError, atomic_file, os_reason, write_atomically
from train.tasks.base import SPLITS

BYTES = 256
"""The byte alphabet: every byte-level vocabulary holds these 256 tokens."""
DEFAULT_VOCAB = 4096
"""build-corpus's BPE vocabulary unless --vocab-size says otherwise."""
CHUNK_CHARS = 1 << 20
"""Text is encoded in pieces of about this many characters (a whole region's encoding would
hold ~100 bytes of offsets and strings per token in `tokenizers` at once)."""
STRAY = re.compile("([\udc80-\udcff]+)")
"""Bytes that are not valid UTF-8, as `surrogateescape` decodes them (U+DC80 + byte)."""
SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)|(?<=[A-Za-z])(?= [A-Za-z])")
"""Places where GPT-2's pre-tokenizer always ends a piece whatever follows, so that the text
cut there encodes to the ids of the whole: after a newline between two non-spaces (Python's
whitespace includes Unicode's, so neither side is a space to the tokenizer either; a space
before the newline would join it at a cut), and between a letter and " letter"."""


class Tokenizer(Protocol):
    """What corpora, tasks and `sample` use of a tokenizer."""

    kind: str
    """"bytes" or "bpe" (meta.json's tokenizer)."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def token_bytes(self) -> np.ndarray:
        """[v] int64: how many bytes each token id stands for (for bits per byte)."""
        ...

    def encode(self, text: str) -> list[int]: ...

    def encode_stream(self, data: bytes) -> Iterator[np.ndarray]:
        """The ids of `data` (any bytes) in consecutive pieces, int64."""
        ...

    def decode(self, ids: Iterable[int]) -> str:
        """The text of the ids' bytes (a partial character decodes to U+FFFD)."""
        ...

    def to_json(self) -> str: ...


def encode_bytes(tokenizer: Tokenizer, data: bytes) -> np.ndarray:
    """All the ids of `data` as one array [n] int64."""
    pieces = list(tokenizer.encode_stream(data))
    return np.concatenate(pieces) if pieces else np.zeros(0, np.int64)


@dataclasses.dataclass(frozen=True)
class ByteTokenizer:
    """A token is one byte of the UTF-8 text: the identity on bytes, vocabulary 256."""

    kind: ClassVar[str] = "bytes"

    @property
    def vocab_size(self) -> int:
        return BYTES

    @property
    def token_bytes(self) -> np.ndarray:
        return np.ones(BYTES, np.int64)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8", errors="surrogateescape"))

    def encode_stream(self, data: bytes) -> Iterator[np.ndarray]:
        view = np.frombuffer(data, np.uint8)
        for start in range(0, len(view), CHUNK_CHARS):
            yield view[start : start + CHUNK_CHARS].astype(np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(list(ids)).decode("utf-8", errors="replace")

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "vocab_size": BYTES})


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map of the 256 bytes to printable characters (the ByteLevel alphabet, in which
    the tokens of a byte-level BPE are spelled): printable Latin-1 bytes stand for
    themselves, the others for 256, 257, ... in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars = {b: chr(b) for b in printable}
    others = [b for b in range(BYTES) if b not in chars]
    return {**chars, **{b: chr(BYTES + i) for i, b in enumerate(others)}}


def text_chunks(text: str, size: int = CHUNK_CHARS) -> Iterator[str]:
    """`text` in consecutive pieces of at least `size` characters (the last may be shorter),
    each cut at a SAFE_CUT, so that the pieces encode to the ids of the whole."""
    start = 0
    while len(text) - start > size:
        cut = SAFE_CUT.search(text, start + size)
        if cut is None:
            break
        yield text[start : cut.start()]
        start = cut.start()
    if start < len(text):
        yield text[start:]


def utf8_runs(data: bytes) -> list[str]:
    """`data` as alternating runs: valid UTF-8 text (even indices, possibly empty) and stray
    bytes (odd indices, each byte b as chr(0xDC00 + b))."""
    return STRAY.split(data.decode("utf-8", errors="surrogateescape"))


class BPETokenizer:
    """A byte-level BPE held as Hugging Face's `tokenizers.Tokenizer` (its JSON is
    tokenizer.json). Decoding joins the tokens' bytes, so it is exact for any ids."""

    kind = "bpe"

    def __init__(self, model: tokenizers.Tokenizer, where: str = "the tokenizer") -> None:
        self.model = model
        decoder = {c: b for b, c in bytes_to_unicode().items()}
        self.pieces: list[bytes] = []
        for i in range(model.get_vocab_size()):
            token = model.id_to_token(i)
            if token is None or not set(token) <= decoder.keys():
                raise ConfigError(f"{where} is not a byte-level BPE (token id {i}: {token!r})")
            self.pieces.append(bytes(decoder[c] for c in token))
        byte_ids = {piece[0]: i for i, piece in enumerate(self.pieces) if len(piece) == 1}
        if len(byte_ids) < BYTES:
            raise ConfigError(f"{where} lacks {BYTES - len(byte_ids)} of the 256 byte tokens")
        self.byte_ids = np.array([byte_ids[b] for b in range(BYTES)], np.int64)

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    @property
    def token_bytes(self) -> np.ndarray:
        return np.array([len(piece) for piece in self.pieces], np.int64)

    def encode(self, text: str) -> list[int]:
        return encode_bytes(self, text.encode("utf-8", errors="surrogateescape")).tolist()

    def encode_stream(self, data: bytes, batch: int = 64) -> Iterator[np.ndarray]:
        for i, run in enumerate(utf8_runs(data)):
            if i % 2:  # stray bytes: their single-byte tokens
                yield self.byte_ids[[ord(c) - 0xDC00 for c in run]]
                continue
            chunks = text_chunks(run)
            while block := list(itertools.islice(chunks, batch)):
                for encoding in self.model.encode_batch(block, add_special_tokens=False):
                    yield np.array(encoding.ids, np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")

    def to_json(self) -> str:
        return self.model.to_str()


def check_vocab_size(vocab_size: int) -> None:
    if vocab_size <= BYTES:
        raise ConfigError(
            f"--vocab-size must be > {BYTES} (the {BYTES} byte tokens and at least one merge), "
            f"got {vocab_size}; --tokenizer bytes is the vocabulary of {BYTES}"
        )


def train_bpe(data: bytes, vocab_size: int) -> BPETokenizer:
    """A byte-level BPE of at most `vocab_size` tokens (the 256 bytes, then merges in the
    order of their counts; a text with fewer distinct pairs gives fewer) trained on `data`."""
    check_vocab_size(vocab_size)
    model = tokenizers.Tokenizer(models.BPE())
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    texts = (chunk for run in utf8_runs(data)[0::2] for chunk in text_chunks(run))
    model.train_from_iterator(texts, trainer)
    return BPETokenizer(model)


def tokenizer_from_json(text: str, where: str) -> Tokenizer:
    """The tokenizer a tokenizer.json holds (`where` names it in errors)."""
    try:
        data = json.loads(text)
    except ValueError as error:
        raise ConfigError(f"{where} cannot be parsed: {error}") from None
    if isinstance(data, dict) and data.get("kind") == "bytes":
        return ByteTokenizer()
    if not isinstance(data, dict) or data.get("model", {}).get("type") != "BPE":
        raise ConfigError(f"{where} is neither a bytes tokenizer nor a Hugging Face BPE")
    return BPETokenizer(tokenizers.Tokenizer.from_str(text), where)


def read_tokenizer(path: str) -> Tokenizer:
    try:
        with open(path, encoding="utf-8") as f:
            return tokenizer_from_json(f.read(), path)
    except OSError as error:
        raise ConfigError(f"cannot read the tokenizer {path}: {os_reason(error)}") from None


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def write_tokens(path: str, pieces: Iterable[np.ndarray], dtype: np.dtype) -> int:
    """The pieces' ids written flat to `path` as `dtype` through a temporary file and a
    rename (never a truncated file); how many. OSError becomes StorageError."""
    count = 0
    with atomic_file(path, "wb") as f:
        for piece in pieces:
            f.write(piece.astype(dtype).tobytes())
            count += len(piece)
    return count


def check_out_dir(out_dir: str) -> None:
    """Refuse a path that is a file or a directory that holds anything: a corpus is written
    into an empty (or new) directory only, so no earlier data is ever overwritten."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"build-corpus: {out_dir} is a file, not a directory; choose another")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise ConfigError(
            f"build-corpus: {out_dir} is not empty (it may hold a corpus); choose a new or "
            "empty directory, or delete it first"
        )


def build_corpus(
    out_dir: str, task: Any, tokenizer: str = "bpe", vocab_size: int | None = None
) -> dict:
    """Tokenise a text task's three regions into `out_dir` (see the module docstring): the
    tokenizer (BPE of at most `vocab_size` tokens, default DEFAULT_VOCAB; or bytes) is trained
    on the train region only. `task` offers `region_bytes(split)` and is a dataclass (TextFile
    and its subclasses). Returns meta.json's content."""
    check_out_dir(out_dir)
    if tokenizer not in ("bytes", "bpe"):
        raise ConfigError(f"--tokenizer must be bytes or bpe, got {tokenizer!r}")
    if tokenizer == "bytes" and vocab_size not in (None, BYTES):
        raise ConfigError(f"--vocab-size is BPE's: --tokenizer bytes has the {BYTES} byte tokens")
    vocab_size = DEFAULT_VOCAB if vocab_size is None else vocab_size
    if tokenizer == "bpe":
        check_vocab_size(vocab_size)
    regions = {split: task.region_bytes(split) for split in SPLITS}  # checks the task first
    if tokenizer == "bytes":
        codec: Tokenizer = ByteTokenizer()
    else:
        codec = train_bpe(regions["train"], vocab_size)
    dtype = token_dtype(codec.vocab_size)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as error:
        raise StorageError(f"cannot create {out_dir}: {os_reason(error)}") from None
    splits = {}
    for split, data in regions.items():
        path = os.path.join(out_dir, f"{split}.bin")
        count = write_tokens(path, codec.encode_stream(data), dtype)
        splits[split] = {"tokens": count, "bytes": len(data)}
    write_atomically(os.path.join(out_dir, "tokenizer.json"), codec.to_json())
    meta = {
        "tokenizer": codec.kind,
        "vocab_size": codec.vocab_size,
        "dtype": dtype.name,
        "splits": splits,
        "source": {"class": type(task).__name__, **dataclasses.asdict(task)},
    }
    write_atomically(os.path.join(out_dir, "meta.json"), json.dumps(meta, indent=2))
    return meta
