"""The inpainting network: a U-Net that refines a push-pull fill, coarse to fine.

Why this shape. People send photos of every size with holes from a 2-px scratch
to a stroke a sixth of the picture wide. A plain U-Net only learns the hole
widths (in pixels) it was trained on, and its receptive field ends where a wide
hole's middle begins. So, inside the graph:

1. **Push-pull fill.** The known pixels are averaged down a 2x pyramid and
   pulled back up, so every hole pixel starts from a smooth interpolation of
   its surroundings at any hole width (no training, plain ops).
2. **Coarse pass.** Image, mask and that fill are downscaled so the long side
   is at most ``coarse_side``; the U-Net predicts a correction to the fill
   there. At that scale a wide hole on a big photo is as wide, in pixels, as
   the holes seen in training.
3. **Fine pass.** The coarse correction, up-sampled, is added to the
   full-resolution push-pull fill, and the same U-Net (shared weights)
   corrects that again, adding the detail the coarse pass could not see.

Input ``(N, H, W, 4)``: RGB in [0, 1] with holes zeroed, then the {0, 1} hole
mask; H and W multiples of ``2**depth`` (the serving graph pads). Output
``(N, H, W, 3)``, before compositing. Written with ``keras.ops`` only, so the
same model trains under any Keras backend (JAX on a GPU for the long recipe)
and exports through TensorFlow.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops

from .reach import SpectralTransform

PUSH_PULL_LEVELS = 13  # 2**13 = 8192 px: enough to reach one cell on a 24 MP photo
SMOOTHING_STEPS = 8    # Jacobi steps per pyramid level: holes get smooth, harmonic-like fills
DOWNSCALE_STEPS = 6    # bilinear halvings at most: an alias-free downscale by up to 64x


def _pool(x):
    return ops.average_pool(x, 2, 2, padding="same")


def _resize(x, size):
    """Bilinear, half-pixel centres, no antialiasing, on every backend.

    TensorFlow's own op, because ``keras.ops.image.resize`` checks the size in
    Python and the exported graph's sizes are only known at run time.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.image.resize(x, tf.stack(size), method="bilinear")
    return ops.image.resize(x, size, interpolation="bilinear")


def _spatial_size(x):
    shape = ops.shape(x)
    return shape[1], shape[2]


def push_pull(values, weights, levels: int = PUSH_PULL_LEVELS, smoothing: int = SMOOTHING_STEPS):
    """Fill where ``weights`` is 0 from a normalized pyramid of the weighted ``values``.

    Each level averages the level below; a cell's value is its weighted mean
    where it has any weight, else the bilinearly up-sampled coarser level,
    then smoothed by a few Jacobi steps (each empty cell takes the mean of its
    3x3 neighbourhood): a multigrid approximation of the harmonic fill that
    classical inpainting computes. Weights in [0, 1]; ``values`` need not be zeroed.
    """
    sums, totals = [values * weights], [weights]
    for _ in range(levels):
        sums.append(_pool(sums[-1]))
        totals.append(_pool(totals[-1]))
    field = sums[-1] / ops.maximum(totals[-1], 1e-6)
    for level in reversed(range(levels)):
        coarse = _resize(field, _spatial_size(sums[level]))
        total = totals[level]
        has_known = total > 1e-6
        field = ops.where(has_known, sums[level] / ops.maximum(total, 1e-6), coarse)
        for _ in range(smoothing):
            field = ops.where(has_known, field, ops.average_pool(field, 3, 1, padding="same"))
    return field


def coarse_size(height, width, coarse_side: int, multiple: int):
    """Long side scaled to at most ``coarse_side``, each side rounded up to ``multiple``.

    Works on Python ints (static shapes, JAX) and on TensorFlow scalars (the
    exported graph takes any H x W).
    """
    if isinstance(height, int) and isinstance(width, int):
        scale = max(1.0, max(height, width) / coarse_side)
        return tuple(int(math.ceil(side / scale / multiple)) * multiple for side in (height, width))
    h, w = ops.cast(height, "float32"), ops.cast(width, "float32")
    scale = ops.maximum(1.0, ops.maximum(h, w) / coarse_side)
    return tuple(ops.cast(ops.ceil(side / scale / multiple), "int32") * multiple for side in (h, w))


