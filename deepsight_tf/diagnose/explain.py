"""Class activation maps (Grad-CAM family, via tf-keras-vis) and tests of whether to trust them."""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import scipy.ndimage
import scipy.stats
from tf_keras_vis.gradcam import Gradcam
from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
from tf_keras_vis.layercam import Layercam
from tf_keras_vis.scorecam import Scorecam
from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
from tf_keras_vis.utils.scores import CategoricalScore

from deepsight_tf.core.checks import verify_labels
from deepsight_tf.core.progress import Progress
from deepsight_tf.core.settings import CAM_METHODS, DEFAULT_ALPHA, DEFAULT_N_BOOT
from deepsight_tf.diagnose.bootstrap import bootstrap_ci, verdict_from_ci
from deepsight_tf.diagnose.interpret_record import (
    FaithfulnessSummary,
    MethodFaithfulness,
    SanitySummary,
)
from deepsight_tf.model.backbones import HEAD_PREFIX, randomisation_cascade, stage_of
from deepsight_tf.model.fastconv import accelerate_convolutions

METHODS = CAM_METHODS
_EXPLAINERS = {
    "gradcam": Gradcam,
    "gradcam++": GradcamPlusPlus,
    "scorecam": Scorecam,
    "layercam": Layercam,
}
SCORE_CAM_MAX_N = 16  # Faster-Score-CAM: the channels with the largest spatial variance
BASELINES = ("mean", "blur")
BLUR_SIGMA_FRACTION = 1 / 8  # "blur" baseline: Gaussian sigma as a share of the image side
PREDICT_BATCH = 256
SANITY_THRESHOLD = 0.5  # mean Spearman above this after randomisation: the maps did not change
_KERNEL_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel")
_STAGE_GROUP = re.compile(r"^stage(\d+)$")


# --- input checks ---------------------------------------------------------------------------------


def _check_images(model: keras.Model, images: Any) -> np.ndarray:
    images = np.asarray(images, dtype=np.float32)
    expected = tuple(model.input_shape[1:])
    if images.ndim != 4 or len(images) == 0 or tuple(images.shape[1:]) != expected:
        raise ValueError(
            f"images must be a non-empty batch of preprocessed (N, *{expected}) model inputs. "
            f"Received: shape {images.shape}"
        )
    return images


def _check_classes(model: keras.Model, class_indices: Any, n: int) -> np.ndarray:
    classes = np.asarray(class_indices)
    if classes.shape != (n,):
        raise ValueError(
            f"class_indices must be {n} integers, one per image. Received: {classes.shape}"
        )
    verify_labels(classes, int(model.output_shape[-1]), where="class_indices")
    return classes.astype(np.int64)


def _check_maps(cams: Any, images: np.ndarray, what: str = "cams") -> np.ndarray:
    cams = np.asarray(cams, dtype=np.float32)
    if cams.shape != images.shape[:3]:
        raise ValueError(
            f"{what} must be one (H, W) map per image, {images.shape[:3]}. "
            f"Received: shape {cams.shape}"
        )
    return cams


def _check_layer(model: keras.Model, layer_name: str) -> int:
    """The number of channels of `layer_name`'s output, which must be a 4-D feature map."""
    try:
        layer = model.get_layer(layer_name)
    except ValueError:
        raise ValueError(
            f"layer_name must name a layer of the model. Received: {layer_name!r}"
        ) from None
    shape = layer.output.shape
    if len(shape) != 4:
        raise ValueError(
            f"layer_name must name a layer with an (N, h, w, C) output. "
            f"Received: {layer_name!r} with output shape {shape}"
        )
    return int(shape[-1])


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}. Received: {method!r}")


# --- class activation maps ------------------------------------------------------------------------


def _linear_clone(model: keras.Model) -> keras.Model:
    """A copy of the model whose output layer returns logits.

    Grad-CAM's gradients are those of the class score before the softmax (Selvaraju et al.):
    through a saturated softmax they vanish. Score-CAM applies its own softmax to the outputs,
    so it too needs logits. The copy leaves the caller's model untouched. Its convolutions get
    deepsight's gradients (fastconv), which are faster and avoid a oneDNN kernel that crashes
    on narrow layers, whatever model the caller loaded or cloned.
    """
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    accelerate_convolutions(clone)
    ReplaceToLinear()(clone)
    # Score-CAM calls predict() on the masked inputs; without this it prints a progress bar.
    clone.predict = functools.partial(clone.predict, verbose=0)
    return clone


