"""The report phase: one self-contained HTML page for a run, and a page that compares runs.

Layout: artifacts.py reads what the phases wrote; html.py is the markup toolkit; run_page.py
assembles a run's page from data_section, training_section, results_section and
interpretation; compare.py builds the comparison page. assets/ holds the template and CSS.
"""

from __future__ import annotations

from collections.abc import Sequence

from deepsight_tf.core.checks import check_name
from deepsight_tf.core.errors import ConfigError
from deepsight_tf.core.settings import DEFAULT_N_BOOT
from deepsight_tf.core.workspace import Workspace
from deepsight_tf.reporting.run_page import ReportResult, run_report


def report(
    workspace: Workspace, run_ids: Sequence[str], n_boot: int = DEFAULT_N_BOOT, seed: int = 0
) -> ReportResult:
    """runs/<id>/report.html for one run; reports/compare-<a>-<b>.html for two or more."""
    from deepsight_tf.reporting.compare import compare_report

    if not run_ids:
        raise ConfigError("name a run: deepsight report RUN (or RUN_A RUN_B to compare)")
    if len(set(run_ids)) != len(run_ids):
        raise ConfigError(f"runs {list(run_ids)}: each run once")
    if n_boot < 100:
        raise ConfigError(f"--n-boot {n_boot}: use at least 100 resamples")
    for run_id in run_ids:
        check_name(run_id, "run")
    if len(run_ids) == 1:
        return run_report(workspace, run_ids[0], n_boot, seed)
    return compare_report(workspace, run_ids, n_boot, seed)


__all__ = ["ReportResult", "report"]
