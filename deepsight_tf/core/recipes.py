"""The recipes: what `deepsight train` does for each backbone unless told otherwise.

The one home of the training defaults that depend on the network. A setting left unset (None)
takes its backbone's recipe value when the settings are constructed, so `deepsight train` with
no flags trains the best measured recipe, and `--backbone resnet18` alone gets the settings
measured for the upsampled ResNets and EfficientNets. Flags and `--config` files set any of
them; a run's settings.toml records the values it trained with.

The defaults that depend on the weights (the stem, frozen epochs, stages to unfreeze, the
head's and backbone's rates) are decided after these, in training.plan.resolve_settings, which
sees the backbone's stages.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

DEFAULT_BACKBONE = "airbench94"

# The settings a recipe decides, with the values every backbone without a recipe of its own
# trains with: ResNet-18 from CIFAR-10's 32 px upsampled to 64 (README's results table), and
# the EfficientNets from their ImageNet weights (Lite0 at its own size, below).
GENERAL_RECIPE: MappingProxyType[str, Any] = MappingProxyType(
    {
        "image_size": 64,
        "batch_size": 128,
        "momentum": None,  # cycled against the rate, 0.95 to 0.85
        "weight_decay": 5e-4,
        "bias_lr_mult": 1.0,
        "anneal": "cos",
        "pct_start": 0.25,
        "div_factor": 25.0,
        "final_div_factor": 1e4,
        "label_smoothing": 0.0,
        "augment": "standard",
        "flip": "random",
        "dropout": 0.2,
        "lookahead": False,
        "tta": "none",
    }
)

# airbench94 (Keller Jordan, 2024): its network, schedule and test-time views in deepsight's
# settings; 90.94% in a 30-minute budget on 2 CPU cores (docs/results.md). Its peak rate (1.5
# at batch 1024) is for training from scratch: from a run's weights the pretrained rule holds.
AIRBENCH94_RECIPE: MappingProxyType[str, Any] = MappingProxyType(
    {
        "image_size": 32,  # the data's own size: no upsampling
        "batch_size": 1024,
        "lr": 1.5,
        "momentum": 0.85,  # constant, as airbench's SGD
        "weight_decay": 0.00887,
        "bias_lr_mult": 64.0,  # BatchNorm biases learn 64x faster
        "anneal": "linear",
        "pct_start": 0.23,
        "div_factor": 5.0,
        "final_div_factor": 2.857,
        "label_smoothing": 0.2,
        "augment": "translate",  # random 2-pixel translation
        "flip": "alternate",  # each image mirrored on every other epoch
        "dropout": 0.0,
        "lookahead": True,
        "tta": "flip-translate",  # 6 test-time views, weighted as airbench weighs them
    }
)

# The other networks designed for CIFAR's 32 px (airbench93, Page's ResNet-9) train at the
# data's own size, not upsampled; the rest of their recipe is the general one, unmeasured.
AT_DATA_SIZE: MappingProxyType[str, Any] = MappingProxyType({"image_size": 32})

# EfficientNet-Lite0 from its ImageNet weights (the transfer recipe otherwise the general one):
# of 64, 96 and 128 px measured at a 10-minute budget on 2 cores, 96 px scored highest (87.66%
# against 85.54% at 64 and 87.49% at 128, whose steps cost 1.9 times as much), and at 30
# minutes 90.49% against 87.94% at 64 (docs/results.md). Lite1 and Lite2 are not measured.
LITE0_RECIPE: MappingProxyType[str, Any] = MappingProxyType({"image_size": 96})

BACKBONE_RECIPES: MappingProxyType[str, MappingProxyType[str, Any]] = MappingProxyType(
    {
        "airbench94": AIRBENCH94_RECIPE,
        "airbench93": AT_DATA_SIZE,
        "resnet9": AT_DATA_SIZE,
        "efficientnet-lite0": LITE0_RECIPE,
    }
)
RECIPE_FIELDS = tuple(GENERAL_RECIPE)


SCRATCH_ONLY = ("lr",)  # recipe settings that hold only when training from scratch


def recipe_for(backbone: str, weights: str = "none") -> dict[str, Any]:
    """The recipe values for `backbone`: its own recipe over the general one (without the
    from-scratch ones when it starts from `weights`)."""
    recipe = {**GENERAL_RECIPE, **BACKBONE_RECIPES.get(backbone, {})}
    if weights != "none":
        recipe = {k: v for k, v in recipe.items() if k not in SCRATCH_ONLY}
    return recipe


def recipe_default(name: str) -> str:
    """A recipe setting's default in words, for its help: which backbone gets what."""
    by_value: dict[str, list[str]] = {}
    for backbone, recipe in BACKBONE_RECIPES.items():
        if name in recipe:
            by_value.setdefault(_words(recipe[name]), []).append(backbone)
    parts = [f"{value} for {_listed(backbones)}" for value, backbones in by_value.items()]
    general = GENERAL_RECIPE.get(name)
    if name in GENERAL_RECIPE:
        parts.append(f"{_words(general)} for the other backbones" if parts else _words(general))
    return "Default: " + ", ".join(parts) + "."


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _words(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
