"""config.json as a typed record: what a run is (its resolved settings, the float policy and
what decided it, the preprocessing, the phases, the distribution).

Training writes it at the start of a run and again where a budget re-sizes the phases; every
later layer reads it through `RunRecord.config`, by field. `SCHEMA` is the layout's version,
written into the file; a file without one (version 0) has the same layout. A setting a newer
or older deepsight no longer knows is left out when the settings are read back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from deepsight_tf.core.records import check_schema
from deepsight_tf.core.settings import TrainSettings
from deepsight_tf.core.workspace import CONFIG_FILE
from deepsight_tf.model.preprocessing import Preprocessing
from deepsight_tf.training.optim import PrecisionChoice
from deepsight_tf.training.plan import PhasePlan

SCHEMA = 1


@dataclass(frozen=True)
class RunConfig:
    """A run's config.json."""

    run_id: str
    settings: TrainSettings  # resolved: every default a recipe or the weights decide, filled
    precision: str  # the float policy the run trained in
    preprocessing: Preprocessing
    phases: list[PhasePlan]
    distribution: dict[str, Any] = field(default_factory=dict)  # strategy, replicas, lr scale
    created: str = ""
    precision_choice: PrecisionChoice | None = None  # what decided `precision` (None: not kept)
    schema: int = SCHEMA

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """KeyError, TypeError or ValueError where the document is not a run's config.json."""
        version = check_schema(data, SCHEMA, CONFIG_FILE)
        known = TrainSettings.__dataclass_fields__
        choice = data.get("precision_choice")
        return cls(
            run_id=str(data.get("run_id", "")),  # older files: the folder names the run
            settings=TrainSettings(**{k: v for k, v in data["settings"].items() if k in known}),
            precision=str(data["precision"]),
            preprocessing=Preprocessing.from_dict(data["preprocessing"]),
            phases=[PhasePlan.from_dict(p) for p in data["phases"]],
            distribution=dict(data.get("distribution") or {}),
            created=str(data.get("created", "")),
            precision_choice=PrecisionChoice.from_dict(choice) if choice else None,
            schema=version,
        )

    def to_dict(self) -> dict[str, Any]:
        """The file's layout (written at SCHEMA, whatever version was read)."""
        return {
            "schema": SCHEMA,
            "run_id": self.run_id,
            "settings": asdict(self.settings),
            "precision": self.precision,
            "precision_choice": self.precision_choice.to_dict() if self.precision_choice else None,
            "preprocessing": self.preprocessing.to_dict(),
            "phases": [asdict(p) for p in self.phases],
            "distribution": self.distribution,
            "created": self.created,
        }
