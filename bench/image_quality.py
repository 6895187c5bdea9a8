"""Image-quality checks on real photos with planted defects: recall per defect and strength,
false flags on the untouched photos, time per image; and cleanvision on the same images
when it is installed (`make bench-setup`).

    .venv/bin/python bench/image_quality.py --workspace /tmp/ws1 [--images 2000]
    .venv-bench/bin/python bench/image_quality.py --workspace /tmp/ws1   # with cleanvision

The photos are the first --images test images of the stored data set. Each defect is
planted on --planted of them (a different draw per defect), at the strengths below; a
planted photo counts as found when the check named for its defect flags it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from deepsight_tf.core.workspace import Workspace  # noqa: E402
from deepsight_tf.data.dataset import load_dataset  # noqa: E402
from deepsight_tf.data.quality import CHECKS, quality_scores  # noqa: E402

from support.synthetic_images import blurred, flattened, posterised  # noqa: E402

# (defect, strength, the issue that should flag it, the transform)
PLANTS = [
    ("darkened x0.35", "dark", lambda im, i: np.rint(im * 0.35).astype(np.uint8)),
    ("darkened x0.2", "dark", lambda im, i: np.rint(im * 0.2).astype(np.uint8)),
    ("brightened to 166+0.35x", "light", lambda im, i: np.rint(166 + im * 0.35).astype(np.uint8)),
    ("brightened to 204+0.2x", "light", lambda im, i: np.rint(204 + im * 0.2).astype(np.uint8)),
    ("flattened (mean colour, +-1 noise)", "near_constant", flattened),
    ("posterised to 8 levels", "low_information", lambda im, i: posterised(im, 8)),
    ("posterised to 4 levels", "low_information", lambda im, i: posterised(im, 4)),
    ("Gaussian blur 1.0 px", "blurry", lambda im, i: blurred(im, 1.0)),
    ("Gaussian blur 1.5 px", "blurry", lambda im, i: blurred(im, 1.5)),
    ("Gaussian blur 2.0 px", "blurry", lambda im, i: blurred(im, 2.0)),
]
CLEANVISION_ISSUE = {
    "dark": "dark",
    "light": "light",
    "near_constant": "low_information",
    "low_information": "low_information",
    "blurry": "blurry",
}


def deepsight_flags(images: np.ndarray) -> dict[str, np.ndarray]:
    scores = quality_scores(images)
    return {c.issue: c.flags(scores[c.score]) for c in CHECKS}


def cleanvision_flags(images: np.ndarray) -> dict[str, np.ndarray] | None:
    """cleanvision's default checks on the same images written as PNG files (None: absent)."""
    try:
        from cleanvision import Imagelab
    except ImportError:
        return None
    from PIL import Image

    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i, image in enumerate(images):
            path = f"{folder}/{i:06d}.png"
            Image.fromarray(image).save(path)
            paths.append(path)
        lab = Imagelab(filepaths=paths)
        issues = sorted(set(CLEANVISION_ISSUE.values()))
        lab.find_issues({name: {} for name in issues}, verbose=False)
        frame = lab.issues.reindex(paths)
        return {name: frame[f"is_{name}_issue"].to_numpy(bool) for name in issues}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default="workspace")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--planted", type=int, default=200, help="photos per defect")
    args = parser.parse_args()
    data, _ = load_dataset(Workspace(args.workspace), args.dataset)
    clean = data.x_test[: args.images]
    rng = np.random.default_rng(0)
    sets = []
    for name, issue, plant in PLANTS:
        chosen = rng.choice(len(clean), size=min(args.planted, len(clean)), replace=False)
        sets.append((name, issue, np.stack([plant(clean[i], int(i)) for i in chosen])))
    everything = np.concatenate([clean, *(s[2] for s in sets)])
    start = time.perf_counter()
    ours = deepsight_flags(everything)
    seconds = time.perf_counter() - start
    print(
        f"{data.name}: {len(clean):,} untouched test photos, {args.planted} planted per defect; "
        f"deepsight scored {len(everything):,} images in {seconds:.2f} s "
        f"({1e6 * seconds / len(everything):.0f} us per image)"
    )
    start = time.perf_counter()
    peer = cleanvision_flags(everything)
    peer_seconds = time.perf_counter() - start
    columns = "deepsight" + (" | cleanvision" if peer is not None else "")
    print(f"\nrecall of planted defects ({columns})")
    offset = len(clean)
    for name, issue, planted in sets:
        part = slice(offset, offset + len(planted))
        offset += len(planted)
        line = f"  {name:38s} {issue:16s} {ours[issue][part].mean():7.1%}"
        if peer is not None:
            line += f" | {peer[CLEANVISION_ISSUE[issue]][part].mean():7.1%}"
        print(line)
    print(f"\nfalse flags on the {len(clean):,} untouched photos")
    for check in CHECKS:
        line = f"  {check.issue:16s} {ours[check.issue][: len(clean)].mean():7.2%}"
        if peer is not None:
            line += f" | {peer[CLEANVISION_ISSUE[check.issue]][: len(clean)].mean():7.2%}"
        print(line)
    if peer is not None:
        print(
            f"\ncleanvision took {peer_seconds:.1f} s (PNG writing included), "
            f"{peer_seconds / seconds:.0f}x deepsight's time"
        )
    else:
        print("\n(cleanvision is not installed here: `make bench-setup` adds it)")


if __name__ == "__main__":
    main()
