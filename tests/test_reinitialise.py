"""``--reinitialise``: a silent block of trained weights is drawn afresh, fires again, and the network's output
starts where the trained weights left it; nothing else changes; a wrong block name is refused."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner


def tiny_network():
    from inpaint.trainer.model import build_model

    return build_model(depth=2, base_filters=4, coarse_side=32, smoothing=0)


def silence(refiner, block: str) -> None:
    """What training did to the shipped model's up2: biases so negative that the block's ReLUs never fire."""
    for name in (f"{block}_conv1", f"{block}_conv2"):
        layer = refiner.get_layer(name)
        layer.bias.assign(np.full(layer.bias.shape, -1e3, np.float32))


def test_a_silent_block_is_drawn_afresh_fires_again_and_the_rest_is_kept():
    import keras

    from inpaint.trainer.model import reinitialise_blocks

    model = tiny_network()
    refiner = model.get_layer("coarse_to_fine").refiner
    silence(refiner, "up1")
    inputs = np.random.default_rng(0).random((2, 32, 32, 7)).astype(np.float32)
    tap = keras.Model(refiner.input, refiner.get_layer("up1_conv2").output)
    assert not (np.asarray(tap(inputs)) > 0).any()  # silent, as silent_layers.py finds up2 in the shipped model
    before = {layer.name: [np.array(w) for w in layer.weights] for layer in refiner.layers}

    image = np.random.default_rng(1).random((1, 32, 32, 3)).astype(np.float32)
    hole = np.zeros((1, 32, 32, 1), np.float32)
    hole[:, 8:24, 8:24] = 1
    masked = np.concatenate([image * (1 - hole), hole], axis=-1)
    output_before = np.asarray(model(masked))

    assert reinitialise_blocks(model, ("up1",)) == ["up1_conv1", "up1_conv2"]
    changed = {layer.name for layer in refiner.layers
               if any(not np.array_equal(old, np.array(new)) for old, new in zip(before[layer.name], layer.weights))}
    assert changed == {"up1_conv1", "up1_conv2"}
    assert (np.asarray(tap(inputs)) > 0).mean() > 0.1  # it fires again, so gradient reaches it
    # Its last convolution starts small: the output moves by far less than a level (1/255).
    assert np.abs(np.asarray(model(masked)) - output_before).max() < 0.2 / 255


def test_an_unknown_block_is_refused_naming_the_blocks_there_are():
    from inpaint.trainer.model import reinitialise_blocks

    with pytest.raises(ValueError, match="up7: this network's blocks are bottleneck, down0, down1, up0, up1"):
        reinitialise_blocks(tiny_network(), ("up7",))


def test_the_cli_refuses_a_name_that_is_no_block_in_one_line():
    from inpaint.trainer.train import main

    result = CliRunner().invoke(main, ["--reinitialise", "up2,conv9"])
    assert result.exit_code == 2
    assert "conv9: name refiner blocks, e.g. up2" in result.output
    assert "Traceback" not in result.output


def test_reinitialise_without_trained_weights_is_refused_before_tensorflow_starts():
    from inpaint.trainer.train import main

    result = CliRunner().invoke(main, ["--reinitialise", "up2", "--init-weights", "none"])
    assert result.exit_code == 1
    assert "give --init-weights VERSION, or drop --reinitialise" in result.output


def test_a_leaky_block_passes_gradient_where_a_relu_block_is_silent():
    """``--leaky-blocks``: the same weights, silenced as above, still pass signal (and so gradient) when leaky."""
    import keras

    from inpaint.trainer.model import build_model

    inputs = np.random.default_rng(0).random((2, 32, 32, 7)).astype(np.float32)
    outputs = {}
    for leaky in ((), ("up1",)):
        model = build_model(depth=2, base_filters=4, coarse_side=32, smoothing=0, leaky_blocks=leaky)
        refiner = model.get_layer("coarse_to_fine").refiner
        silence(refiner, "up1")
        outputs[leaky] = np.asarray(keras.Model(refiner.input, refiner.get_layer("up1_conv2").output)(inputs))
    assert not outputs[()].any()  # ReLU: nothing
    assert (outputs[("up1",)] < 0).all()  # leaky: every unit passes its (negative) input on, scaled by 0.2
    with pytest.raises(ValueError, match="--leaky-blocks up9: this network's blocks are bottleneck, down0"):
        build_model(depth=2, base_filters=4, coarse_side=32, smoothing=0, leaky_blocks=("up9",))
