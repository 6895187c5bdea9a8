"""What to look for in each figure: the captions of the report's figures, by the figure's name in
core/workspace.py."""

from __future__ import annotations

from collections.abc import Sequence

from deepsight_tf.core.workspace import (
    BATCH_FIGURE,
    BORDERLINE_FIGURE,
    BRIGHTNESS_CONTRAST_FIGURE,
    CAM_FIGURE_PREFIX,
    CLASS_BALANCE_FIGURE,
    CLASS_MEANS_FIGURE,
    CONFUSION_FIGURE,
    CONTEXT_FIGURE,
    DELETION_INSERTION_FIGURE,
    DUPLICATES_FIGURE,
    HISTORY_FIGURE,
    HYPOTHESES_FIGURE,
    INTERPOLATION_FIGURE,
    LABEL_ISSUES_FIGURE,
    MOST_CONFUSED_FIGURE,
    PER_CLASS_RECALL_FIGURE,
    RELIABILITY_FIGURE,
    SAMPLES_FIGURE,
    SANITY_FIGURE,
    SCHEDULE_FIGURE,
    TOP_LOSSES_FIGURE,
)

CAPTIONS = {
    DUPLICATES_FIGURE: (
        "Duplicate pairs side by side with their distance, label conflicts and train-test "
        "pairs first. Look for pairs that are not the same photo (false matches) and for "
        "pairs whose two labels differ."
    ),
    BORDERLINE_FIGURE: (
        "Near duplicates closest to the distance threshold: if these still look like one "
        "photo, the threshold is strict enough; if they do not, it is too loose."
    ),
    INTERPOLATION_FIGURE: (
        "One image upsampled to the training size by each method. The selected method should "
        "keep edges sharp without halos (ringing)."
    ),
    CLASS_BALANCE_FIGURE: (
        "Images per class and split. Equal bars mean a balanced data set; a short bar is a "
        "class the model sees less often and will tend to under-predict."
    ),
    SAMPLES_FIGURE: (
        "Random training images per class. Look for wrong labels, images that are not of the "
        "class at all, and a typical background that could become a shortcut."
    ),
    CLASS_MEANS_FIGURE: (
        "The mean image of each class. A distinct colour or layout here (sky behind "
        "airplanes, water behind ships) is a shortcut the model can learn without the object."
    ),
    BRIGHTNESS_CONTRAST_FIGURE: (
        "Brightness and contrast per class. Classes that differ here can be told apart by "
        "global statistics, without looking at shapes."
    ),
    BATCH_FIGURE: (
        "The run's first training batch as the model was fed it: after augmentation, resizing "
        "and mixing (normalisation undone for display), each image with its target. Check "
        "that the augmentation keeps the object recognisable and that the labels fit."
    ),
    SCHEDULE_FIGURE: (
        "Learning rate and momentum of every optimizer step, one cycle per phase (dashed "
        "lines: a phase starts). The rate warms up, peaks, then anneals towards zero."
    ),
    HISTORY_FIGURE: (
        "Loss, macro-F1 and learning rate per epoch, training against validation. Look for "
        "validation loss rising while training loss falls (over-fitting), a gap that keeps "
        "widening, and jumps at the start of a phase."
    ),
    PER_CLASS_RECALL_FIGURE: (
        "Recall per class with its 95% interval. Classes whose intervals overlap are not "
        "shown to differ; the lowest bars are where more data or focus would help."
    ),
    CONFUSION_FIGURE: (
        "Confusion matrix coloured by row (the true class): the diagonal is recall. Bright "
        "cells off the diagonal are the mistakes the model makes most."
    ),
    MOST_CONFUSED_FIGURE: (
        "The most frequent mistakes (true class → predicted). Pairs that share shape or "
        "background are expected; others point to label noise or a shortcut."
    ),
    RELIABILITY_FIGURE: (
        "Reliability diagram before and after temperature scaling. Bars on the diagonal mean "
        "a confidence can be read as a probability; bars below it mean over-confidence."
    ),
    HYPOTHESES_FIGURE: (
        "Each hypothesis registered before training, with its estimate and 95% interval: an "
        "interval clear of zero decides the verdict, one across zero leaves it open."
    ),
    DELETION_INSERTION_FIGURE: (
        "Deletion (lower is better) and insertion (higher is better) curves of each heat-map "
        "method against a random order. A method no better than random does not show what the "
        "model uses."
    ),
    SANITY_FIGURE: (
        "Heat maps as the top layers are randomised one after another. Maps that stay the "
        "same do not depend on what the model learned and should not be trusted."
    ),
    CONTEXT_FIGURE: (
        "Accuracy per class with the centre hidden against the border hidden (same area). A "
        "class that keeps its accuracy without the centre relies on context."
    ),
    TOP_LOSSES_FIGURE: (
        "The most confidently wrong test images. Look for wrong labels, ambiguous images and "
        "objects that are tiny or cut off."
    ),
    LABEL_ISSUES_FIGURE: (
        "Test images whose given label the model doubts most (cleanlab). Some are truly "
        "mislabelled; those inflate the error rate rather than reveal a model weakness."
    ),
}


def cam_caption(stem: str, method: str, class_names: Sequence[str]) -> str:
    """The caption of the CAM grid whose file is `stem`.png (workspace.cam_figure)."""
    name = stem.removeprefix(CAM_FIGURE_PREFIX)
    if name == "top_losses":
        return (
            f"{method} maps on the most confidently wrong test images: did the model look at "
            "the object, at the background, or at something else in the frame?"
        )
    if name.startswith("pair_"):
        pair = name.removeprefix("pair_").replace("_", " and ", 1)
        return (
            f"{method} maps on images of {pair} mistaken for each other: look for the part of "
            "the object (or of the background) that the two classes share."
        )
    for cls in class_names:
        for kind in ("correct", "wrong"):
            if name == f"{cls}_{kind}":
                what = "correctly classified" if kind == "correct" else "misclassified"
                look = (
                    "the heat should sit on the object, not on the background"
                    if kind == "correct"
                    else "where the model looked when it went wrong"
                )
                return f"{method} maps on {what} {cls} images: {look}."
    return f"{method} maps ({name})."
