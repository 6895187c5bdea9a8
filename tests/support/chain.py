"""The whole chain on the separable data set: obtain, scrub, explore with registered
hypotheses, a tiny run trained and interpreted; then the report pages over it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepsight_tf.core.settings import ExploreSettings, InterpretSettings
from deepsight_tf.core.workspace import Workspace
from deepsight_tf.data.explore import explore
from deepsight_tf.diagnose.interpret import InterpretResult, interpret
from deepsight_tf.reporting import report
from deepsight_tf.training.loop import train

from support.separable import tiny
from support.workspaces import copy_workspace

N_BOOT = 200
# A group name with markup in it: the page must show it as text (escaped), never as markup.
WARM = '<warm & "red">'
INTERPRETED_RUN = "a"


@dataclass
class Interpreted:
    workspace: Workspace
    result: InterpretResult  # of run "a"


@dataclass
class Chain:
    workspace: Workspace
    run_page: Path  # report of run "a" (interpreted)
    plain_page: Path  # report of run "b" (not interpreted)
    compare_page: Path
    results: dict[str, Any] = field(default_factory=dict)


def build_interpreted(prepared: Workspace) -> Interpreted:
    """explore (two hypotheses registered), then run "a" trained and interpreted, in
    `prepared` (a workspace with the separable data set obtained and scrubbed)."""
    hypotheses = prepared.root.parent / "hypotheses.json"
    hypotheses.write_text(
        json.dumps(
            {
                "groups": {WARM: ["red"], "cool": ["green", "blue"]},
                "confusable_pairs": [["green", "blue"]],
            }
        )
    )
    explore(ExploreSettings(hypotheses=str(hypotheses)), prepared)
    train(tiny(run_id=INTERPRETED_RUN), prepared)
    settings = InterpretSettings(
        run_id=INTERPRETED_RUN,
        methods="gradcam,layercam",
        max_images=9,
        context_images=30,
        sanity_images=4,
        grid_per_class=2,
        n_boot=N_BOOT,
    )
    return Interpreted(prepared, interpret(settings, prepared))


def build_report_chain(interpreted: Interpreted, root: Path) -> Chain:
    """A copy of the interpreted chain with a second run "b" (not interpreted), and three
    pages: the report of "a", of "b", and their comparison."""
    ws = copy_workspace(interpreted.workspace, root)
    # Fewer, larger steps: a different model of the same test images, for the comparison;
    # with a weight average, so the page shows both candidates.
    train(tiny(run_id="b", epochs=1, lr=0.02, ema=0.9), ws)
    results = {
        "a": report(ws, ["a"], n_boot=N_BOOT),
        "b": report(ws, ["b"], n_boot=N_BOOT),
        "a-b": report(ws, ["a", "b"], n_boot=N_BOOT),
    }
    return Chain(
        ws,
        Path(results["a"].path),
        Path(results["b"].path),
        Path(results["a-b"].path),
        results,
    )
