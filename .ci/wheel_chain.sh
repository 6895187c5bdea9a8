#!/usr/bin/env bash
# The tiny chain obtain -> scrub -> explore -> train -> interpret -> report, run by the
# deepsight installed in VENV (a wheel), from a folder outside the checkout, so that nothing
# of the source tree can stand in for the installed package.
set -euo pipefail
venv=$(cd "$1" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
"$venv/bin/python" - <<'PY'
import deepsight_tf, numpy as np
assert "site-packages" in deepsight_tf.__file__, deepsight_tf.__file__
rng = np.random.default_rng(0)
def make(n):
    labels = np.repeat(np.arange(3), n)
    images = rng.integers(0, 100, (len(labels), 16, 16, 3))
    images[np.arange(len(labels)), :, :, labels] += 150  # each class brightens one channel
    return images.astype(np.uint8), labels
(x_train, y_train), (x_test, y_test) = make(40), make(10)
np.savez("tiny.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
         class_names=np.asarray(["red", "green", "blue"]))
PY
ds=("$venv/bin/deepsight" --workspace ws)
"${ds[@]}" obtain --source tiny.npz --name tiny
"${ds[@]}" scrub --image-size 16 --interp-sample 16
"${ds[@]}" explore
"${ds[@]}" train --run-id wheel --image-size 16 --width-multiplier 0.0625 --batch-size 8 \
  --epochs 1 --augment none --mva 0
"${ds[@]}" interpret wheel --methods gradcam --max-images 4 --context-images 30 \
  --sanity-images 2 --grid-per-class 1 --n-boot 100
"${ds[@]}" report wheel --n-boot 100
test -s ws/runs/wheel/report.html
echo "wheel chain: obtain, scrub, explore, train, interpret, report all ran from the wheel"
