"""Interpret's explanation steps on a run's model: CAMs, their faithfulness and sanity, context.

Do the heat maps point at what the model uses (deletion and insertion against a random order),
do they depend on the weights at all (cascading randomisation), and does each class lean on
the object or on its surroundings (centre against border occlusion)? Then the CAM grids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from deepsight_tf.core.workspace import (
    CONTEXT_FIGURE,
    DELETION_INSERTION_FIGURE,
    SANITY_FIGURE,
    cam_figure,
)
from deepsight_tf.diagnose import explain, occlusion
from deepsight_tf.diagnose.interpret_record import (
    CentreEnergy,
    ContextSummary,
    FaithfulnessSummary,
    SanitySummary,
)
from deepsight_tf.diagnose.study import Study, stratified_sample

if TYPE_CHECKING:
    from deepsight_tf.diagnose.evaluation import PairConfusion, TopLosses

GRID_PAIR_IMAGES = 8  # images per most-confused pair in its CAM grid


@dataclass(frozen=True)
class Explained:
    """The heat maps' tests as interpret's report keeps them."""

    faithfulness: FaithfulnessSummary
    sanity: SanitySummary
    context: ContextSummary


def explain_run(study: Study, losses: TopLosses, pairs: list[PairConfusion]) -> Explained:
    """Faithfulness, the sanity check and context reliance, their figures drawn."""
    settings = study.settings
    model = study.model
    layer = explain_layer(study)
    predicted = study.probs.argmax(axis=1)
    sample = stratified_sample(study.labels, settings.max_images, settings.seed)
    images = prepare(study, study.data.x_test[sample])
    methods = settings.method_list()
    cams = study.timed(
        "cams",
        lambda: explain.compute_cams_by_method(
            model,
            images,
            predicted[sample],
            layer_name=layer,
            methods=methods,
            progress=study.progress,
        ),
    )
    faith = _faithfulness(study, model, images, predicted[sample], cams, layer)
    sanity = _sanity(study, model, images, predicted[sample], sample, layer)
    context = _context(study, model, cams[methods[0]], sample)
    _class_grids(study, sample, predicted, cams[methods[0]], methods[0])
    _case_grids(study, model, predicted, losses, pairs, layer, methods[0])
    return Explained(faith.summary(), sanity.summary(), context)


def explain_layer(study: Study) -> str:
    from deepsight_tf.model.backbones import get_backbone_spec

    return get_backbone_spec(study.record.settings.backbone).last_conv_layer


def prepare(study: Study, images: np.ndarray) -> np.ndarray:
    """Test images as the model was fed them: the run's own preprocessing."""
    return np.asarray(study.record.preprocessing(images))


def _faithfulness(
    study: Study,
    model: Any,
    images: np.ndarray,
    predicted: np.ndarray,
    cams: dict[str, np.ndarray],
    layer: str,
) -> Any:
    from deepsight_tf.plots import explain as explain_plots

    faith = study.timed(
        "faithfulness",
        lambda: explain.faithfulness(
            model,
            images,
            predicted,
            cams,
            random_grid=explain.feature_grid(model, layer),
            n_boot=study.settings.n_boot,
            seed=study.settings.seed,
        ),
    )
    curves = {name: vars(curve) for name, curve in faith.curves.items()}
    study.figure(
        explain_plots.plot_deletion_insertion(curves, faith.baseline), DELETION_INSERTION_FIGURE
    )
    return faith


def _sanity(
    study: Study,
    model: Any,
    images: np.ndarray,
    predicted: np.ndarray,
    sample: np.ndarray,
    layer: str,
) -> Any:
    from deepsight_tf.plots import explain as explain_plots

    k = min(study.settings.sanity_images, len(sample))
    sanity = study.timed(
        "sanity",
        lambda: explain.sanity_check(
            model, images[:k], predicted[:k], layer_name=layer, seed=study.settings.seed
        ),
    )
    study.figure(
        explain_plots.plot_sanity_check(
            sanity.method,
            sanity.groups,
            sanity.spearman,
            sanity.mean_spearman,
            sanity.threshold,
            sanity.flagged_steps,
            sanity.original_maps,
            sanity.randomised_maps,
            images=study.data.x_test[sample][:k],
        ),
        SANITY_FIGURE,
    )
    return sanity


