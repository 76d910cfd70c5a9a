"""``trainer/reach.py``: the matmul DFT is numpy's, the spectral transform sees the whole image, starts as the
identity, serialises, and exports SavedModel -> tf2onnx -> ONNX Runtime at any H x W."""

from __future__ import annotations

import numpy as np
import pytest

SIZES = ((8, 8), (7, 9), (12, 5), (1, 6), (6, 1))  # even, odd, mixed, and a side of one


def random(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("height,width", SIZES)
def test_rfft2_is_numpys(height, width):
    from inpaint.trainer.reach import rfft2

    x = random((2, height, width, 3))
    expected = np.fft.rfft2(x, axes=(1, 2), norm="ortho")
    spectrum = np.asarray(rfft2(x))
    assert spectrum.shape == (2, height, width // 2 + 1, 6)
    np.testing.assert_allclose(spectrum, np.concatenate([expected.real, expected.imag], axis=-1), atol=2e-6)


@pytest.mark.parametrize("height,width", SIZES)
def test_irfft2_is_numpys_on_any_spectrum(height, width):
    """Any spectrum, as a convolution makes: numpy's rule, imaginary parts of W frequencies 0 and W/2 ignored."""
    from inpaint.trainer.reach import irfft2, rfft2

    spectrum = random((2, height, width // 2 + 1, 6), seed=1)
    expected = np.fft.irfft2(spectrum[..., :3] + 1j * spectrum[..., 3:], s=(height, width), axes=(1, 2),
                             norm="ortho")
    np.testing.assert_allclose(np.asarray(irfft2(spectrum, width)), expected, atol=2e-6)
    x = random((1, height, width, 2), seed=2)
    np.testing.assert_allclose(np.asarray(irfft2(rfft2(x), width)), x, atol=2e-6)


def test_spectral_transform_starts_as_the_identity_and_learns():
    import keras
    import tensorflow as tf

    from inpaint.trainer.reach import SpectralTransform

    layer = SpectralTransform()
    x = tf.constant(random((2, 16, 12, 8)))
    with tf.GradientTape() as tape:
        y = layer(x)
        loss = tf.reduce_sum(y * tf.constant(random((2, 16, 12, 8), seed=3)))
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    gradient = tape.gradient(loss, layer.expand.kernel)
    assert float(tf.reduce_max(tf.abs(gradient))) > 0, "a zero-initialised output that never leaves zero"
    assert {w.path.split("/")[-2] for w in layer.weights} == {"reduce", "spectral", "expand"}
    assert isinstance(keras.layers.deserialize(keras.layers.serialize(layer)), SpectralTransform)


def test_spectral_transform_sees_the_opposite_corner_where_convolutions_do_not():
    import keras

    from inpaint.trainer.reach import SpectralTransform

    keras.utils.set_random_seed(0)
    x = random((1, 32, 32, 8))
    moved = x.copy()
    moved[0, 0, 0] += 1.0  # one pixel, top left
    spectral = SpectralTransform(output_initializer="glorot_uniform")
    # As deep as the block (reduce, Fourier-unit conv, expand): three layers, here 3x3 ones.
    convolutions = keras.Sequential([keras.layers.Conv2D(8, 3, padding="same", activation="relu") for _ in range(3)])
    for block, sees in ((spectral, True), (convolutions, False)):
        change = np.abs(np.asarray(block(moved)) - np.asarray(block(x)))[0, -1, -1]  # bottom right
        assert (change.max() > 1e-4) == sees, (block.name, change.max())


def test_spectral_transform_runs_mixed_precision_and_round_trips_a_keras_file(tmp_path):
    import keras

    from inpaint.trainer.reach import SpectralTransform

    inputs = keras.Input((None, None, 8))
    model = keras.Model(inputs, SpectralTransform(hidden_ratio=0.25, output_initializer="glorot_uniform",
                                                  name="reach")(inputs))
    x = random((1, 10, 14, 8))
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert loaded.get_layer("reach").hidden_ratio == 0.25
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-6)

    half = SpectralTransform(output_initializer="glorot_uniform", dtype="mixed_bfloat16")
    y = half(x)
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16" and y.shape == x.shape
    assert np.isfinite(np.asarray(y, np.float32)).all()


def test_spectral_transform_exports_with_dynamic_height_and_width(tmp_path):
    """SavedModel -> tf2onnx (the repo's command and opset) -> ONNX Runtime, one ONNX file at two H x W."""
    import keras
    import onnxruntime as ort
    import tensorflow as tf

    from inpaint.core.contract import SIGNATURE_NAME
    from inpaint.export.onnx_export import convert
    from inpaint.trainer.reach import SpectralTransform

    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 4))
    model = keras.Model(inputs, SpectralTransform(output_initializer="glorot_uniform")(inputs))
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE_NAME, tf.function(lambda x: {"y": model(x, training=False)}, input_signature=[
        tf.TensorSpec([None, None, None, 4], tf.float32, name="x")]))
    archive.write_out(str(tmp_path / "saved"), verbose=False)
    convert(tmp_path / "saved", tmp_path / "model.onnx")

    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert not any(isinstance(side, int) for side in session.get_inputs()[0].shape[1:3]), "H x W fixed in the graph"
    for seed, shape in enumerate(((1, 16, 24, 4), (2, 21, 13, 4))):
        x = random(shape, seed)
        actual = session.run(None, {"x": x})[0]
        expected = model(x).numpy()
        assert actual.shape == shape
        assert np.abs(actual - expected).max() <= 1e-4
        assert np.abs(expected - x).max() > 1e-3  # the block did something to compare


def test_spectral_blocks_added_to_trained_weights_start_as_the_identity(tiny_version, tiny_config):
    """--spectral-blocks on --init-weights without them: same fills as the version until training moves them."""
    import dataclasses

    from inpaint.trainer.model import SPECTRAL_PREFIX
    from inpaint.trainer.savedmodel import load_weights_from_version
    from inpaint.trainer.train import build_model

    plain = build_model(tiny_config)
    load_weights_from_version(plain, tiny_version)
    reaching = build_model(dataclasses.replace(tiny_config, spectral_blocks=1))
    load_weights_from_version(reaching, tiny_version)
    assert any(w.path.startswith(SPECTRAL_PREFIX) for w in reaching.weights)
    rng = np.random.default_rng(0)
    x = rng.random((2, 32, 48, 4)).astype(np.float32)
    x[..., 3] = (x[..., 3] > 0.7).astype(np.float32)
    x[..., :3] *= 1 - x[..., 3:]
    assert np.allclose(np.asarray(plain(x)), np.asarray(reaching(x)), atol=1e-6)
