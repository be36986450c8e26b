"""FLOPs of a JAX function counted from its jaxpr, loops included.

XLA's cost analysis (`train.measure.bench.cost`) counts a while loop's body ONCE, whatever its trip
count: a `jax.lax.scan` over 1000 steps of a recurrent cell is reported as one step, so a
recurrence would look 1000x cheaper than the attention that computes the same sequence without
a loop. This module walks the jaxpr instead and multiplies every scan body by its length, so
every model family is counted by the same rule (no per-architecture formula):

- dot_general: 2 x (output elements) x (contracted size); convolutions likewise per kernel tap;
- elementwise arithmetic and comparisons: 1 per output element; reductions: 1 per input
  element; transcendentals (exp, log, tanh, logistic, ...) are counted apart, as XLA does;
- data movement (reshape, slice, gather, broadcast, ...) costs nothing;
- scan: length x body; cond: the most expensive branch; calls (jit, custom_jvp / custom_vjp,
  remat, ...): their body once, so what a backward pass recomputes under `jax.checkpoint` is
  counted (the FLOPs the program executes, not the model's minimum);
- a while loop with a trip count unknown at trace time, or a primitive this module does not
  know, is named in `uncounted` rather than guessed.

The counts are of the program as written, after JAX's dead-code elimination but before XLA's
fusion or simplification: on loop-free programs they agree with XLA's count to within a few
percent (tests/test_flops.py).
"""

import collections
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
from jax.extend import core

ARITHMETIC = {
    "add", "add_any", "sub", "mul", "div", "rem", "neg", "max", "min", "abs", "sign", "square",
    "integer_pow", "pow", "sqrt", "rsqrt", "cbrt", "floor", "ceil", "round", "clamp", "select_n",
    "eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not", "xor", "nextafter", "is_finite",
    "real", "imag", "complex", "conj", "exp2", "copysign",
}  # fmt: skip
TRANSCENDENTAL = {
    "exp", "log", "log1p", "expm1", "tanh", "logistic", "sin", "cos", "tan", "atan2", "asin",
    "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh", "erf", "erfc", "erf_inv",
    "lgamma", "digamma",
}  # fmt: skip
REDUCTION = {
    "reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or", "argmax",
    "argmin", "cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp", "reduce_precision",
}  # fmt: skip
FREE = {
    "reshape", "broadcast_in_dim", "squeeze", "expand_dims", "transpose", "slice",
    "dynamic_slice", "dynamic_update_slice", "gather", "scatter", "concatenate", "pad", "rev",
    "convert_element_type", "bitcast_convert_type", "iota", "copy", "copy_p",
    "stop_gradient", "random_bits", "random_seed", "random_wrap", "random_unwrap", "threefry2x32",
    "shift_left", "shift_right_logical", "shift_right_arithmetic", "sort", "top_k", "split",
    "sharding_constraint", "device_put", "optimization_barrier", "pjit_sharding", "mesh_cast",
    "reshard", "population_count", "clz", "empty", "zeros_like", "broadcast", "squeeze_p",
    "scatter-add", "scatter_add", "full_like", "tie_in", "axis_index", "create_token",
    "stack", "unstack", "random_fold_in", "random_split", "random_key_data",
}  # fmt: skip


@dataclasses.dataclass
class Count:
    """FLOPs and transcendentals of a program, and what could not be counted."""

    flops: float = 0.0
    transcendentals: float = 0.0
    uncounted: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def add(self, other: "Count", times: float = 1.0) -> None:
        self.flops += times * other.flops
        self.transcendentals += times * other.transcendentals
        self.uncounted.update(other.uncounted)

    def as_dict(self) -> dict[str, Any]:
        return {
            "flops": self.flops,
            "transcendentals": self.transcendentals,
            "uncounted": dict(self.uncounted),
        }


def size(var: Any) -> int:
    shape = getattr(var.aval, "shape", ())
    return math.prod(shape)


def dot_general_flops(eqn: Any) -> float:
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs_shape = eqn.invars[0].aval.shape
    contracted = math.prod(lhs_shape[d] for d in lhs_contract)
    return 2.0 * size(eqn.outvars[0]) * contracted


def conv_flops(eqn: Any) -> float:
    kernel = eqn.invars[1].aval.shape
    spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, spatial...)
    per_output = math.prod(kernel[d] for d in spec[1:])  # in-channels (per group) x taps
    return 2.0 * size(eqn.outvars[0]) * per_output


def count_jaxpr(jaxpr: Any) -> Count:
    """The Count of a (closed or open) jaxpr."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = Count()
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total.flops += dot_general_flops(eqn)
        elif name == "conv_general_dilated":
            total.flops += conv_flops(eqn)
        elif name in ARITHMETIC:
            total.flops += sum(size(v) for v in eqn.outvars)
        elif name in TRANSCENDENTAL:
            total.transcendentals += sum(size(v) for v in eqn.outvars)
        elif name in REDUCTION:
            total.flops += sum(size(v) for v in eqn.invars if hasattr(v.aval, "shape"))
        elif name in FREE:
            continue
        elif name == "scan":
            total.add(count_jaxpr(eqn.params["jaxpr"]), times=eqn.params["length"])
        elif name == "cond":
            branches = [count_jaxpr(b) for b in eqn.params["branches"]]
            total.add(max(branches, key=lambda c: c.flops + c.transcendentals))
        elif name == "while":
            body = count_jaxpr(eqn.params["body_jaxpr"]).flops
            total.uncounted[f"while loop (trip count unknown; body {body:.3g} flops)"] += 1
        else:
            inner = list(core.jaxprs_in_params(eqn.params))
            if inner:
                for sub in inner:
                    total.add(count_jaxpr(sub))
            else:
                total.uncounted[name] += 1
    return total


def without_dead_code(jaxpr: Any) -> Any:
    """The jaxpr without equations whose results nothing uses (XLA drops them too: e.g. the
    primal outputs of a jax.vjp taken only for its pullback). JAX's own pass; a private API, so
    if it moves the jaxpr is counted as it is."""
    try:
        from jax._src.interpreters import partial_eval  # noqa: PLC0415

        return partial_eval.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))[0]
    except (ImportError, AttributeError, TypeError):  # pragma: no cover
        return jaxpr


def count(function: Callable, *args: Any, **kwargs: Any) -> Count:
    """The Count of `function(*args, **kwargs)` after dead-code elimination (traced, never run;
    arguments may be jax.ShapeDtypeStruct)."""
    return count_jaxpr(without_dead_code(jax.make_jaxpr(function)(*args, **kwargs).jaxpr))
