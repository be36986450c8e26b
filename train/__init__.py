"""Everything that is not a model: state, the train step, losses, optimizers, tasks, the loop."""
