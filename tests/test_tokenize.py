"""Tokenizers and build-corpus (train/tokenize.py): byte-level BPE and bytes are lossless on any
bytes, BPE learns from the train region only, honours its vocabulary size and trains
deterministically; cutting text at SAFE_CUT changes no id; build-corpus writes each region's
exact tokens, meta.json and tokenizer.json, and refuses a non-empty directory."""

import dataclasses
import json
import re

import numpy as np
import pytest
from helpers import cli_error
from tokenizers import pre_tokenizers

from arch.errors import ConfigError
from train.tasks import TextFile
from train.tokenize import (
    ByteTokenizer,
    bytes_to_unicode,
    encode_bytes,
    read_tokenizer,
    text_chunks,
    tokenizer_from_json,
    train_bpe,
)

TRICKY = [
    "",
    " ",
    "a",
    "hello world",
    "  leading and trailing  ",
    "line one\nline two\n\n\nafter blank lines\n",
    "tabs\tand\r\nwindows line ends\r\n",
    "repeated     spaces and \n  \n indented",
    "héllo wörld, naïve café",
    "日本語のテキスト、中文文本",
    "emoji 😀🎉 and a ZWJ family 👨‍👩‍👧",
    "unicode spaces:\u00a0\u2028\u3000\x1c\x85 end",
    "nul \x00 and control \x07 bytes",
    "it's, they're, we'll 123 4567 !!! ???",
]


def words_text(n: int, seed: int = 0) -> str:
    """n random words (of 400, with Zipf-like frequencies; no Q, Z, X or V) and separators: a
    text with enough distinct pairs to fill a vocabulary of a few hundred merges."""
    letters, spell = list("abcdefghijklmnoprstuwy"), np.random.default_rng(0)  # the same words
    made = ["".join(spell.choice(letters, spell.integers(2, 8))) for _ in range(390)]
    rng = np.random.default_rng(seed)
    words = np.array(
        [*made, "the", "cat", "sat", "mat.", "héllo", "日本", "dog's", "42", "\n", "É"]
    )
    chosen = words[np.minimum(rng.zipf(1.3, n) - 1, len(words) - 1)]
    separators = rng.choice(np.array([" ", " ", " ", "  ", "\n", "\t"]), n)
    return "".join(w + s for w, s in zip(chosen, separators, strict=True))


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(words_text(20_000).encode(), 400)


def test_the_byte_map_spells_the_byte_level_alphabet():
    chars = bytes_to_unicode()
    assert sorted(chars) == list(range(256)) and len(set(chars.values())) == 256
    assert set(chars.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert chars[ord("a")] == "a" and chars[ord(" ")] == "Ġ" and chars[ord("\n")] == "Ċ"


@pytest.mark.parametrize("text", TRICKY)
def test_bpe_and_bytes_decode_what_they_encode(bpe, text):
    for tokenizer in (bpe, ByteTokenizer()):
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
        assert tokenizer.token_bytes[ids].sum() == len(text.encode())
        assert max(ids, default=0) < tokenizer.vocab_size


def test_bpe_merges_frequent_words_into_tokens(bpe):
    text = words_text(500, seed=9)
    assert len(bpe.encode(text)) < len(text.encode()) / 2


def test_bytes_are_the_utf8_bytes():
    tokenizer = ByteTokenizer()
    assert tokenizer.encode("aé😀") == list("aé😀".encode())
    assert tokenizer.vocab_size == 256 and np.all(tokenizer.token_bytes == 1)


def test_any_bytes_round_trip_even_where_they_are_not_utf8(bpe):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
    cut = "日本".encode()[:4] + b"the cat\xff\xfe sat" + "é".encode()[:1]  # cut inside characters
    for data in (noise, cut, b"", b"\x80"):
        for tokenizer in (bpe, ByteTokenizer()):
            ids = encode_bytes(tokenizer, data)
            assert b"".join(bytes_of(tokenizer, i) for i in ids) == data
            assert tokenizer.token_bytes[ids].sum() == len(data)


def bytes_of(tokenizer, token: int) -> bytes:
    return tokenizer.pieces[token] if hasattr(tokenizer, "pieces") else bytes([token])


def test_bpe_honours_the_vocabulary_size_and_refuses_one_below_the_bytes():
    data = words_text(20_000).encode()
    for size in (300, 420):
        assert train_bpe(data, size).vocab_size == size  # a text rich enough to fill it
    for size in (256, 100):
        with pytest.raises(ConfigError, match=r"--vocab-size must be > 256 .* got " + str(size)):
            train_bpe(data, size)


def test_bpe_training_is_deterministic():
    data = words_text(20_000, seed=3).encode()
    first = train_bpe(data, 500).to_json()
    assert all(train_bpe(data, 500).to_json() == first for _ in range(3))


def test_cutting_at_safe_places_encodes_as_the_whole(bpe):
    split_words = bpe.model.pre_tokenizer.pre_tokenize_str  # GPT-2's pieces, which BPE merges
    text = words_text(5000, seed=1) + "".join(TRICKY) + " \nA  \nB\n\nC x\u2028y"
    whole = bpe.model.encode(text).ids
    for size in (1, 10, 500):
        chunks = list(text_chunks(text, size))
        assert "".join(chunks) == text and len(chunks) > 10
        assert [i for c in chunks for i in bpe.model.encode(c).ids] == whole
    pieces = lambda chunks: [p for c in chunks for p, _ in split_words(c)]
    assert pieces(text_chunks(text, 10)) == pieces([text])
    naive = re.split(r"(?<=\n)", text)  # after every newline: " \n" then "A" splits otherwise
    assert pieces(naive) != pieces([text])


def test_tokenizers_save_and_load_as_one_json(bpe, tmp_path):
    text = "héllo the cat\n\n sat"
    for tokenizer in (bpe, ByteTokenizer()):
        path = tmp_path / f"{tokenizer.kind}.json"
        path.write_text(tokenizer.to_json())
        loaded = read_tokenizer(str(path))
        assert loaded.kind == tokenizer.kind and loaded.vocab_size == tokenizer.vocab_size
        assert loaded.encode(text) == tokenizer.encode(text)
    assert json.loads(ByteTokenizer().to_json()) == {"kind": "bytes", "vocab_size": 256}
    with pytest.raises(ConfigError, match="neither a bytes tokenizer nor a Hugging Face BPE"):
        tokenizer_from_json('{"model": {"type": "WordPiece"}}', "x.json")
    with pytest.raises(ConfigError, match="cannot be parsed"):
        tokenizer_from_json("{", "x.json")


# build-corpus


def write_regions(tmp_path, regions: dict[str, bytes]):
    """A text file whose train / validation / test regions are exactly `regions` (the
    fractions are chosen for their sizes); the TextFile options that cut it so."""
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"".join(regions.values()))
    size = path.stat().st_size
    fractions = {k: len(regions[k]) / size for k in ("validation", "test")}
    task = TextFile(path=str(path), length=16, validation_fraction=fractions["validation"],
                    test_fraction=fractions["test"])  # fmt: skip
    assert {s: task.region_bytes(s) for s in regions} == regions
    options = ["--task.path", str(path), "--task.length", "16"]
    options += ["--task.validation-fraction", str(fractions["validation"])]
    return task, options + ["--task.test-fraction", str(fractions["test"])]


