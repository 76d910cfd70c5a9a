"""Adversarial training: its losses on known answers, and a real tiny run that publishes a plain network."""

import dataclasses
import json

import numpy as np
import pytest


def test_discriminator_judges_patches_and_sees_the_mask():
    from inpaint.trainer.adversarial import DISCRIMINATOR_LEVELS, build_discriminator

    discriminator = build_discriminator(filters=4)
    logits, *features = discriminator(np.zeros((2, 40, 24, 4), np.float32))
    cell = 2**DISCRIMINATOR_LEVELS
    assert tuple(logits.shape) == (2, 40 // cell, 24 // cell, 1)
    assert len(features) == DISCRIMINATOR_LEVELS + 1
    assert discriminator.input_shape == (None, None, None, 4)


def test_patch_holes_marks_every_cell_that_holds_a_hole_pixel():
    from inpaint.trainer.adversarial import patch_holes

    hole = np.zeros((1, 24, 17, 1), np.float32)
    hole[0, 9, 16] = 1.0  # cell (1, 2): the last, partial column of cells
    cells = np.asarray(patch_holes(hole))
    assert cells.shape == (1, 3, 3, 1)
    assert cells.sum() == 1 and cells[0, 1, 2, 0] == 1


def test_losses_on_known_answers():
    from inpaint.trainer.adversarial import adversarial_loss, discriminator_loss, feature_matching_loss

    target = np.array([[[[1.0], [0.0]]]], np.float32)  # one hole patch, one known patch
    confident_real, confident_fake = np.full_like(target, 20.0), np.full_like(target, -20.0)
    right = np.where(target > 0, -20.0, 20.0).astype(np.float32)
    # A discriminator that calls the truth real and exactly the hole patches fake has (almost) no loss.
    assert float(discriminator_loss(confident_real, right, target)) < 1e-6
    assert float(discriminator_loss(confident_fake, confident_real, target)) > 10
    # The generator is judged on the hole patches only.
    assert float(adversarial_loss(np.array([[[[20.0], [-20.0]]]], np.float32), target)) < 1e-6
    assert float(adversarial_loss(np.array([[[[-20.0], [20.0]]]], np.float32), target)) > 10
    features = [np.ones((1, 2, 2, 3), np.float32), np.zeros((1, 1, 1, 2), np.float32)]
    assert float(feature_matching_loss(features, features)) == 0
    shifted = [f + 0.5 for f in features]
    assert float(feature_matching_loss(features, shifted)) == pytest.approx(0.5)


@pytest.fixture(scope="module")
def adversarial_version(tiny_config, tmp_path_factory):
    """A tiny adversarial run, backed up every epoch; the backup is kept (as a killed run's would be)."""
    from inpaint.trainer import resume
    from inpaint.trainer.train import train

    base = tmp_path_factory.mktemp("adversarial") / "inpaint"
    config = dataclasses.replace(tiny_config, model_base_path=str(base), epochs=2, steps_per_epoch=2,
                                 adversarial_weight=0.05, feature_matching_weight=1.0, discriminator_filters=4,
                                 backup_dir=str(base.parent / "backup"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(resume.RunBackup, "finish", lambda self: None)
        return train(config), config


def test_adversarial_run_publishes_a_version_without_the_discriminator(adversarial_version):
    import tensorflow as tf

    version, config = adversarial_version
    record = json.loads((version / "assets.extra/run.json").read_text())
    assert record["config"]["adversarial_weight"] == 0.05
    for name in ("l1", "adversarial", "feature_matching", "discriminator"):
        assert len(record["history"][name]) == config.epochs and np.isfinite(record["history"][name]).all(), name
    loaded = tf.saved_model.load(str(version))
    names = [variable.name for variable in loaded._all_variables]
    assert names and not [n for n in names if "discriminator" in n], names


def test_a_backup_epoch_publishes_the_network_it_holds(adversarial_version, tmp_path):
    """--publish-checkpoint BACKUP/epoch-N: the run's generator after that epoch, without its discriminator."""
    import tensorflow as tf

    from conftest import random_image
    from inpaint.core.masks import mask_batch
    from inpaint.trainer.train import publish_checkpoint

    version, config = adversarial_version
    epoch = next(p for p in (version.parent.parent / "backup").iterdir() if p.name == "epoch-000002")
    published = publish_checkpoint(epoch, str(tmp_path / "from-backup"))
    record = json.loads((published / "assets.extra/run.json").read_text())
    assert record["published_from"] == str(epoch) and record["steps_done"] == 2 * config.steps_per_epoch
    image = random_image(32, 48, 5)[None]
    mask = mask_batch("strokes", 1, 32, 48, 5)[..., None].astype(np.uint8)
    outputs = [tf.saved_model.load(str(v)).signatures["serving_default"](image=tf.constant(image),
                                                                         mask=tf.constant(mask))["inpainted"].numpy()
               for v in (version, published)]
    assert np.array_equal(outputs[0], outputs[1]), "the last epoch's backup is the published network"


def test_adversarial_version_keeps_the_serving_contract(adversarial_version, tiny_version):
    """Same signatures as an L1-trained version; known pixels bit-exact; holes filled."""
    import tensorflow as tf

    from inpaint.core.masks import mask_batch
    from conftest import random_image

    version, _ = adversarial_version
    plain = tf.saved_model.load(str(tiny_version)).signatures
    signatures = tf.saved_model.load(str(version)).signatures
    assert set(signatures) == set(plain)
    image = random_image(37, 53, 3)[None]
    mask = mask_batch("strokes", 1, 37, 53, 3)[..., None].astype(np.uint8)
    out = signatures["serving_default"](image=tf.constant(image), mask=tf.constant(mask))["inpainted"].numpy()
    assert out.shape == image.shape
    known = mask[..., 0] == 0
    assert np.array_equal(out[known], image[known])
    assert mask.any() and np.abs(out[~known].astype(int) - 0).mean() > 5, "holes are filled, not left black"


def test_adversarial_options_refused_where_they_cannot_run(tiny_config):
    from inpaint.trainer.errors import DistributionError
    from inpaint.trainer.train import check_adversarial

    config = dataclasses.replace(tiny_config, adversarial_weight=0.1)
    with pytest.raises(DistributionError, match="TensorFlow backend"):
        check_adversarial(config, "jax", 1)
    with pytest.raises(DistributionError, match="one worker"):
        check_adversarial(config, "tensorflow", 2)
    check_adversarial(config, "tensorflow", 1)
    check_adversarial(tiny_config, "jax", 2)  # L1 alone runs anywhere
