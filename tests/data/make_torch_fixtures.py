"""Writes the torch_tiny_* fixtures with real PyTorch (run once in .venv-bench, not by tests).

The reader in deepsight_tf/model/torch_checkpoint.py must give the same arrays for the zip and
the legacy file as torch.load does; the .npz holds what torch.load gave (bfloat16 as float32).
Made with torch 2.14.1: `.venv-bench/bin/python tests/data/make_torch_fixtures.py`.
"""

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent


def main() -> None:
    torch.manual_seed(0)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = OrderedDict(
        {
            "conv.weight": torch.randn(2, 3, 3, 3),
            "transposed": base.t(),  # non-contiguous: stride (1, 6)
            "sliced": base[1:3, 2:5],  # an offset into a storage shared with "transposed"
            "half": torch.tensor([1.5, -2.25], dtype=torch.float16),
            "bf16": torch.tensor([1.5, -2.0, 3.0], dtype=torch.bfloat16),
            "count": torch.tensor(7, dtype=torch.int64),
            "mask": torch.tensor([True, False, True]),
            "param": torch.nn.Parameter(torch.tensor([0.25, 0.5])),
            "empty": torch.zeros(0, 3),
        }
    )
    torch.save(state, HERE / "torch_tiny_zip.pth")
    torch.save(state, HERE / "torch_tiny_legacy.pth", _use_new_zipfile_serialization=False)
    loaded = torch.load(HERE / "torch_tiny_zip.pth", weights_only=True)
    arrays = {k: (v.float() if v.dtype == torch.bfloat16 else v) for k, v in loaded.items()}
    np.savez(HERE / "torch_tiny_expected.npz", **{k: v.detach().numpy() for k, v in arrays.items()})


if __name__ == "__main__":
    main()