def downscale(x, size, steps: int = DOWNSCALE_STEPS):
    """Bilinear resize to ``size`` in ``steps`` geometric steps, each at most a halving when size
    is at least 1/2**steps of the input: the 2x2 averaging of each step keeps it from aliasing."""
    height, width = _spatial_size(x)
    for step in range(1, steps + 1):
        fraction = step / steps
        if isinstance(height, int):
            target = tuple(int(round(s * (t / s) ** fraction)) for s, t in zip((height, width), size))
        else:
            target = tuple(
                ops.cast(ops.round(ops.cast(s, "float32") * (ops.cast(t, "float32") / ops.cast(s, "float32"))
                                   ** fraction), "int32")
                for s, t in zip((height, width), size))
        x = _resize(x, target if step < steps else size)
    return x


class CoarseToFine(layers.Layer):
    """Push-pull fill, then the shared ``refiner`` at coarse scale and again at full scale."""

    def __init__(self, refiner: keras.Model, coarse_side: int, multiple: int, smoothing: int = SMOOTHING_STEPS,
                 **kwargs):
        super().__init__(**kwargs)
        self.refiner = refiner
        self.coarse_side = coarse_side
        self.multiple = multiple
        self.smoothing = smoothing

    def refine(self, known, hole, fill):
        """The refiner's correction added to ``fill`` inside the holes."""
        correction = self.refiner(ops.concatenate([known, hole, fill], axis=-1))
        return fill + ops.cast(correction, fill.dtype) * hole

    def call(self, inputs):
        inputs = ops.cast(inputs, "float32")
        known, hole = inputs[..., :3], inputs[..., 3:]
        valid = 1.0 - hole
        height, width = _spatial_size(inputs)
        size = coarse_size(height, width, self.coarse_side, self.multiple)

        coarse_valid = downscale(valid, size)
        coarse_hole = ops.cast(coarse_valid < 0.999, "float32")  # any hole in the cell makes it a hole
        coarse_known = downscale(known, size) / ops.maximum(coarse_valid, 1e-6) * (1.0 - coarse_hole)
        coarse_fill = push_pull(coarse_known, 1.0 - coarse_hole, smoothing=self.smoothing)
        coarse_correction = self.refine(coarse_known, coarse_hole, coarse_fill) - coarse_fill

        # The full-resolution fill keeps thin holes sharp; the coarse pass adds what only a wide view sees.
        fill = push_pull(known, valid, smoothing=self.smoothing) + _resize(coarse_correction, (height, width)) * hole
        return self.refine(known, hole, fill)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)

    def get_config(self):
        return {**super().get_config(), "coarse_side": self.coarse_side, "multiple": self.multiple,
                "smoothing": self.smoothing}


def _conv(x, filters: int, name: str, dilation: int = 1, activation: str = "relu"):
    return layers.Conv2D(filters, 3, padding="same", activation=activation, dilation_rate=dilation, name=name)(x)


def _conv_block(x, filters: int, name: str, leaky: tuple[str, ...] = ()):
    """Two 3x3 ReLU convolutions, as in the report; leaky ReLUs (slope 0.2) if ``name`` is in ``leaky``: a
    leaky unit passes gradient whatever its input, so the block cannot fall silent for good."""
    activation = "leaky_relu" if name in leaky else "relu"
    return _conv(_conv(x, filters, f"{name}_conv1", activation=activation), filters, f"{name}_conv2",
                 activation=activation)


def check_blocks(option: str, blocks: tuple[str, ...], known: list[str]) -> None:
    """ValueError naming ``option``'s blocks that this network does not have, and those it has."""
    missing = [block for block in blocks if block not in known]
    if missing:
        raise ValueError(f"{option} {','.join(missing)}: this network's blocks are {', '.join(known)}")


def block_names(depth: int) -> list[str]:
    """The refiner's blocks, as ``--reinitialise`` and ``--leaky-blocks`` name them."""
    return sorted([f"down{level}" for level in range(depth)] + ["bottleneck"] + [f"up{level}" for level in range(depth)])


SPECTRAL_PREFIX = "bottleneck_spectral"