@pytest.fixture
def regions() -> dict[str, bytes]:
    """The test region alone holds the word QZXV: no token of the BPE may be made from it."""
    text = words_text(30_000, seed=2)
    return {
        "train": text[:100_000].encode(),
        "validation": ("é" + text[100_000:110_000]).encode()[1:],  # starts inside a character
        "test": (text[110_000:115_000] + " QZXV" * 2000).encode(),
    }


def test_build_corpus_writes_each_regions_exact_tokens(tmp_path, regions, capsys):
    from train.__main__ import main

    task, options = write_regions(tmp_path, regions)
    out = tmp_path / "corpus"
    meta = main(["build-corpus", str(out), "text", *options, "--vocab-size", "600"])
    assert sorted(p.name for p in out.iterdir()) == [
        "meta.json", "test.bin", "tokenizer.json", "train.bin", "validation.bin"
    ]  # fmt: skip
    tokenizer = read_tokenizer(str(out / "tokenizer.json"))
    assert tokenizer.kind == "bpe" and tokenizer.vocab_size == 600
    for split, data in regions.items():
        ids = np.fromfile(out / f"{split}.bin", np.uint16)
        assert b"".join(tokenizer.pieces[i] for i in ids) == data
        assert ids.tolist() == encode_bytes(tokenizer, data).tolist()
        assert meta["splits"][split] == {"tokens": len(ids), "bytes": len(data)}
        assert len(ids) < len(data) / (2 if split != "test" else 1)  # merged (but not QZXV)
    assert json.loads((out / "meta.json").read_text()) == meta
    assert meta["tokenizer"] == "bpe" and meta["vocab_size"] == 600 and meta["dtype"] == "uint16"
    assert meta["source"] == {"class": "TextFile", **dataclasses.asdict(task)}
    assert "bpe vocabulary 600, train" in capsys.readouterr().out
    assert not [p for p in tokenizer.pieces if len(p) > 1 and any(b in b"QZXV" for b in p)]
    everything = train_bpe(b"".join(regions.values()), 600)  # what a leak would have learnt
    assert b" QZXV" in everything.pieces


def test_a_bytes_corpus_holds_the_files_bytes(tmp_path, regions):
    from train.__main__ import main

    _, options = write_regions(tmp_path, regions)
    meta = main(["build-corpus", str(tmp_path / "bytes"), "text", *options, "--tokenizer", "bytes"])
    for split, data in regions.items():
        ids = np.fromfile(tmp_path / "bytes" / f"{split}.bin", np.uint16)
        assert ids.astype(np.uint8).tobytes() == data
    assert meta["vocab_size"] == 256 and meta["tokenizer"] == "bytes"
    assert read_tokenizer(str(tmp_path / "bytes" / "tokenizer.json")) == ByteTokenizer()


def test_build_corpus_refuses_a_non_empty_directory_and_bad_sizes(tmp_path, regions, capsys):
    _, options = write_regions(tmp_path, regions)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    error = cli_error(capsys, ["build-corpus", str(taken), "text", *options])
    assert f"{taken} is not empty" in error
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]
    fresh = str(tmp_path / "fresh")
    error = cli_error(capsys, ["build-corpus", fresh, "text", *options, "--vocab-size", "200"])
    assert "--vocab-size must be > 256" in error
    argv = ["build-corpus", fresh, "text", *options, "--tokenizer", "bytes", "--vocab-size", "9"]
    assert "--vocab-size is BPE's" in cli_error(capsys, argv)
    error = cli_error(capsys, ["build-corpus", fresh, "text", "--task.path", str(tmp_path / "no")])
    assert "does not exist" in error
    assert not (tmp_path / "fresh").exists()  # every refusal before anything was written
