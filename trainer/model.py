"""The founding report's U-Net, its loss, and the serving graph exported around it.

The network sees the image with its holes zeroed plus the mask as a fourth
channel, and predicts all three colour channels. The serving graph takes
uint8 tensors of any size, pads them to a multiple of ``2**depth``, runs the
network, crops back and composites, so known pixels come back bit-exact.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from inpaint.core.contract import IMAGE, MASK, OUTPUT



def _conv_block(x, filters: int, name: str):
    """Two 3x3 ReLU convolutions, as in the report."""
    x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"{name}_conv1")(x)
    return layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"{name}_conv2")(x)


class BoundaryColourCorrection(layers.Layer):
    """Make the prediction agree with the known pixels around each hole, as seamless cloning does.

    The network's error on the ring of known pixels just outside the holes
    (``known - prediction``) is spread into the holes with a normalized
    push-pull pyramid: at each level a cell takes the mean error of the ring
    pixels it holds, or else the bilinearly up-sampled coarser level. Adding
    this smooth field removes the low-frequency colour drift a small network
    leaves in its fills. Plain ops, so it exports to ONNX; float32 throughout.
    """

    def __init__(self, levels: int, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.levels = levels
        self.pool = layers.AveragePooling2D(2, dtype="float32")

    def call(self, inputs):
        network_input, prediction = inputs
        known, hole = network_input[..., :3], network_input[..., 3:]
        ring = tf.nn.max_pool2d(hole, 3, 1, "SAME") - hole
        sums, weights = [(known - prediction) * ring], [ring]
        for _ in range(self.levels):
            sums.append(self.pool(sums[-1]))
            weights.append(self.pool(weights[-1]))

        def mean_error(level):
            return sums[level] / tf.maximum(weights[level], 1e-6)

        field = tf.where(weights[-1] > 1e-6, mean_error(self.levels), 0.0)
        for level in reversed(range(self.levels)):
            coarse = tf.image.resize(field, tf.shape(sums[level])[1:3], method="bilinear")
            field = tf.where(weights[level] > 1e-6, mean_error(level), coarse)
        return prediction + field * hole

    def compute_output_shape(self, input_shapes):
        return input_shapes[1]

    def get_config(self):
        return {**super().get_config(), "levels": self.levels}


def build_unet(depth: int = 4, base_filters: int = 16, colour_correction: bool = True) -> keras.Model:
    """U-Net: ``depth`` down-sampling blocks, a bottleneck, mirrored up-sampling with skips.

    Input ``(N, H, W, 4)`` float: RGB in [0, 1] with holes zeroed, then the mask.
    Output ``(N, H, W, 3)``: sigmoid colours, before compositing. H and W must
    be multiples of ``2**depth``; the serving graph pads to guarantee it.

    With ``colour_correction`` the prediction is then corrected to agree with
    the known pixels around each hole (``BoundaryColourCorrection``).
    Under a mixed-precision policy the output layers stay float32.
    """
    inputs = keras.Input((None, None, 4), name="masked_image_and_mask")
    x, skips = inputs, []
    for level in range(depth):
        x = _conv_block(x, base_filters * 2**level, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"down{level}_pool")(x)
    x = _conv_block(x, base_filters * 2**depth, "bottleneck")
    for level in reversed(range(depth)):
        x = layers.Conv2DTranspose(base_filters * 2**level, 2, strides=2, name=f"up{level}_upsample")(x)
        x = layers.Concatenate(name=f"up{level}_skip")([x, skips[level]])
        x = _conv_block(x, base_filters * 2**level, f"up{level}")
    outputs = layers.Conv2D(3, 1, activation="sigmoid", dtype="float32", name="rgb")(x)
    if colour_correction:
        outputs = BoundaryColourCorrection(depth, name="boundary_colour_correction")([inputs, outputs])
    return keras.Model(inputs, outputs, name=f"unet_d{depth}_f{base_filters}")


def network_input(image, hole):
    """The network's 4-channel input from float images in [0, 1] and {0, 1} holes."""
    return tf.concat([image * (1.0 - hole), hole], axis=-1)


class HoleWeightedL1(keras.losses.Loss):
    """L1 on the raw prediction: ``valid + hole_weight * hole``, as in partial convolutions.

    ``y_true`` packs the target RGB and the hole mask as a fourth channel, so
    the loss knows which pixels are holes without a second model input.
    """

    def __init__(self, hole_weight: float = 6.0, name: str = "hole_weighted_l1", **kwargs):
        super().__init__(name=name, **kwargs)
        self.hole_weight = hole_weight

    def call(self, y_true, y_pred):
        target, hole = y_true[..., :3], y_true[..., 3:]
        error = tf.abs(target - y_pred)
        weights = 1.0 + (self.hole_weight - 1.0) * hole
        return tf.reduce_mean(error * weights, axis=[1, 2, 3])

    def get_config(self):
        return {**super().get_config(), "hole_weight": self.hole_weight}


def serving_function(model: keras.Model, depth: int) -> tf.types.experimental.GenericFunction:
    """The ``serving_default`` function: uint8 image and mask in, uint8 inpainted image out."""
    multiple = 2**depth

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.uint8, name=IMAGE),
        tf.TensorSpec([None, None, None, 1], tf.uint8, name=MASK),
    ])
    def serve(image, mask):
        height, width = tf.shape(image)[1], tf.shape(image)[2]
        is_hole = mask > 0
        hole = tf.cast(is_hole, tf.float32)
        pixels = tf.cast(image, tf.float32) / 255.0
        # (m - x % m) % m, not (-x) % m: a negative modulo does not survive conversion to ONNX.
        pad = [[0, 0], [0, (multiple - height % multiple) % multiple],
               [0, (multiple - width % multiple) % multiple], [0, 0]]
        # Padding is unknown territory: zero colour, marked as hole.
        padded = network_input(tf.pad(pixels, pad), tf.pad(hole, pad, constant_values=1.0))
        prediction = model(padded, training=False)[:, :height, :width, :]
        predicted = tf.cast(tf.round(tf.clip_by_value(prediction, 0.0, 1.0) * 255.0), tf.uint8)
        # Composite in uint8 so known pixels are copied, not recomputed.
        return {OUTPUT: tf.where(is_hole, predicted, image)}

    return serve
