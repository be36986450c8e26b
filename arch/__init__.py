"""The model registry: name -> Module class. A model's dataclass fields are its configuration."""

import flax.linen as nn

from arch.cnn import LeNet, ResNet
from arch.mlp import MLP, Perceptron
from arch.recurrent import RNNClassifier, RNNLanguageModel, RNNTagger

MODELS: dict[str, type[nn.Module]] = {
    "perceptron": Perceptron,
    "mlp": MLP,
    "lenet": LeNet,
    "resnet": ResNet,
    "rnn": RNNClassifier,
    "rnn_tagger": RNNTagger,
    "rnn_lm": RNNLanguageModel,
}


def describe(cls: type) -> str:
    """The first line of a class's docstring: its one-line description in listings."""
    return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


__all__ = [
    "MLP",
    "MODELS",
    "LeNet",
    "Perceptron",
    "RNNClassifier",
    "RNNLanguageModel",
    "RNNTagger",
    "ResNet",
    "describe",
]
