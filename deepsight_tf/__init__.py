"""deepsight: transfer learning on CIFAR-10 that puts the model and the data on trial.

The phases as Python functions, each taking its settings and a Workspace and returning a
result dataclass (the same calls the command line makes):

    import deepsight_tf as ds

    ws = ds.Workspace("workspace")
    ds.obtain(ds.ObtainSettings(source="../shared/data/cifar10-jpeg", name="cifar10"), ws)
    ds.scrub(ds.ScrubSettings(), ws)
    ds.explore(ds.ExploreSettings(), ws)
    run = ds.train(ds.TrainSettings(epochs=4), ws, monitor=ds.PrintMonitor())
    ds.interpret(ds.InterpretSettings(run_id=run.run_id), ws)
    ds.report(ws, [run.run_id])
    model = ds.load_model(run.run_dir)  # Keras, on 0..255 RGB of any size: model(uint8_images)

Names load on first use, so `import deepsight_tf` does not import TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name: the module that defines it
_EXPORTS = {
    "Workspace": "deepsight_tf.core.workspace",
    "ObtainSettings": "deepsight_tf.core.settings",
    "ScrubSettings": "deepsight_tf.core.settings",
    "ExploreSettings": "deepsight_tf.core.settings",
    "TrainSettings": "deepsight_tf.core.settings",
    "InterpretSettings": "deepsight_tf.core.settings",
    "settings_from_file": "deepsight_tf.core.settings_file",
    "DeepsightError": "deepsight_tf.core.errors",
    "TrainingMonitor": "deepsight_tf.core.progress",
    "PrintMonitor": "deepsight_tf.core.progress",
    "obtain": "deepsight_tf.data.obtain",
    "scrub": "deepsight_tf.data.scrub",
    "explore": "deepsight_tf.data.explore",
    "load_dataset": "deepsight_tf.data.dataset",
    "train": "deepsight_tf.training.loop",
    "find_lr": "deepsight_tf.training.lr_finder",
    "RunRecord": "deepsight_tf.training.record",
    "interpret": "deepsight_tf.diagnose.interpret",
    "predict": "deepsight_tf.serve.predict",
    "load_model": "deepsight_tf.serve.predict",
    "export_run": "deepsight_tf.serve.export",
    "report": "deepsight_tf.reporting",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'deepsight_tf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
