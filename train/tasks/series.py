"""Forecasting generated time series: noisy sums of sinusoids and random walks.

Legend: b batch, t time (window steps), h horizon. Each example is one series cut into a window
of `window` past values, inputs [n, window, 1] float32, and the `horizon` values that follow,
targets [n, horizon] float32. The model outputs [b, horizon]; the loss is the mean squared
error ("mse"). The metric "naive_mse" is the error of repeating the window's last value over
the horizon (the persistence forecast): a model is only useful where it beats it.
"""

import dataclasses

import jax
import numpy as np

from arch.errors import ConfigError
from train import losses
from train.tasks.base import Batch, Split, StreamTask


class ForecastTask(StreamTask):
    """Base: `series(rng, n, steps)` draws n normalised series [n, steps]; windows are cut here."""

    window: int
    horizon: int

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("window", "horizon", "num_eval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"task.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def num_outputs(self) -> int:
        return self.horizon

    def series(self, rng: np.random.Generator, n: int, steps: int) -> np.ndarray:
        raise NotImplementedError

    def sample(self, rng: np.random.Generator, n: int) -> Split:
        values = self.series(rng, n, self.window + self.horizon).astype(np.float32)  # [n, t + h]
        return values[:, : self.window, None], values[:, self.window :]  # [n, t, 1], [n, h]

    def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        targets, mask = batch["targets"], batch["mask"]
        mse = losses.mean_squared_error(outputs, targets, mask)
        last = batch["inputs"][:, -1, :]  # [b, 1]: broadcast over the horizon
        naive = losses.mean_squared_error(last, targets, mask)
        return mse, {"mse": mse, "naive_mse": naive}


@dataclasses.dataclass(frozen=True)
class Sines(ForecastTask):
    """Forecast a noisy sum of sinusoids (random periods, phases, amplitudes; unit variance).

    Each example draws `num_sines` frequencies uniformly between 1 / max_period and
    1 / min_period cycles per step, phases uniformly in [0, 2 pi) and amplitudes uniformly in
    [0.5, 1.5], then rescales the amplitudes so that the clean signal has unit variance
    (sum a_k^2 / 2 = 1): every example has the same scale. Gaussian noise of standard deviation
    `noise` is added to every value, so even a perfect model scores mse noise^2 (0.01).
    """

    batch_size: int = 32
    seed: int = 0
    window: int = 32
    horizon: int = 1
    num_sines: int = 3
    noise: float = 0.1
    """Standard deviation of the observation noise, relative to the unit-variance signal."""
    min_period: float = 4.0
    max_period: float = 32.0
    num_eval: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_sines < 1:
            raise ConfigError(f"task.num_sines must be >= 1, got {self.num_sines}")
        if self.noise < 0:
            raise ConfigError(f"task.noise must be >= 0, got {self.noise}")
        if not 2.0 <= self.min_period <= self.max_period:
            raise ConfigError(
                f"task.min_period and task.max_period must satisfy 2 <= min <= max (a period "
                f"under 2 steps aliases), got {self.min_period} and {self.max_period}"
            )

    def series(self, rng: np.random.Generator, n: int, steps: int) -> np.ndarray:
        shape = (n, self.num_sines, 1)
        frequency = rng.uniform(1.0 / self.max_period, 1.0 / self.min_period, shape)
        phase = rng.uniform(0.0, 2.0 * np.pi, shape)
        amplitude = rng.uniform(0.5, 1.5, shape)
        amplitude /= np.sqrt(np.sum(amplitude**2, axis=1, keepdims=True) / 2.0)
        time = np.arange(steps)
        # x_t = sum_k a_k sin(2 pi f_k t + phi_k) + noise * eps_t
        signal = np.sum(amplitude * np.sin(2.0 * np.pi * frequency * time + phase), axis=1)
        return signal + self.noise * rng.standard_normal((n, steps))  # [n, steps]


@dataclasses.dataclass(frozen=True)
class RandomWalk(ForecastTask):
    """Forecast a Gaussian random walk; repeating the last value (naive_mse) is already optimal.

    x_t = x_{t-1} + step_std * eps_t. Each example is shifted so that the window's last value
    is 0: the inputs end at 0 and the targets are the displacements from it. The walk has no
    drift, so the best forecast is the last value itself and no model can beat naive_mse, whose
    expectation is step_std^2 (horizon + 1) / 2: a test of whether a model learns to do
    nothing.
    """

    batch_size: int = 32
    seed: int = 0
    window: int = 32
    horizon: int = 1
    step_std: float = 1.0
    """Standard deviation of each step."""
    num_eval: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.step_std <= 0:
            raise ConfigError(f"task.step_std must be > 0, got {self.step_std}")

    def series(self, rng: np.random.Generator, n: int, steps: int) -> np.ndarray:
        walk = np.cumsum(self.step_std * rng.standard_normal((n, steps)), axis=1)  # [n, steps]
        return walk - walk[:, self.window - 1 : self.window]  # the window's last value -> 0
