"""The task registry: name -> task class. A task's dataclass fields are its configuration."""

from train.tasks.base import ArrayTask, DataPosition, StreamTask, describe_task
from train.tasks.corpus import PlantedCorpus
from train.tasks.images import Digits, DigitsPixels, DigitsRows, FashionMnist, Mnist
from train.tasks.language import MarkovLanguage, TextFile
from train.tasks.masked import MaskedMarkovLanguage, MaskedTextFile
from train.tasks.order import Reverse, Sorted
from train.tasks.points import Blobs, Circles, Xor
from train.tasks.recall import InductionHeads, MultiQueryRecall, SelectiveCopy
from train.tasks.scenes import Scenes
from train.tasks.sequences import Adding, Copy
from train.tasks.series import RandomWalk, Sines
from train.tasks.shakespeare import Shakespeare
from train.tasks.tokens import TokenCorpus
from train.tasks.translation import Translation

TASKS: dict[str, type] = {
    "xor": Xor,
    "blobs": Blobs,
    "circles": Circles,
    "digits": Digits,
    "digits_rows": DigitsRows,
    "digits_pixels": DigitsPixels,
    "mnist": Mnist,
    "fashion_mnist": FashionMnist,
    "scenes": Scenes,
    "adding": Adding,
    "copy": Copy,
    "reverse": Reverse,
    "sorted": Sorted,
    "sines": Sines,
    "random_walk": RandomWalk,
    "markov": MarkovLanguage,
    "text": TextFile,
    "tokens": TokenCorpus,
    "shakespeare": Shakespeare,
    "planted_corpus": PlantedCorpus,
    "markov_mlm": MaskedMarkovLanguage,
    "text_mlm": MaskedTextFile,
    "translation": Translation,
    "mqar": MultiQueryRecall,
    "selective_copy": SelectiveCopy,
    "induction": InductionHeads,
}

__all__ = [
    "TASKS",
    "Adding",
    "ArrayTask",
    "Blobs",
    "Circles",
    "Copy",
    "DataPosition",
    "Digits",
    "DigitsPixels",
    "DigitsRows",
    "FashionMnist",
    "InductionHeads",
    "MarkovLanguage",
    "MaskedMarkovLanguage",
    "MaskedTextFile",
    "Mnist",
    "MultiQueryRecall",
    "PlantedCorpus",
    "RandomWalk",
    "Reverse",
    "Scenes",
    "SelectiveCopy",
    "Shakespeare",
    "Sines",
    "Sorted",
    "StreamTask",
    "TextFile",
    "TokenCorpus",
    "Translation",
    "Xor",
    "describe_task",
]