def compute_cams_by_method(
    model: keras.Model,
    images: np.ndarray,
    class_indices: np.ndarray,
    *,
    layer_name: str,
    methods: Sequence[str] = METHODS,
    batch_size: int = 32,
    score_cam_max_n: int = SCORE_CAM_MAX_N,
    progress: Progress | None = None,
) -> dict[str, np.ndarray]:
    """{method: (N, H, W) float32 maps in [0, 1]} for preprocessed images and target classes.

    Every map is tf-keras-vis's: read at `layer_name` itself (no search for a Conv2D, since the
    registry names a block output), ReLU, upsampled to the input size (linear, corners
    aligned), min-max normalised per image (an all-zero map stays zero). Gradients are taken
    of the class logit (see `_linear_clone`). Score-CAM is Faster-Score-CAM with
    `score_cam_max_n` channels and runs one image per call: tf-keras-vis picks those channels
    over the whole batch, so in a batch an image's map would depend on its neighbours. Its
    masked copies are predicted `batch_size` at a time.
    """
    images = _check_images(model, images)
    classes = _check_classes(model, class_indices, len(images))
    channels = _check_layer(model, layer_name)
    for method in methods:
        _check_method(method)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive. Received: {batch_size}")
    if score_cam_max_n < 1:
        raise ValueError(f"score_cam_max_n must be at least 1. Received: {score_cam_max_n}")

    linear = _linear_clone(model)
    maps: dict[str, np.ndarray] = {}
    for method in methods:
        explainer = _EXPLAINERS[method](linear, clone=False)
        extra: dict[str, Any] = {}
        step = batch_size
        if method == "scorecam":
            extra = {"max_N": min(score_cam_max_n, channels), "batch_size": batch_size}
            step = 1
        out = np.empty(images.shape[:3], np.float32)
        for start in range(0, len(images), step):
            stop = min(start + step, len(images))
            with warnings.catch_warnings():
                # Score-CAM predicts on a one-element list; Keras 3 warns about the structure.
                warnings.filterwarnings("ignore", message="The structure of `inputs`")
                out[start:stop] = explainer(
                    CategoricalScore(classes[start:stop].tolist()),
                    images[start:stop],
                    penultimate_layer=layer_name,
                    seek_penultimate_conv_layer=False,
                    **extra,
                )
            if progress is not None:
                progress(f"class activation maps: {method}", stop, len(images))
        maps[method] = np.clip(out, 0.0, 1.0)
    return maps


def compute_cams(
    model: keras.Model,
    images: np.ndarray,
    class_indices: np.ndarray,
    *,
    layer_name: str,
    method: str = "gradcam",
    batch_size: int = 32,
    score_cam_max_n: int = SCORE_CAM_MAX_N,
    progress: Progress | None = None,
) -> np.ndarray:
    """(N, H, W) float32 maps in [0, 1] of one method; see compute_cams_by_method."""
    return compute_cams_by_method(
        model,
        images,
        class_indices,
        layer_name=layer_name,
        methods=(method,),
        batch_size=batch_size,
        score_cam_max_n=score_cam_max_n,
        progress=progress,
    )[method]


def feature_grid(model: keras.Model, layer_name: str) -> tuple[int, int]:
    """The (h, w) of the feature map a CAM is read from: the CAM's true resolution."""
    _check_layer(model, layer_name)
    shape = model.get_layer(layer_name).output.shape
    return int(shape[1]), int(shape[2])


# --- deletion and insertion -----------------------------------------------------------------------


@dataclass
class CurveResult:
    """Deletion and insertion curves of one pixel ordering, one row per image.

    Deletion replaces the top-ranked share of pixels by the baseline; insertion starts from the
    baseline and reveals the top-ranked share. Each value is the model's output (probability)
    for the target class. AUCs are trapezoids over the share in [0, 1].
    """

    fractions: np.ndarray  # (steps + 1,) share of pixels removed or revealed, 0..1
    deletion: np.ndarray  # (N, steps + 1)
    insertion: np.ndarray  # (N, steps + 1)
    deletion_auc: np.ndarray  # (N,) lower is better: the evidence goes first
    insertion_auc: np.ndarray  # (N,) higher is better: the evidence comes first
    baseline: str


