"""Events planted in a run: an action after a given optimizer step, a crash, a clock that
reads a planted pace, a model file with code in it."""

from __future__ import annotations

from pathlib import Path

import keras
import pytest

from deepsight_tf.training import budget


def at_step(step: int, action: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run `action()` after optimizer step `step` of the run (counted over all fits)."""
    seen = {"steps": 0}
    original = keras.callbacks.TensorBoard.on_train_batch_end

    def hooked(self, batch, logs=None):  # type: ignore[no-untyped-def]
        original(self, batch, logs)
        seen["steps"] += 1
        if seen["steps"] == step:
            action()  # type: ignore[operator]

    monkeypatch.setattr(keras.callbacks.TensorBoard, "on_train_batch_end", hooked)


class Crash(Exception):
    """Stands in for a process dying between two steps."""


def crash() -> None:
    raise Crash


def plant_clock(monkeypatch: pytest.MonkeyPatch, seconds_per_step: float) -> None:
    """The budget's clock reads `seconds_per_step` for every optimizer step taken since the
    budget was made, and nothing else: the run's pace is planted, not measured."""
    steps = [0]
    original = keras.callbacks.TensorBoard.on_train_batch_end

    def ticked(self, batch, logs=None):  # type: ignore[no-untyped-def]
        original(self, batch, logs)
        steps[0] += 1

    def clock(self: budget.Budget) -> float:
        origin = self.__dict__.setdefault("planted_origin", steps[0])
        return (steps[0] - origin) * seconds_per_step

    monkeypatch.setattr(keras.callbacks.TensorBoard, "on_train_batch_end", ticked)
    monkeypatch.setattr(budget.Budget, "clock", clock)


def lambda_model_file(path: Path) -> Path:
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda t: t * 2)(inputs)
    keras.Model(inputs, outputs).save(path)
    return path
