"""The model registry: name -> Module class. A model's dataclass fields are its configuration."""

import re

import flax.linen as nn

from arch.cnn import Detector, LeNet, ResNet
from arch.linear_rnn import (
    LinearRecurrentClassifier,
    LinearRecurrentLM,
    LinearRecurrentTagger,
)
from arch.mlp import MLP, Perceptron
from arch.rnn import RNNClassifier, RNNLanguageModel, RNNTagger
from arch.seq2seq import RNNSeq2Seq
from arch.transformer import (
    EncoderDecoderTransformer,
    MaskedLanguageModel,
    TransformerClassifier,
    TransformerLM,
)
from arch.vit import ViT
from arch.word2vec import SkipGram

MODELS: dict[str, type[nn.Module]] = {
    "perceptron": Perceptron,
    "mlp": MLP,
    "lenet": LeNet,
    "resnet": ResNet,
    "detector": Detector,
    "rnn": RNNClassifier,
    "rnn_tagger": RNNTagger,
    "rnn_lm": RNNLanguageModel,
    "transformer": TransformerClassifier,
    "bert": MaskedLanguageModel,
    "gpt": TransformerLM,
    "rnn_seq2seq": RNNSeq2Seq,
    "transformer_seq2seq": EncoderDecoderTransformer,
    "vit": ViT,
    "linear_rnn": LinearRecurrentClassifier,
    "linear_rnn_tagger": LinearRecurrentTagger,
    "linear_rnn_lm": LinearRecurrentLM,
    "word2vec": SkipGram,
}


def describe(cls: type) -> str:
    """The first sentence of a class's docstring (over as many lines as it takes): its
    description in listings."""
    paragraph = " ".join(
        line.strip() for line in (cls.__doc__ or "").strip().split("\n\n")[0].splitlines()
    )
    sentence = re.match(r"(.+?\.)(\s|$)", paragraph)
    return sentence.group(1) if sentence else paragraph


__all__ = [
    "Detector",
    "MLP",
    "EncoderDecoderTransformer",
    "LinearRecurrentClassifier",
    "LinearRecurrentLM",
    "LinearRecurrentTagger",
    "MaskedLanguageModel",
    "TransformerClassifier",
    "TransformerLM",
    "ViT",
    "MODELS",
    "LeNet",
    "Perceptron",
    "RNNClassifier",
    "RNNLanguageModel",
    "RNNSeq2Seq",
    "RNNTagger",
    "ResNet",
    "SkipGram",
    "describe",
]