def build_refiner(depth: int, base_filters: int, dilations: tuple[int, ...], spectral_blocks: int = 0,
                  leaky_blocks: tuple[str, ...] = ()) -> keras.Model:
    """U-Net from (known RGB, mask, current fill) to a correction of the fill.

    ``depth`` down-sampling blocks, a bottleneck whose dilated convolutions
    widen the receptive field at almost no cost (it runs at 1/2**depth scale),
    mirrored up-sampling with skips, and a linear 3-channel output.
    ``spectral_blocks`` Fourier units (``reach.SpectralTransform``, LaMa's FFC) after the bottleneck let
    every cell see the whole image: a wide hole's middle sees texture far away. Each starts as the
    identity, so they can be added to trained weights.
    """
    check_blocks("--leaky-blocks", leaky_blocks, block_names(depth))
    inputs = keras.Input((None, None, 7), name="known_mask_fill")
    x, skips = inputs, []
    for level in range(depth):
        x = _conv_block(x, base_filters * 2**level, f"down{level}", leaky_blocks)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"down{level}_pool")(x)
    x = _conv_block(x, base_filters * 2**depth, "bottleneck", leaky_blocks)
    for index in range(spectral_blocks):
        x = SpectralTransform(name=f"{SPECTRAL_PREFIX}{index}")(x)
    for rate in dilations:
        x = _conv(x, base_filters * 2**depth, f"bottleneck_dilated{rate}", dilation=rate)
    for level in reversed(range(depth)):
        x = layers.Conv2DTranspose(base_filters * 2**level, 2, strides=2, name=f"up{level}_upsample")(x)
        x = layers.Concatenate(name=f"up{level}_skip")([x, skips[level]])
        x = _conv_block(x, base_filters * 2**level, f"up{level}", leaky_blocks)
    # Starts near zero: training begins at the push-pull fill. A default-scale start makes large wrong
    # corrections that the first steps cure by silencing the last ReLUs for good.
    start = keras.initializers.RandomNormal(stddev=1e-3)
    outputs = layers.Conv2D(3, 1, kernel_initializer=start, dtype="float32", name="correction")(x)
    return keras.Model(inputs, outputs, name="refiner")


BLOCK_OUTPUT_START = 0.01


def reinitialise_blocks(model: keras.Model, blocks: tuple[str, ...], seed: int = 0) -> list[str]:
    """Draw the convolutions of the refiner's ``blocks`` (``up2``: ``up2_conv1``, ``up2_conv2``) afresh with
    their initialisers, biases zero; the names of the layers drawn. A block whose ReLUs never fire gets no
    gradient: trained weights cannot bring it back, new ones can."""
    refiner = model.get_layer("coarse_to_fine").refiner
    check_blocks("--reinitialise", blocks,
                 sorted({layer.name.rsplit("_", 1)[0] for layer in refiner.layers if layer.name.endswith("_conv1")}))
    drawn = []
    for index, layer in enumerate(refiner.layers):
        if isinstance(layer, layers.Conv2D) and layer.name.rsplit("_", 1)[0] in blocks:
            initializer = keras.initializers.get(
                {"class_name": layer.kernel_initializer.__class__.__name__,
                 "config": {**layer.kernel_initializer.get_config(), "seed": seed + index}})
            # The block's last convolution starts small: the network's output starts where the weights it
            # was given left it (up1 was trained on a silent up2), and the block grows into it.
            scale = BLOCK_OUTPUT_START if layer.name.endswith("_conv2") else 1.0
            layer.kernel.assign(initializer(layer.kernel.shape, layer.kernel.dtype) * scale)
            layer.bias.assign(ops.zeros(layer.bias.shape, layer.bias.dtype))
            drawn.append(layer.name)
    return drawn


def build_model(depth: int = 4, base_filters: int = 16, dilations: tuple[int, ...] = (),
                coarse_side: int = 128, smoothing: int = SMOOTHING_STEPS, spectral_blocks: int = 0,
                leaky_blocks: tuple[str, ...] = ()) -> keras.Model:
    """The whole network (see the module docstring). Under mixed precision the fills stay float32."""
    inputs = keras.Input((None, None, 4), name="masked_image_and_mask")
    refiner = build_refiner(depth, base_filters, dilations, spectral_blocks, leaky_blocks)
    outputs = CoarseToFine(refiner, coarse_side, 2**depth, smoothing, dtype="float32", name="coarse_to_fine")(inputs)
    return keras.Model(inputs, outputs, name=f"inpaint_d{depth}_f{base_filters}")


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
        error = ops.abs(target - ops.cast(y_pred, target.dtype))
        weights = 1.0 + (self.hole_weight - 1.0) * hole
        return ops.mean(error * weights, axis=[1, 2, 3])

    def get_config(self):
        return {**super().get_config(), "hole_weight": self.hole_weight}
