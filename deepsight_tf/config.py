"""Settings of each phase as dataclasses with their defaults: the one source of truth."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ObtainSettings:
    source: str | None = None  # None: CIFAR-10 through Keras's download and cache
    name: str | None = None  # data set name in the workspace; default from the source
    resize: int | None = None  # resize every image to NxN (needed for mixed sizes)
    strict: bool = False  # refuse instead of skipping unreadable files
    force: bool = False  # read again even when the stored copy is up to date


@dataclass
class ExploreSettings:
    dataset: str | None = None  # None: the only data set in the workspace
    hypotheses: str | None = None  # JSON file of hypotheses; None: CIFAR-10 defaults if they fit
    samples_per_class: int = 8  # images per class in the sample grid
    seed: int = 0  # picks the sample grid's images