def baseline_images(images: np.ndarray, baseline: str | Sequence[float] = "mean") -> np.ndarray:
    """What "removed" pixels become, in model-input units, one image per input.

    "mean": the per-channel mean of `images` (a flat grey of the data's average colour);
    "blur": a Gaussian blur with sigma 1/8 of the image side, keeping only coarse colour;
    three numbers: that per-channel value (e.g. the training mean after normalisation).
    """
    images = np.asarray(images, dtype=np.float32)
    if isinstance(baseline, str):
        if baseline == "mean":
            return np.broadcast_to(images.mean(axis=(0, 1, 2)), images.shape).astype(np.float32)
        if baseline == "blur":
            sigma = max(1.0, BLUR_SIGMA_FRACTION * min(images.shape[1:3]))
            return scipy.ndimage.gaussian_filter(
                images, sigma=(0, sigma, sigma, 0), mode="reflect"
            ).astype(np.float32)
        raise ValueError(
            f"baseline must be one of {BASELINES} or one value per channel. Received: {baseline!r}"
        )
    values = np.asarray(baseline, dtype=np.float32)
    if values.shape != (images.shape[-1],):
        raise ValueError(
            f"baseline must be one of {BASELINES} or one value per channel. Received: {baseline!r}"
        )
    return np.broadcast_to(values, images.shape).astype(np.float32)


def _baseline_label(baseline: str | Sequence[float]) -> str:
    if isinstance(baseline, str):
        return baseline
    return "constant " + ", ".join(f"{float(v):.4g}" for v in baseline)


def _pixel_ranks(cams: np.ndarray, seed: int) -> np.ndarray:
    """(N, H*W) rank of each pixel, 0 = highest map value; ties in a seeded random order."""
    flat = cams.reshape(len(cams), -1)
    # Ties are common (ReLU zeros, flat upsampled cells); a raster-order tie-break would remove
    # the top rows first and bias the curves.
    jitter = np.random.default_rng(seed).random(flat.shape)
    order = np.lexsort((jitter, -flat), axis=-1)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(flat.shape[1])[None, :], axis=-1)
    return ranks


def _class_probabilities(model: keras.Model, inputs: np.ndarray, classes: np.ndarray) -> np.ndarray:
    outputs = model.predict(inputs, batch_size=PREDICT_BATCH, verbose=0)
    return np.asarray(outputs, dtype=np.float64)[np.arange(len(inputs)), classes]


def deletion_insertion(
    model: keras.Model,
    images: np.ndarray,
    class_indices: np.ndarray,
    cams: np.ndarray,
    *,
    steps: int = 16,
    baseline: str | Sequence[float] = "mean",
    batch_size: int = 16,
    seed: int = 0,
    progress: Progress | None = None,
) -> CurveResult:
    """Deletion and insertion curves (Petsiuk et al., RISE) of preprocessed images in map order.

    At step k of `steps`, the round(k / steps * H * W) pixels ranked highest by the map (all
    channels of a pixel together) are replaced by `baseline_images(images, baseline)`
    (deletion) or are the only ones shown on it (insertion). Everything happens at the
    model's input resolution; `batch_size` images (2 * (steps + 1) inputs each) per predict.
    """
    images = _check_images(model, images)
    classes = _check_classes(model, class_indices, len(images))
    cams = _check_maps(cams, images)
    if steps < 1:
        raise ValueError(f"steps must be at least 1. Received: {steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive. Received: {batch_size}")
    base = baseline_images(images, baseline)
    n, h, w, c = images.shape
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.round(fractions * h * w).astype(np.int64)
    ranks = _pixel_ranks(cams, seed)
    deletion = np.empty((n, steps + 1))
    insertion = np.empty((n, steps + 1))
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        chosen = ranks[start:stop, None, :] < counts[None, :, None]  # (b, steps + 1, H*W)
        chosen = chosen.reshape(stop - start, steps + 1, h, w, 1)
        original = images[start:stop, None]
        filled = base[start:stop, None]
        removed = np.where(chosen, filled, original).reshape(-1, h, w, c)
        revealed = np.where(chosen, original, filled).reshape(-1, h, w, c)
        targets = np.repeat(classes[start:stop], steps + 1)
        probs = _class_probabilities(
            model, np.concatenate([removed, revealed]), np.concatenate([targets, targets])
        ).reshape(2, stop - start, steps + 1)
        deletion[start:stop], insertion[start:stop] = probs
        if progress is not None:
            progress("deletion and insertion curves", stop, n)
    return CurveResult(
        fractions=fractions,
        deletion=deletion,
        insertion=insertion,
        deletion_auc=np.trapezoid(deletion, fractions, axis=1),
        insertion_auc=np.trapezoid(insertion, fractions, axis=1),
        baseline=_baseline_label(baseline),
    )


