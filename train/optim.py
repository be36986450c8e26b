"""The optimizer from a config, built entirely from optax transformations.

clip (global norm) -> weight decay -> SGD / momentum / Adam / AdamW with a schedule
-> per-parameter learning-rate factors, wrapped in optax.MultiSteps for gradient accumulation
and optax.multi_transform to freeze.
"""

import dataclasses
import math
import re
import typing
from typing import Literal

import jax
import optax

from arch.errors import ConfigError

OptimizerName = Literal["sgd", "momentum", "adam", "adamw"]
ScheduleName = Literal["constant", "cosine"]


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer, learning-rate schedule, clipping, accumulation and freezing."""

    name: OptimizerName = "adam"
    lr: float = 1e-3
    schedule: ScheduleName = "constant"
    warmup_steps: int = 0
    """Linear warm-up from 0 to lr over this many optimizer updates, before the schedule."""
    min_lr_ratio: float = 0.0
    """Cosine schedule: the final learning rate as a fraction of lr."""
    momentum: float = 0.9
    nesterov: bool = False
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    """adamw: decoupled decay; sgd / momentum / adam: L2 added to the gradient. Only the
    parameters that `decays` names (DECAYED: dense / conv / recurrent kernels, projection
    matrices, token embedding tables), never biases, norm scales and biases, class tokens,
    position tables or a recurrence's own parameters (NOT_DECAYED); the same mask for both."""
    clip_norm: float | None = None
    """Clip the gradient to this global norm (None: no clipping)."""
    accumulate: int = 1
    """Average the gradients of this many train steps (micro-batches) before each update."""
    freeze: tuple[str, ...] = ()
    """Regular expressions; parameters whose path (e.g. 'conv_0/kernel') matches one stay fixed."""
    skip_non_finite: bool = False
    """Skip a step whose loss, gradients or resulting parameters hold a NaN or infinity (the
    train step keeps the previous state: train.step.train_step_function) instead of stopping
    the run; more than `max_skipped` in a row stop it."""
    max_skipped: int = 10
    lr_scale: tuple[tuple[str, float], ...] = ()
    """(regular expression, factor) pairs: parameters whose path matches train at factor * lr
    (the first matching pair wins), e.g. (("nu_log|theta_log", 0.5),) for the LRU paper's
    slower recurrence parameters."""

    def __post_init__(self) -> None:
        problems = []
        for field, valid in (("name", OptimizerName), ("schedule", ScheduleName)):
            if getattr(self, field) not in typing.get_args(valid):
                problems.append(
                    f"optim.{field} must be one of {typing.get_args(valid)}, "
                    f"got {getattr(self, field)!r}"
                )
        # lr = inf passes `lr > 0` and turns the parameters into NaN at the first update, so
        # every number must be finite; the range checks below then judge the finite ones only
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        infinite = {n for n, v in values.items() if isinstance(v, float) and not math.isfinite(v)}
        flag = lambda name: "--optim." + name.replace("_", "-")
        problems += [
            f"optim.{n} must be a finite number, got {values[n]} (set {flag(n)})" for n in infinite
        ]
        finite = lambda name: name not in infinite
        if finite("lr") and not self.lr > 0:
            problems.append(f"optim.lr must be > 0, got {self.lr}")
        # b1 or b2 = 1 zeroes Adam's bias correction 1 - b^t (NaN at step 1); a momentum of 1
        # never lets a gradient fade
        for name in ("momentum", "b1", "b2"):
            if finite(name) and not 0 <= values[name] < 1:
                problems.append(
                    f"optim.{name} must be in [0, 1), got {values[name]} (set {flag(name)})"
                )
        if finite("eps") and not self.eps > 0:
            problems.append(f"optim.eps must be > 0, got {self.eps} (set --optim.eps, e.g. 1e-8)")
        if self.warmup_steps < 0:
            problems.append(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if finite("min_lr_ratio") and not 0 <= self.min_lr_ratio <= 1:
            problems.append(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.weight_decay < 0:
            problems.append(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            problems.append(f"optim.clip_norm must be > 0 (or None), got {self.clip_norm}")
        if self.max_skipped < 1:
            problems.append(f"optim.max_skipped must be >= 1, got {self.max_skipped}")
        if self.accumulate < 1:
            problems.append(f"optim.accumulate must be >= 1, got {self.accumulate}")
        for pattern in self.freeze:
            try:
                re.compile(pattern)
            except re.error as e:
                problems.append(
                    f"optim.freeze pattern {pattern!r} is not a regular expression: {e}"
                )
        for pattern, factor in self.lr_scale:
            try:
                re.compile(pattern)
            except re.error as e:
                problems.append(
                    f"optim.lr_scale pattern {pattern!r} is not a regular expression: {e}"
                )
            if not (factor > 0 and math.isfinite(factor)):
                problems.append(
                    f"optim.lr_scale factor for {pattern!r} must be > 0 and finite, got {factor}"
                )
        if problems:
            raise ConfigError("; ".join(problems))


def learning_rate_schedule(config: OptimConfig, total_updates: int) -> optax.Schedule:
    """Constant or cosine decay over `total_updates`, after an optional linear warm-up."""
    decay_steps = max(total_updates - config.warmup_steps, 1)
    if config.schedule == "constant":
        main = optax.constant_schedule(config.lr)
    else:
        main = optax.cosine_decay_schedule(config.lr, decay_steps, alpha=config.min_lr_ratio)
    if config.warmup_steps == 0:
        return main
    warmup = optax.linear_schedule(0.0, config.lr, config.warmup_steps)
    return optax.join_schedules([warmup, main], [config.warmup_steps])


def param_path(path: tuple) -> str:
    """'conv_0/kernel' from a pytree key path."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def frozen_labels(params, patterns: tuple[str, ...]):
    """A pytree of 'frozen' / 'trainable' labels, one per parameter."""
    compiled = [re.compile(p) for p in patterns]
    return jax.tree_util.tree_map_with_path(
        lambda path, _: (
            "frozen" if any(c.search(param_path(path)) for c in compiled) else "trainable"
        ),
        params,
    )


def scale_by_path(rules: tuple[tuple[str, float], ...]) -> optax.GradientTransformation:
    """Multiply each update by the factor of the first rule whose pattern matches its path
    (1 where none does): after the optimizer this is a per-parameter learning rate."""
    compiled = [(re.compile(p), f) for p, f in rules]

    def factor(path) -> float:
        name = param_path(path)
        return next((f for c, f in compiled if c.search(name)), 1.0)

    def update(updates, state, params=None):
        del params
        scaled = jax.tree_util.tree_map_with_path(lambda k, u: u * factor(k), updates)
        return scaled, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


# Weight decay by what a parameter IS, never by its shape (a bias [h, e], a class token
# [1, d], a position table or Mamba's A_log [e, n] are not kernels). A rule is a path suffix of
# one or more names ('bias', 'table/embedding'); the longest that ends a parameter's path
# decides. A parameter no rule names is NOT decayed, and tests/test_weight_decay.py fails for
# any registered model with such a parameter, so a new one forces a decision here.
DECAYED: dict[str, str] = {
    "kernel": "every nn.Dense / nn.Conv / RowDense kernel: dense and convolution layers, heads, "
    "the attention projections (query / key / value / out), Mamba's in_proj / x_proj / "
    "dt_proj / out_proj",
    "embedding": "token embedding tables (nn.Embed): tokens, a source vocabulary, BERT's "
    "token_type, word2vec's center / context vectors",
    "input_kernel": "a recurrent cell's input kernel W_x (arch/rnn_cells.py)",
    "recurrent_kernel": "a recurrent cell's recurrent kernel W_h",
    "conv": "Mamba's depthwise causal convolution kernel [w, e]",
    "output_re": "the LRU's read-out projection C [n, d], real part",
    "output_im": "the LRU's read-out projection C [n, d], imaginary part",
    "attention_query": "Bahdanau attention's W_s [n, a] (arch/seq2seq.py)",
    "attention_score": "Bahdanau attention's v [a, 1]",
}
NOT_DECAYED: dict[str, str] = {
    "bias": "every layer's bias (attention query / key / value biases [h, e] included, Mamba's "
    "dt_proj/bias), LayerNorm / BatchNorm biases",
    "scale": "LayerNorm / BatchNorm scales",
    "recurrent_bias": "the GRU's recurrent bias b_hn (reset_after)",
    "conv_bias": "Mamba's convolution bias",
    "output_bias": "the masked language model's output bias [v]",
    "cls": "the class token [1, d] of the Transformer classifier and the ViT",
    "table/embedding": "the learned position table (arch.layers.PositionalEncoding's nn.Embed "
    "'table'): positions, not tokens",
    "a_log": "Mamba's A = -exp(A_log) [e, n]: decay pulls A toward -1 (the reference Mamba "
    "exempts A_log, D and dt_proj.bias: _no_weight_decay)",
    "skip": "the skip D [e] / [d] of Mamba and of the LRU",
    "nu_log": "the LRU's log decay: |lambda| = exp(-exp(nu_log))",
    "theta_log": "the LRU's log phase",
    "gamma_log": "the LRU's log normalisation gamma",
    "input_re": "the LRU's input matrix B [d, n], real part: with lambda and gamma the "
    "recurrence group that the reference LRU (minimal-LRU) trains without weight decay",
    "input_im": "the LRU's input matrix B [d, n], imaginary part (as input_re)",
}
assert not set(DECAYED) & set(NOT_DECAYED), set(DECAYED) & set(NOT_DECAYED)


def decay_rule(path: str) -> tuple[str, bool] | None:
    """(the rule that decides the parameter at `path`, e.g. 'conv_0/kernel', and whether it
    is decayed), or None where no rule names it: the longest suffix of its path that DECAYED
    or NOT_DECAYED holds."""
    names = path.split("/")
    for start in range(len(names)):
        suffix = "/".join(names[start:])
        if suffix in DECAYED:
            return suffix, True
        if suffix in NOT_DECAYED:
            return suffix, False
    return None


def decays(path: str) -> bool:
    """Whether weight decay applies to the parameter at `path` (False where no rule names it)."""
    rule = decay_rule(path)
    return rule is not None and rule[1]


def unclassified(params) -> list[str]:
    """The paths of the parameters that no rule of DECAYED / NOT_DECAYED names."""
    paths = [param_path(k) for k, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    return [p for p in paths if decay_rule(p) is None]


def decay_mask(params):
    """True where weight decay applies (`decays` of each parameter's path), False elsewhere;
    one mask for AdamW's decoupled decay and for the L2 term of sgd / momentum / adam. It
    decides by path only, so the optimizer state's structure is the same for any mask."""
    return jax.tree_util.tree_map_with_path(lambda k, _: decays(param_path(k)), params)


def make_optimizer(config: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """The optax transformation for `config`, for a run of `total_steps` train steps."""
    schedule = learning_rate_schedule(config, max(total_steps // config.accumulate, 1))
    parts = []
    if config.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(config.clip_norm))
    if config.name == "adamw":
        parts.append(
            optax.adamw(
                schedule,
                config.b1,
                config.b2,
                config.eps,
                weight_decay=config.weight_decay,
                mask=decay_mask,
            )
        )
    else:
        if config.weight_decay > 0:
            parts.append(optax.add_decayed_weights(config.weight_decay, mask=decay_mask))
        if config.name == "sgd":
            parts.append(optax.sgd(schedule))
        elif config.name == "momentum":
            parts.append(optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov))
        else:
            parts.append(optax.adam(schedule, config.b1, config.b2, config.eps))
    if config.lr_scale:
        parts.append(scale_by_path(config.lr_scale))
    tx = optax.chain(*parts)
    if config.freeze:
        tx = optax.multi_transform(
            {"trainable": tx, "frozen": optax.set_to_zero()},
            lambda params: frozen_labels(params, config.freeze),
        )
    if config.accumulate > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=config.accumulate)
    return tx
