"""metrics.json as a typed record: what a run scored on held-out images, its gate and its size.

Training writes it (loop.py) and every later layer reads it through `RunRecord.metrics`, by
field. `SCHEMA` is the file layout's version, written into the file; a file without one was
written before the version was (version 0: the same layout, some optional parts absent), and
reads the same way. A file of a later version than this code knows is refused with the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCHEMA = 1


@dataclass(frozen=True)
class HeldOut:
    """Scores on one set of held-out images (training/metrics.py's classification_scores
    without the confusion matrix, which interpret keeps)."""

    n: int
    accuracy: float
    macro_f1: float
    # class -> precision, recall, f1, support
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeldOut:
        return cls(
            n=int(data["n"]),
            accuracy=float(data["accuracy"]),
            macro_f1=float(data["macro_f1"]),
            per_class={str(k): dict(v) for k, v in data.get("per_class", {}).items()},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "per_class": self.per_class,
        }


@dataclass(frozen=True)
class WithoutViews:
    """With --tta: the test scores of the plain images alone."""

    mode: str  # the --tta views the headline averaged
    test_without: HeldOut

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WithoutViews:
        return cls(str(data["mode"]), HeldOut.from_dict(data["test_without"]))

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "test_without": self.test_without.to_dict()}


@dataclass(frozen=True)
class AverageScores:
    """With --ema: the weight average against the best epoch, and which the run kept."""

    decay: float
    kept: str  # "average" or "best_epoch"
    val_macro_f1: dict[str, float | None]  # candidate -> validation macro-F1
    test: dict[str, HeldOut]  # candidate -> test scores

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AverageScores:
        return cls(
            decay=float(data["decay"]),
            kept=str(data["kept"]),
            val_macro_f1={
                k: None if v is None else float(v) for k, v in data["val_macro_f1"].items()
            },
            test={k: HeldOut.from_dict(v) for k, v in data["test"].items()},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "kept": self.kept,
            "val_macro_f1": self.val_macro_f1,
            "test": {k: v.to_dict() for k, v in self.test.items()},
        }


@dataclass(frozen=True)
class RunMetrics:
    """A finished run's metrics.json."""

    run_id: str
    dataset: str
    class_names: list[str]
    val: HeldOut
    test: HeldOut
    mva: float
    passed: bool
    duration_s: float
    best_epoch: int | None = None
    epochs_run: int | None = None  # None: a version-0 file that did not say
    train_images: int | None = None
    # The stored model: its name, input shape, classes and parameter counts (model.describe)
    params: dict[str, Any] = field(default_factory=dict)
    tta: WithoutViews | None = None
    ema: AverageScores | None = None
    schema: int = SCHEMA

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunMetrics:
        """KeyError, TypeError or ValueError where the file is not metrics.json."""
        schema = int(data.get("schema", 0))
        if schema > SCHEMA:
            raise ValueError(
                f"schema {schema} is newer than this deepsight reads ({SCHEMA}); upgrade it"
            )
        optional_int = {k: data.get(k) for k in ("best_epoch", "epochs_run", "train_images")}
        return cls(
            run_id=str(data.get("run_id", "")),
            dataset=str(data["dataset"]),
            class_names=[str(name) for name in data["class_names"]],
            val=HeldOut.from_dict(data["val"]),
            test=HeldOut.from_dict(data["test"]),
            mva=float(data["mva"]),
            passed=bool(data["passed"]),
            duration_s=float(data["duration_s"]),
            params=dict(data.get("params", {})),
            tta=WithoutViews.from_dict(data["tta"]) if data.get("tta") else None,
            ema=AverageScores.from_dict(data["ema"]) if data.get("ema") else None,
            schema=schema,
            **{k: None if v is None else int(v) for k, v in optional_int.items()},
        )

    def to_dict(self) -> dict[str, Any]:
        """The file's layout (written at SCHEMA, whatever version was read)."""
        document: dict[str, Any] = {
            "schema": SCHEMA,
            "run_id": self.run_id,
            "dataset": self.dataset,
            "class_names": self.class_names,
            "val": self.val.to_dict(),
            "test": self.test.to_dict(),
            "mva": self.mva,
            "passed": self.passed,
            "best_epoch": self.best_epoch,
            "duration_s": self.duration_s,
            "epochs_run": self.epochs_run,
            "train_images": self.train_images,
            "params": self.params,
        }
        if self.tta is not None:
            document["tta"] = self.tta.to_dict()
        if self.ema is not None:
            document["ema"] = self.ema.to_dict()
        return document