def random_maps(
    n: int, size: tuple[int, int], grid: tuple[int, int] | None = None, seed: int = 0
) -> np.ndarray:
    """(n, H, W) uniform random maps: a random pixel order for the deletion baseline.

    With `grid` (the CAM's feature-map size, see feature_grid) the noise is drawn on that grid
    and upsampled like a CAM, so the random order removes regions as coarse as the CAM's:
    a fairer opponent than scattered single pixels, which a model barely notices.
    """
    rng = np.random.default_rng(seed)
    if grid is None:
        return rng.random((n, *size)).astype(np.float32)
    coarse = rng.random((n, *grid))
    factors = (1.0, size[0] / grid[0], size[1] / grid[1])
    return scipy.ndimage.zoom(coarse, factors, order=1).astype(np.float32)


@dataclass
class FaithfulnessReport:
    """Every method's deletion/insertion result and the random baseline of the same run."""

    methods: dict[str, MethodFaithfulness]
    curves: dict[str, CurveResult]  # per method, and "random"
    steps: int
    baseline: str
    random_grid: tuple[int, int] | None
    ci_level: float
    seed: int

    def summary(self) -> FaithfulnessSummary:
        """What report.json keeps (per-image curves stay in memory)."""
        return FaithfulnessSummary(
            steps=self.steps,
            baseline=self.baseline,
            random_grid=list(self.random_grid) if self.random_grid else None,
            ci_level=self.ci_level,
            seed=self.seed,
            methods=dict(self.methods),
        )


def _wilcoxon_p(gains: np.ndarray) -> float:
    if len(gains) < 2 or np.all(gains == 0):
        return 1.0
    return float(scipy.stats.wilcoxon(gains).pvalue)


def _mean_over_last(values: np.ndarray) -> np.ndarray:
    return values.mean(axis=-1)


