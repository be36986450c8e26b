"""The task registry: name -> task class. A task's dataclass fields are its configuration."""

from train.tasks.base import ArrayTask, DataPosition, describe_task
from train.tasks.images import Digits, Mnist
from train.tasks.points import Blobs, Circles, Xor

TASKS: dict[str, type] = {
    "xor": Xor,
    "blobs": Blobs,
    "circles": Circles,
    "digits": Digits,
    "mnist": Mnist,
}

__all__ = [
    "TASKS",
    "ArrayTask",
    "Blobs",
    "Circles",
    "DataPosition",
    "Digits",
    "Mnist",
    "Xor",
    "describe_task",
]