def _context(study: Study, model: Any, cams: np.ndarray, sample: np.ndarray) -> ContextSummary:
    """Accuracy with the centre hidden against the border hidden, per class; CAM centre energy."""
    settings, labels = study.settings, study.labels
    context_idx = stratified_sample(labels, settings.context_images or None, settings.seed)
    context = study.timed(
        "context",
        lambda: occlusion.context_reliance(
            model,
            study.data.x_test[context_idx],
            labels[context_idx],
            lambda images: prepare(study, images),
            study.names,
            n_boot=settings.n_boot,
            seed=settings.seed,
        ),
    )
    energy = occlusion.centre_energy_by_class(
        cams, labels[sample], study.names, n_boot=settings.n_boot, seed=settings.seed
    )
    study.figure(context_figure(context, energy), CONTEXT_FIGURE)
    return context.summary(energy)


def context_figure(context: occlusion.ContextReliance, energy: CentreEnergy) -> Any:
    """The occlusion test's figure: accuracy per class and condition, and the CAMs' centre
    share."""
    from deepsight_tf.plots import explain as explain_plots

    classes = context.classes
    return explain_plots.plot_context_reliance(
        [c.name for c in classes],
        np.array([[getattr(c, k) for c in classes] for k in occlusion.CONDITIONS]),
        np.array([[getattr(c, f"{k}_ci") for c in classes] for k in occlusion.CONDITIONS]),
        chance=context.chance,
        ci_level=context.ci_level,
        geometry=context.geometry.describe(),
        centre_share=energy.mean,
        centre_share_ci=energy.ci,
        uniform_share=energy.uniform,
    )


def _class_grids(
    study: Study, sample: np.ndarray, predicted: np.ndarray, cams: np.ndarray, method: str
) -> None:
    """Per class, CAMs of images it got right and of images it got wrong."""
    from deepsight_tf.plots import explain as explain_plots

    labels, names = study.labels[sample], study.names
    guessed = predicted[sample]
    correct = guessed == labels
    for c, name in enumerate(names):
        for kind, keep in (("correct", correct), ("wrong", ~correct)):
            chosen = np.flatnonzero((labels == c) & keep)[: study.settings.grid_per_class]
            if len(chosen):
                titles = [f"{name} → {names[guessed[i]]}" for i in chosen]
                study.figure(
                    explain_plots.plot_cam_grid(
                        study.data.x_test[sample][chosen],
                        cams[chosen],
                        titles,
                        pairs_per_row=2,
                        suptitle=f"{method}: {name}, {kind}",
                    ),
                    cam_figure(f"{name}_{kind}"),
                )


def _case_grids(
    study: Study,
    model: Any,
    predicted: np.ndarray,
    losses: TopLosses,
    pairs: list[PairConfusion],
    layer: str,
    method: str,
) -> None:
    """CAMs of the top losses and of the images swapped within each most-confused pair."""
    from deepsight_tf.plots import explain as explain_plots

    labels, names, x_test = study.labels, study.names, study.data.x_test
    cases = {"top_losses": np.asarray(losses.indices)}
    for pair in pairs:
        a, b = names.index(pair.a), names.index(pair.b)
        swapped = ((labels == a) & (predicted == b)) | ((labels == b) & (predicted == a))
        cases[f"pair_{pair.a}_{pair.b}"] = np.flatnonzero(swapped)[:GRID_PAIR_IMAGES]
    for name, indices in cases.items():
        if not len(indices):
            continue
        maps = explain.compute_cams(
            model,
            prepare(study, x_test[indices]),
            predicted[indices],
            layer_name=layer,
            method=method,
        )
        titles = [f"{names[labels[i]]} → {names[predicted[i]]}" for i in indices]
        study.figure(
            explain_plots.plot_cam_grid(x_test[indices], maps, titles, suptitle=name),
            cam_figure(name),
        )