def faithfulness(
    model: keras.Model,
    images: np.ndarray,
    class_indices: np.ndarray,
    cams_by_method: Mapping[str, np.ndarray],
    *,
    steps: int = 16,
    baseline: str | Sequence[float] = "mean",
    random_grid: tuple[int, int] | None = None,
    n_boot: int = DEFAULT_N_BOOT,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> FaithfulnessReport:
    """Does each method's pixel order beat a random order on deletion and insertion?

    The random order (random_maps with `random_grid`) runs on the same images, baseline and
    steps. Per image, gain = random - method deletion AUC and method - random insertion AUC;
    a paired percentile bootstrap over images gives the CI of the mean gain, Wilcoxon's
    signed-rank test a p-value. Verdict: "beats random" when both CIs lie above 0, "worse
    than random" when either lies below 0, else "inconclusive".
    """
    images = _check_images(model, images)
    if not cams_by_method:
        raise ValueError("cams_by_method needs at least one method. Received: {}")
    orders = {"random": random_maps(len(images), images.shape[1:3], random_grid, seed)}
    orders.update({name: _check_maps(cams, images) for name, cams in cams_by_method.items()})
    curves: dict[str, CurveResult] = {}
    for name, cams in orders.items():
        report = None
        if progress is not None:
            report = functools.partial(_relabel, progress, f"deletion and insertion: {name}")
        curves[name] = deletion_insertion(
            model,
            images,
            class_indices,
            cams,
            steps=steps,
            baseline=baseline,
            batch_size=batch_size,
            seed=seed,
            progress=report,
        )
    chance = curves["random"]
    results = {
        name: _method_faithfulness(name, curves[name], chance, n_boot, alpha, seed)
        for name in cams_by_method
    }
    return FaithfulnessReport(
        methods=results,
        curves=curves,
        steps=steps,
        baseline=_baseline_label(baseline),
        random_grid=tuple(random_grid) if random_grid else None,
        ci_level=1 - alpha,
        seed=seed,
    )


def _method_faithfulness(
    name: str, curve: CurveResult, chance: CurveResult, n_boot: int, alpha: float, seed: int
) -> MethodFaithfulness:
    """One method's gains over the random order, with intervals and a verdict."""
    deletion_gain = chance.deletion_auc - curve.deletion_auc
    insertion_gain = curve.insertion_auc - chance.insertion_auc
    d_mean, d_low, d_high = bootstrap_ci(
        _mean_over_last, deletion_gain, n_boot=n_boot, alpha=alpha, seed=seed
    )
    i_mean, i_low, i_high = bootstrap_ci(
        _mean_over_last, insertion_gain, n_boot=n_boot, alpha=alpha, seed=seed
    )
    verdicts = {verdict_from_ci(d_low, d_high), verdict_from_ci(i_low, i_high)}
    if verdicts == {"supported"}:
        verdict = "beats random"
    elif "contradicted" in verdicts:
        verdict = "worse than random"
    else:
        verdict = "inconclusive"
    return MethodFaithfulness(
        method=name,
        n_images=len(curve.deletion_auc),
        deletion_auc=float(curve.deletion_auc.mean()),
        random_deletion_auc=float(chance.deletion_auc.mean()),
        deletion_gain=d_mean,
        deletion_gain_ci=(d_low, d_high),
        deletion_p=_wilcoxon_p(deletion_gain),
        insertion_auc=float(curve.insertion_auc.mean()),
        random_insertion_auc=float(chance.insertion_auc.mean()),
        insertion_gain=i_mean,
        insertion_gain_ci=(i_low, i_high),
        insertion_p=_wilcoxon_p(insertion_gain),
        verdict=verdict,
    )


def _relabel(progress: Progress, task: str, _inner_task: str, done: int, total: int) -> None:
    progress(task, done, total)


# --- sanity check (Adebayo et al., cascading model randomisation) ---------------------------------


@dataclass
class SanityCheckResult:
    """How much the maps change as the model's top layers are randomised, cumulatively.

    Step k randomises groups[0..k] (the head first, then down through the last stage). A map
    that still correlates with the trained model's map after randomisation (mean Spearman
    above `threshold`) explains something other than what the model learned.
    """

    method: str
    layer_name: str
    groups: list[str]
    spearman: np.ndarray  # (len(groups), N) per image, nan where the trained map is constant
    mean_spearman: list[float]
    threshold: float
    flagged_steps: list[str]  # steps whose mean Spearman exceeds the threshold
    flagged_images: list[int]  # images whose map survives the full cascade above the threshold
    original_maps: np.ndarray  # (n_examples, H, W) for the figure
    randomised_maps: np.ndarray  # (len(groups), n_examples, H, W)
    seed: int
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        self.passed = not self.flagged_steps

    def summary(self) -> SanitySummary:
        """What report.json keeps (no maps)."""
        return SanitySummary(
            method=self.method,
            layer_name=self.layer_name,
            groups=list(self.groups),
            mean_spearman=[float(v) for v in self.mean_spearman],
            threshold=self.threshold,
            flagged_steps=list(self.flagged_steps),
            flagged_images=[int(i) for i in self.flagged_images],
            passed=self.passed,
            seed=self.seed,
        )


def default_randomisation(model: keras.Model) -> tuple[str, ...]:
    """The cascade: "head", then what the model's backbone family randomises next, top down
    (the registry decides: the ResNets' last-stage blocks, EfficientNet's head conv and
    last-grid blocks, airbench's last convolutions; the head alone outside the registry)."""
    return randomisation_cascade(model)


def _group_layers(model: keras.Model, group: str) -> list[keras.layers.Layer]:
    """Layers of a group: "head" (head_*), "stageN" (a registry stage), else a name or prefix."""
    stage = _STAGE_GROUP.match(group)
    if group == "head":
        chosen = [la for la in model.layers if la.name.startswith(HEAD_PREFIX)]
    elif stage:
        chosen = [la for la in model.layers if stage_of(la.name) == int(stage.group(1))]
    else:
        chosen = [la for la in model.layers if la.name == group or la.name.startswith(group + "_")]
    kernels = [la for la in chosen if any(w.name in _KERNEL_NAMES for w in la.weights)]
    if not kernels:
        raise ValueError(
            f"randomise groups must name layers with kernels (head, stageN, a layer name or "
            f"prefix). Received: {group!r}"
        )
    return kernels


def _randomise(layers: Sequence[keras.layers.Layer], rng: np.random.Generator) -> None:
    """Redraw each kernel from N(0, sigma^2), sigma its trained standard deviation.

    Keeping each kernel's scale keeps activations in the range the (kept) biases and
    BatchNormalization statistics expect, so maps change because the learned structure is
    gone, not because the signal died out.
    """
    for layer in layers:
        for weight in layer.weights:
            if weight.name in _KERNEL_NAMES:
                values = np.asarray(weight.numpy())
                fan_in = int(np.prod(values.shape[:-1])) or 1
                sigma = float(values.std()) or 1.0 / np.sqrt(fan_in)
                weight.assign(rng.normal(0.0, sigma, values.shape).astype(values.dtype))


def spearman_per_image(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each pair of maps (ties share their mean rank).

    nan where the first map is constant (it ranks nothing); 0 where only the second is
    (the ranking was lost).
    """
    first = np.asarray(first, dtype=np.float64).reshape(len(first), -1)
    second = np.asarray(second, dtype=np.float64).reshape(len(second), -1)
    if first.shape != second.shape:
        raise ValueError(
            f"maps must have the same shape. Received: {first.shape} and {second.shape}"
        )
    a = scipy.stats.rankdata(first, axis=1)
    b = scipy.stats.rankdata(second, axis=1)
    a -= a.mean(axis=1, keepdims=True)
    b -= b.mean(axis=1, keepdims=True)
    norm_a = np.sqrt((a * a).sum(axis=1))
    norm_b = np.sqrt((b * b).sum(axis=1))
    rho = np.zeros(len(a))
    both = (norm_a > 0) & (norm_b > 0)
    rho[both] = (a[both] * b[both]).sum(axis=1) / (norm_a[both] * norm_b[both])
    rho[norm_a == 0] = np.nan
    return rho


def sanity_check(
    model: keras.Model,
    images: np.ndarray,
    class_indices: np.ndarray,
    *,
    layer_name: str,
    method: str = "gradcam",
    randomise: Sequence[str] | None = None,
    threshold: float = SANITY_THRESHOLD,
    n_examples: int = 4,
    batch_size: int = 32,
    seed: int = 0,
    progress: Progress | None = None,
) -> SanityCheckResult:
    """Cascading randomisation of the top layers, on a clone; Spearman of each map to the original.

    `randomise` lists the groups in cascade order (default_randomisation: head, then the last
    stage's blocks top-down); each step adds one group to the randomised set.
    """
    images = _check_images(model, images)
    classes = _check_classes(model, class_indices, len(images))
    groups = list(default_randomisation(model) if randomise is None else randomise)
    if not groups:
        raise ValueError("randomise needs at least one group. Received: ()")
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    layers = [_group_layers(clone, group) for group in groups]

    def maps_of(m: keras.Model) -> np.ndarray:
        return compute_cams(
            m, images, classes, layer_name=layer_name, method=method, batch_size=batch_size
        )

    original = maps_of(clone)
    rng = np.random.default_rng(seed)
    correlations, examples = [], []
    for step, group_layers in enumerate(layers):
        _randomise(group_layers, rng)
        randomised = maps_of(clone)
        correlations.append(spearman_per_image(original, randomised))
        examples.append(randomised[:n_examples])
        if progress is not None:
            progress(f"sanity check: randomising {groups[step]}", step + 1, len(groups))
    spearman = np.stack(correlations)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan rows: every map constant
        means = [float(v) for v in np.nanmean(spearman, axis=1)]
    return SanityCheckResult(
        method=method,
        layer_name=layer_name,
        groups=groups,
        spearman=spearman,
        mean_spearman=means,
        threshold=threshold,
        flagged_steps=[g for g, m in zip(groups, means, strict=True) if m > threshold],
        flagged_images=[int(i) for i in np.flatnonzero(spearman[-1] > threshold)],
        original_maps=original[:n_examples],
        randomised_maps=np.stack(examples),
        seed=seed,
    )
