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


@dataclass
class TrainSettings:
    dataset: str | None = None  # None: the only data set in the workspace
    run_id: str | None = None  # None: <backbone>-<UTC time>
    backbone: str = "resnet18"
    weights: str = "none"  # imagenet | none | KerasHub preset folder | .weights.h5 | run folder
    stem: str | None = None  # cifar | imagenet; None: cifar at <= 32 px from scratch, else imagenet
    image_size: int = 64  # pixels fed to the network (bicubic upsampling from 32)
    interpolation: str | None = None  # None: the method scrub's interpolation study selected
    width_multiplier: float = 1.0  # <1 builds a narrow network (tests, quick runs; weights none)
    dropout: float = 0.2
    augment: str = "standard"  # none | light | standard | strong
    mix: str = "none"  # none | cutmix | mixup
    mix_alpha: float = 1.0
    label_smoothing: float = 0.0
    class_weights: str = "none"  # none | balanced | FILE (per-class recall JSON or metrics.json)
    focus_pairs: str | None = None  # e.g. "cat:dog,automobile:truck": oversampled classes
    focus_factor: float = 2.0  # how much more often focus classes are drawn
    batch_size: int = 128
    frozen_epochs: int | None = None  # phase 1 (head only); None: 1 with pretrained weights, else 0
    epochs: int = 4  # phase 2 (stages unfrozen)
    unfreeze: str | None = None  # "3,4" or "all"; None: "3,4" pretrained, "all" from scratch
    optimizer: str = "sgd"  # sgd (Nesterov) | adamw
    lr: float | None = None  # one-cycle peak rate of the head; None: 0.4 scratch, 0.05 pretrained
    backbone_lr_mult: float | None = None  # backbone rate = lr * this; None: 1 scratch, 0.1 else
    weight_decay: float = 5e-4
    pct_start: float = 0.25  # fraction of each phase spent warming up
    precision: str = "auto"  # auto | float32 | mixed_float16 | mixed_bfloat16
    mva: float = 0.65  # Minimum Viable Accuracy on the test set; below it the exit code is 8
    seed: int = 42
    deterministic: bool = False
    resume: bool = False
    # Commit the training state every this many minutes within an epoch (and at every epoch
    # end); a killed run loses at most this much. 0: at epoch ends only.
    checkpoint_minutes: float = 5.0
    max_train_images: int | None = None  # subsample the training split (quick runs)
    strategy: str = "auto"  # auto | one | mirrored | multiworker (tf.distribute)
    find_lr: bool = False  # run the LR range test instead of training


@dataclass
class ScrubSettings:
    dataset: str | None = None  # None: the only data set in the workspace
    val_size: float = 0.1  # fraction of the training split held out for validation (stratified)
    seed: int = 42  # validation split and interpolation sample
    drop_leaks: bool = False  # drop training images that duplicate a test image
    image_size: int = 64  # training size that the interpolation study upsamples to
    interp_sample: int = 512  # images measured in the interpolation study
    # Near duplicates (see deepsight_tf/duplicates.py): the same photo when both orientations of
    # band-pass structure correlate at r >= 0.8 after alignment, i.e. distance 1 - r <= 0.2.
    # Planted copies (shifts up to 3 px, crops up to 4 px, colour, JPEG down to quality 30)
    # stay below 0.19; random pairs of CIFAR-10 images stay above 0.39.
    near_threshold: float = 0.2
    # Candidates per image from each of the two indexes (layout, spectrum), all verified: 3 + 3
    # find 97% of copies planted among CIFAR-10 (bench/duplicates.py); 5 from the layout index
    # alone found 88%, the shifted copies worst. Verification is most of the run time.
    neighbours: int = 3


@dataclass
class InterpretSettings:
    run_id: str = ""  # the run folder under runs/ to interpret
    methods: str = "gradcam,gradcam++,scorecam,layercam"  # CAM methods (comma-separated)
    max_images: int = 100  # test images for CAM maps, faithfulness and the sanity check
    context_images: int | None = 5000  # test images for the occlusion test; None: all
    sanity_images: int = 16
    grid_per_class: int = 4  # CAM grid: correct and wrong images per class
    n_boot: int = 2000  # bootstrap resamples for every confidence interval
    seed: int = 0
