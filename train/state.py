"""TrainState: everything that changes during training, as one pytree of arrays."""

from typing import Any

import flax.struct
import jax

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """The state the train step maps to the next state.

    step:        number of train steps taken (micro-steps when gradients are accumulated)
    params:      the 'params' collection of the model
    model_state: every other collection the model keeps (e.g. 'batch_stats' of BatchNorm)
    opt_state:   the optax optimizer state
    rng:         the run's PRNG key; step s uses fold_in(rng, s), so no key is ever threaded
    """

    step: jax.Array
    params: PyTree
    model_state: PyTree
    opt_state: PyTree
    rng: jax.Array

    @property
    def variables(self) -> dict:
        """The variables to pass to `model.apply`."""
        return {"params": self.params, **self.model_state}


def parameter_count(params: PyTree) -> int:
    """Total number of scalars in a parameter tree."""
    return int(sum(x.size for x in jax.tree.leaves(params)))
