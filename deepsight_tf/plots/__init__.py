"""Figures: the only package that draws. Each function takes arrays and plain values (never
another layer's result types: plots imports nothing above core) and returns a Figure."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from deepsight_tf.core.storage import atomic_write_bytes

# Colour-blind-safe defaults (Okabe-Ito for categories, viridis for heat maps).
OKABE_ITO = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#D55E00",
    "#CC79A7",
    "#56B4E9",
    "#F0E442",
    "#000000",
)
HEATMAP_CMAP = "viridis"


def save_figure(fig: Figure, path: Path, dpi: int = 110) -> Path:
    """Write a figure as PNG atomically and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)
