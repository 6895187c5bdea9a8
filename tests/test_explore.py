"""deepsight explore: balance tests, streamed pixel statistics, figures, hypotheses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from deepsight_tf.cli import app
from deepsight_tf.core.errors import ConfigError, PrerequisiteError, StaleArtifactError
from deepsight_tf.core.manifest import DATA_INPUT
from deepsight_tf.core.settings import ExploreSettings, ObtainSettings
from deepsight_tf.core.workspace import HYPOTHESES_FILE, Workspace
from deepsight_tf.data.explore import (
    FIGURES,
    LUMA_WEIGHTS,
    class_balance,
    explore,
    pick_samples,
    scan_pixels,
)
from deepsight_tf.data.explore_artifacts import SCHEMA as EXPLORE_SCHEMA
from deepsight_tf.data.explore_artifacts import (
    ExploreResult,
    load_explore_report,
    load_hypotheses,
    load_pixel_stats,
)
from deepsight_tf.data.hypotheses import (
    DEFAULT_CONFUSABLE_PAIRS,
    DEFAULT_GROUPS,
    default_hypotheses,
    parse_hypotheses,
    read_hypotheses_file,
)
from deepsight_tf.data.obtain import obtain

CIFAR10 = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
OTHER = ["apple", "pear", "plum"]


def store(
    tmp_path: Path,
    workspace: Path,
    class_names: list[str],
    train_counts: list[int],
    test_counts: list[int],
    seed: int = 0,
    name: str = "tiny",
) -> dict[str, np.ndarray]:
    """Write an npz with the given images per class and obtain it into `workspace`."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, counts in (("train", train_counts), ("test", test_counts)):
        y = rng.permutation(np.repeat(np.arange(len(class_names)), counts))
        arrays[f"x_{split}"] = rng.integers(0, 256, (len(y), 6, 5, 3), dtype=np.uint8)
        arrays[f"y_{split}"] = y
    npz = tmp_path / f"{name}-{seed}.npz"
    np.savez(npz, class_names=np.asarray(class_names), **arrays)
    obtain(ObtainSettings(source=str(npz), name=name, force=True), Workspace(workspace))
    return arrays


def invoke(runner: CliRunner, workspace: Path, *args: str, json_out: bool = False):
    head = ["--workspace", str(workspace), *(["--json"] if json_out else [])]
    return runner.invoke(app, [*head, "explore", *args])


# Statistics on arrays -------------------------------------------------------------------------
def test_streamed_channel_stats_equal_numpy_whatever_the_chunk_size() -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (37, 6, 5, 3), dtype=np.uint8)
    y = rng.integers(0, 4, 37)
    flat = x.reshape(-1, 3).astype(np.float64)
    for chunk in (1, 4, 10, 1000):
        scan = scan_pixels(x, y, 4, chunk_images=chunk)
        np.testing.assert_allclose(scan.stats.mean, flat.mean(axis=0), rtol=1e-13)
        np.testing.assert_allclose(scan.stats.std, flat.std(axis=0), rtol=1e-13)
        np.testing.assert_allclose(scan.stats.mean_unit, flat.mean(axis=0) / 255, rtol=1e-13)
        np.testing.assert_allclose(scan.stats.std_unit, (flat / 255).std(axis=0), rtol=1e-12)
        for k in range(4):
            np.testing.assert_allclose(scan.class_means[k], x[y == k].mean(axis=0), rtol=1e-13)
    assert scan.stats.n_images == 37


def test_brightness_and_contrast_are_per_image_luma_mean_and_std() -> None:
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (9, 4, 4, 3), dtype=np.uint8)
    scan = scan_pixels(x, np.zeros(9, dtype=np.int64), 1, chunk_images=2)
    luma = x.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255
    np.testing.assert_allclose(scan.brightness, luma.mean(axis=(1, 2)), rtol=1e-12)
    np.testing.assert_allclose(scan.contrast, luma.std(axis=(1, 2)), rtol=1e-12)


