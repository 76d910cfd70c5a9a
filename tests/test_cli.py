"""The CLIs on real files: the happy path once, and every bad input as one line with exit 1."""

import click
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import random_image, write_png
from inpaint.export.cli import main as export_main
from inpaint.export.evaluate import main as eval_main
from inpaint.trainer.train import main as train_main

TINY = ["--init-weights", "none", "--image-size", "32", "--depth", "2", "--base-filters", "8", "--batch-size", "4",
        "--epochs", "1", "--steps-per-epoch", "2", "--validation-size", "4"]


def assert_one_line_error(result, fragment):
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert fragment in lines[0]
    assert "Traceback" not in result.output


def test_train_cli_on_a_folder_writes_the_next_version(tmp_path):
    for i in range(4):
        write_png(tmp_path / "photos" / f"p{i}.png", random_image(48, 40, seed=i))
    base = tmp_path / "models"
    (base / "1").mkdir(parents=True)  # an existing version: the run must become 2
    result = CliRunner().invoke(train_main, [*TINY, "--data", str(tmp_path / "photos"),
                                             "--model-base-path", str(base)])
    assert result.exit_code == 0, result.output
    assert (base / "2" / "saved_model.pb").is_file()
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]


def test_train_missing_data_folder(tmp_path):
    result = CliRunner().invoke(train_main, [*TINY, "--data", str(tmp_path / "missing"),
                                             "--model-base-path", str(tmp_path / "m")])
    assert_one_line_error(result, "does not exist")
    assert not (tmp_path / "m").exists()


def test_train_folder_without_images(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing")
    result = CliRunner().invoke(train_main, [*TINY, "--data", str(tmp_path), "--model-base-path", str(tmp_path / "m")])
    assert_one_line_error(result, "holds no images")


def test_train_image_smaller_than_crop(tmp_path):
    write_png(tmp_path / "small.png", random_image(20, 20))
    result = CliRunner().invoke(train_main, [*TINY, "--data", str(tmp_path), "--model-base-path", str(tmp_path / "m")])
    assert_one_line_error(result, "smaller than --image-size 32")


def test_export_empty_base_path(tmp_path):
    assert_one_line_error(CliRunner().invoke(export_main, [str(tmp_path)]), "no model versions")


def test_export_missing_version(tiny_version):
    result = CliRunner().invoke(export_main, [str(tiny_version.parent), "--version", "99"])
    assert_one_line_error(result, "version 99 does not exist")


def test_export_saved_model_without_signature(tmp_path):
    import tensorflow as tf

    module = tf.Module()
    module.double = tf.function(lambda x: {"y": 2 * x}, input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "1"), signatures={"predict": module.double})
    result = CliRunner().invoke(export_main, [str(tmp_path)])
    assert_one_line_error(result, "no 'serving_default' signature (found: predict)")
    assert not (tmp_path / "1" / "model.onnx").exists()


def test_eval_version_without_onnx(tmp_path):
    (tmp_path / "1").mkdir()
    assert_one_line_error(CliRunner().invoke(eval_main, [str(tmp_path)]), "has no model.onnx")


def test_eval_missing_data_folder(tiny_version, tmp_path):
    result = CliRunner().invoke(eval_main, [str(tiny_version.parent), "--data", str(tmp_path / "nope")])
    assert_one_line_error(result, "does not exist")


@pytest.mark.parametrize("option", ["--epochs", "--depth", "--image-size"])
def test_non_positive_options_are_usage_errors(option, tmp_path):
    result = CliRunner().invoke(train_main, [option, "0", "--model-base-path", str(tmp_path)])
    assert result.exit_code == 2 and "must be positive" in result.output


def test_every_train_option_reads_its_prefixed_variable(monkeypatch):
    """INPAINT_TRAIN_<OPTION>, one rule for all: --steps-per-epoch is INPAINT_TRAIN_STEPS_PER_EPOCH."""
    options = [param for param in train_main.params if isinstance(param, click.Option)]
    for param in options:
        flag = next(name for name in param.opts if name.startswith("--"))
        assert param.envvar == "INPAINT_TRAIN_" + flag[2:].replace("-", "_").upper(), flag
    for name, value in {"INPAINT_TRAIN_SEED": "7", "INPAINT_TRAIN_MODEL_NAME": "other",
                        "INPAINT_TRAIN_DATA": "samples", "INPAINT_TRAIN_STEPS_PER_EPOCH": "3",
                        "INPAINT_TRAIN_DETERMINISTIC": "false"}.items():
        monkeypatch.setenv(name, value)
    params = train_main.make_context("inpaint-train", ["--seed", "8"]).params
    assert (params["seed"], params["model_name"], params["data"]) == (8, "other", "samples"), "a flag wins"
    assert params["steps_per_epoch"] == 3 and params["deterministic"] is False


@pytest.mark.parametrize("old, new", [("INPAINT_SEED", "INPAINT_TRAIN_SEED"),
                                      ("INPAINT_MODEL", "INPAINT_TRAIN_MODEL_NAME"),
                                      ("INPAINT_STEPS", "INPAINT_TRAIN_STEPS_PER_EPOCH"),
                                      ("INPAINT_BATCH_SIZE", "INPAINT_TRAIN_BATCH_SIZE")])
def test_the_old_variable_names_are_refused_with_the_new_one(old, new, tmp_path):
    result = CliRunner().invoke(train_main, [*TINY, "--model-base-path", str(tmp_path / "m")], env={old: "4"})
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"Error: {old} is no longer read by inpaint-train: set {new} instead"
    assert not (tmp_path / "m").exists()


# Options added after the variables took the INPAINT_TRAIN_ prefix: they never had an unprefixed name.
ADDED_SINCE_THE_PREFIX = {"--reinitialise", "--leaky-blocks"}


def test_each_option_had_one_old_variable_name():
    """The table of old names covers every option the trainer had, once each (INPAINT_VERBOSE included)."""
    from inpaint.trainer.train import UNPREFIXED_ENVVARS

    flags = [next(name for name in param.opts if name.startswith("--")).split("/")[0]
             for param in train_main.params if isinstance(param, click.Option)]
    assert ADDED_SINCE_THE_PREFIX <= set(flags)
    assert sorted(UNPREFIXED_ENVVARS.values()) == sorted(set(flags) - ADDED_SINCE_THE_PREFIX)


def test_export_cli_prints_size_and_parameters(tiny_version):
    result = CliRunner().invoke(export_main, [str(tiny_version.parent), "--version", "1"])
    assert result.exit_code == 0, result.output
    assert "parameters" in result.output and "MiB" in result.output
    assert "max |TF - ONNX| = 0" in result.output or "max |TF - ONNX| = 1" in result.output
    assert np.isfinite(float(result.output.split("size")[1].split("MiB")[0]))