def test_known_images_give_known_brightness_and_contrast() -> None:
    grey = np.full((1, 4, 4, 3), 51, dtype=np.uint8)  # 51 / 255 = 0.2 in every channel
    half = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    half[:, :, :2] = 255  # half black, half white: luma 0 or 1, so std 0.5
    red = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    red[..., 0] = 255
    scan = scan_pixels(np.concatenate([grey, half, red]), np.array([0, 1, 2]), 3)
    np.testing.assert_allclose(scan.brightness, [0.2, 0.5, LUMA_WEIGHTS[0]], atol=1e-12)
    np.testing.assert_allclose(scan.contrast, [0.0, 0.5, 0.0], atol=1e-12)


def test_scan_pixels_refuses_non_uint8_rgb() -> None:
    with pytest.raises(ValueError, match="Received: float32"):
        scan_pixels(np.zeros((2, 4, 4, 3), np.float32), np.zeros(2, np.int64), 1)


def test_chi_square_equals_scipy_and_a_hand_computed_value() -> None:
    labels = np.repeat([0, 1, 2], [10, 20, 30])
    result = class_balance(labels, ["a", "b", "c"], "train")
    expected = stats.chisquare([10, 20, 30])
    assert result.chi2 == pytest.approx(expected.statistic, rel=1e-12)
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-12)
    assert result.chi2 == pytest.approx(10.0)  # ((10-20)^2 + 0 + (30-20)^2) / 20
    assert result.dof == 2
    assert result.counts == {"a": 10, "b": 20, "c": 30}
    assert result.imbalance_ratio == pytest.approx(3.0)


def test_empty_split_has_no_chi_square() -> None:
    result = class_balance(np.zeros(0, dtype=np.int64), ["a", "b"], "test")
    assert (result.chi2, result.p_value, result.total, result.imbalance_ratio) == (
        None,
        None,
        0,
        None,
    )


def test_pick_samples_is_seeded_and_stays_within_each_class() -> None:
    labels = np.array([0, 1, 0, 0, 1, 2, 0, 1, 0])
    first = pick_samples(labels, ["a", "b", "c"], 3, seed=5)
    assert first == pick_samples(labels, ["a", "b", "c"], 3, seed=5)
    assert [len(first[c]) for c in "abc"] == [3, 3, 1]
    for index, name in enumerate("abc"):
        assert all(labels[i] == index for i in first[name])
        assert len(set(first[name])) == len(first[name])


# Hypotheses ---------------------------------------------------------------------------------
def test_defaults_register_for_cifar10_names_in_any_order() -> None:
    hypotheses = default_hypotheses(list(reversed(CIFAR10)))
    assert hypotheses.registered and hypotheses.source == "defaults"
    assert hypotheses.groups == {k: list(v) for k, v in DEFAULT_GROUPS.items()}
    assert hypotheses.comparisons == [("rigid", "organic")]
    assert hypotheses.confusable_pairs == list(DEFAULT_CONFUSABLE_PAIRS)


@pytest.mark.parametrize("names", [OTHER, [c for c in CIFAR10 if c != "deer"]])
def test_defaults_do_not_register_without_every_cifar10_class(names: list[str]) -> None:
    hypotheses = default_hypotheses(names)
    assert not hypotheses.registered
    assert hypotheses.groups == {} and hypotheses.confusable_pairs == []
    assert "deer" in hypotheses.note and "--hypotheses" in hypotheses.note


def test_a_valid_file_registers_and_two_groups_are_compared(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    path.write_text(
        json.dumps(
            {
                "groups": {"round": ["apple", "plum"], "long": ["pear"]},
                "confusable_pairs": [["apple", "pear"]],
            }
        )
    )
    hypotheses = read_hypotheses_file(path, OTHER)
    assert hypotheses.source == str(path)
    assert hypotheses.comparisons == [("round", "long")]
    assert hypotheses.confusable_pairs == [("apple", "pear")]


def test_unknown_class_is_a_one_line_config_error_naming_file_and_class(tmp_path: Path) -> None:
    path = tmp_path / "hyp.json"
    path.write_text(json.dumps({"groups": {"a": ["apple"], "b": ["banana"]}}))
    with pytest.raises(ConfigError) as err:
        read_hypotheses_file(path, OTHER)
    message = str(err.value)
    assert str(path) in message and "'banana'" in message and "\n" not in message


def test_malformed_json_is_a_one_line_config_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "hyp.json"
    path.write_text('{"groups": {"a": ["apple"],}')
    with pytest.raises(ConfigError, match="not valid JSON") as err:
        read_hypotheses_file(path, OTHER)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ([], "expected a JSON object"),
        ({"grops": {}}, "unknown key 'grops'"),
        ({"groups": {"a": []}}, "groups.a must be a non-empty list"),
        ({"groups": {"a": ["apple", "apple"]}}, "lists class 'apple' twice"),
        ({"groups": {"a": ["apple"]}, "comparisons": [["a", "z"]]}, "unknown group 'z'"),
        ({"groups": {"a": ["apple"], "b": ["apple"]}}, "share class 'apple'"),
        ({"groups": {"a": ["apple"], "b": ["pear"], "c": ["plum"]}}, "no 'comparisons'"),
        ({"confusable_pairs": [["apple", "apple"]]}, "pair of two different class names"),
        ({"confusable_pairs": [["apple", "kiwi"]]}, "unknown class 'kiwi'"),
        ({"confusable_pairs": "apple/pear"}, "must be a list of pairs"),
    ],
)
def test_schema_violations_are_config_errors(payload: object, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as err:
        parse_hypotheses(payload, OTHER, where="my.json")
    assert str(err.value).startswith("my.json: ")


def test_missing_hypotheses_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        read_hypotheses_file(tmp_path / "absent.json", OTHER)


# The phase ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def explored(tmp_path_factory: pytest.TempPathFactory):
    """A CIFAR-10-named data set, imbalanced in train and balanced in test, explored once."""
    tmp = tmp_path_factory.mktemp("explored")
    workspace = tmp / "ws"
    train_counts = [40, 5, 5, 5, 5, 5, 5, 5, 5, 5]
    arrays = store(tmp, workspace, CIFAR10, train_counts, [3] * 10)
    result = explore(ExploreSettings(samples_per_class=4, seed=3), Workspace(workspace))
    return workspace, arrays, result


def test_explore_reports_balance_and_pixel_stats_of_the_stored_arrays(explored) -> None:
    _, arrays, result = explored
    train, test = result.balance
    assert train.p_value < 1e-6
    assert train.p_value == pytest.approx(stats.chisquare([40] + [5] * 9).pvalue, rel=1e-12)
    assert test.p_value == pytest.approx(1.0) and test.chi2 == pytest.approx(0.0)
    assert any(w.startswith("train classes are not uniform") for w in result.warnings)
    assert not any(w.startswith("test") for w in result.warnings)
    flat = arrays["x_train"].reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(result.pixel_stats.mean, flat.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(result.pixel_stats.std, flat.std(axis=0), rtol=1e-13)


def test_explore_names_the_brightest_and_darkest_classes(explored) -> None:
    _, arrays, result = explored
    luma = arrays["x_train"].astype(np.float64) @ LUMA_WEIGHTS / 255
    per_class = [luma[arrays["y_train"] == k].mean() for k in range(10)]
    assert result.brightest_class == CIFAR10[int(np.argmax(per_class))]
    assert result.darkest_class == CIFAR10[int(np.argmin(per_class))]
    by_name = {row.class_name: row for row in result.appearance}
    assert by_name["cat"].brightness.mean == pytest.approx(per_class[3], rel=1e-12)
    assert by_name["airplane"].n_images == 40


def test_explore_writes_figures_hypotheses_and_a_manifest_citing_its_input(explored) -> None:
    workspace, _, result = explored
    ws = Workspace(workspace)
    folder = ws.explore_dir("tiny")
    manifest = ws.verify(folder, "deepsight explore")
    assert manifest.inputs[DATA_INPUT]["sha256"] == result.input_sha256
    assert set(FIGURES) <= set(manifest.outputs)
    for relative in FIGURES:
        assert (folder / relative).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((folder / "report.json").read_text())
    assert report["samples"]["truck"] == result.samples["truck"]
    assert len(result.samples["airplane"]) == 4 and len(result.samples["truck"]) == 4
    hypotheses = load_hypotheses(ws)
    assert hypotheses.registered and hypotheses.comparisons == [("rigid", "organic")]
    assert hypotheses.registered_at is not None
    stats_back = load_pixel_stats(ws, "tiny")
    assert stats_back == result.pixel_stats
    assert load_explore_report(ws, "tiny") == result  # the typed record, field for field
    assert report["schema"] == EXPLORE_SCHEMA
    del report["schema"]  # written before versions were: the same layout, read as version 0
    assert ExploreResult.from_dict(report).schema == 0


def test_loaders_refuse_a_changed_data_set_and_a_tampered_file(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    store(tmp_path, workspace, OTHER, [4, 4, 4], [2, 2, 2], seed=0)
    ws = Workspace(workspace)
    result = explore(ExploreSettings(samples_per_class=1), ws)
    assert not result.hypotheses.registered
    assert not load_hypotheses(ws).groups  # no defaults for other class names
    hypotheses_path = ws.explore_dir("tiny") / HYPOTHESES_FILE
    hypotheses_path.write_text(json.dumps({"groups": {"x": ["apple"]}}))
    with pytest.raises(StaleArtifactError, match=HYPOTHESES_FILE):
        load_hypotheses(ws)
    explore(ExploreSettings(samples_per_class=1), ws)
    store(tmp_path, workspace, OTHER, [4, 4, 4], [2, 2, 2], seed=1)  # new pixels, same name
    with pytest.raises(StaleArtifactError, match="older data set"):
        load_pixel_stats(ws)


def test_loaders_before_explore_are_prerequisite_errors(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    store(tmp_path, workspace, OTHER, [2, 2, 2], [1, 1, 1])
    with pytest.raises(PrerequisiteError, match="deepsight explore"):
        load_pixel_stats(Workspace(workspace))


# The command --------------------------------------------------------------------------------
def test_explore_before_obtain_exits_4(tmp_path: Path) -> None:
    outcome = invoke(CliRunner(), tmp_path / "empty-ws")
    assert outcome.exit_code == 4, outcome.output
    assert "deepsight obtain" in outcome.output


def test_cli_explore_with_a_hypotheses_file_and_json_output(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    store(tmp_path, workspace, OTHER, [3, 3, 3], [2, 2, 2])
    path = tmp_path / "h.json"
    path.write_text(json.dumps({"confusable_pairs": [["pear", "plum"]]}))
    runner = CliRunner()
    outcome = invoke(runner, workspace, "--hypotheses", str(path), json_out=True)
    assert outcome.exit_code == 0, outcome.output
    payload = json.loads(outcome.stdout)
    assert payload["hypotheses"]["confusable_pairs"] == [["pear", "plum"]]
    assert payload["balance"][0]["p_value"] == pytest.approx(1.0)
    manifest = json.loads((workspace / "explore" / "tiny" / "manifest.json").read_text())
    assert manifest["inputs"]["hypotheses"]["path"] == str(path.resolve())


def test_cli_bad_hypotheses_and_bad_flag_exit_7_with_one_line(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    store(tmp_path, workspace, OTHER, [3, 3, 3], [2, 2, 2])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"groups": {"a": ["apple"], "b": ["banana"]}}))
    runner = CliRunner()
    outcome = invoke(runner, workspace, "--hypotheses", str(path))
    assert outcome.exit_code == 7
    message = outcome.stderr.strip()  # the transient progress bar leaves a blank line
    assert "banana" in message and str(path) in message and "\n" not in message
    assert not (workspace / "explore").exists()
    outcome = invoke(runner, workspace, "--samples-per-class", "0")
    assert outcome.exit_code == 7 and "--samples-per-class" in outcome.stderr
