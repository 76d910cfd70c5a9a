"""Reach: a Fourier unit that lets every pixel of a feature map see all the others (LaMa's FFC).

LaMa's Fast Fourier Convolution puts a 1x1 convolution in the frequency domain:
real 2-D FFT over H x W, a 1x1 conv + ReLU on the stacked real and imaginary
parts, inverse FFT. Each frequency mixes every pixel, so one layer has a
receptive field as wide as the image, where a stack of 3x3 convolutions grows
it by 2 px a layer and ends where a wide hole's middle begins.

Why matmuls, not ``tf.signal.rfft2d``. The product is exported SavedModel ->
tf2onnx -> ONNX Runtime with dynamic H x W, and tf2onnx 1.17 converts RFFT2D
only when ``ComplexAbs`` consumes it ("Current implementation of RFFT2D only
allows ComplexAbs as consumer not {'Imag', 'Real'}", tensorflow-onnx #2274)
and has no converter for IRFFT2D, Real, Imag or Complex at all; the opset-17
``DFT`` pull request (#2417) was closed unmerged. So the transforms here are
dense DFT matrices built in the graph from the run-time H and W (``range``,
outer product modulo the length, ``cos``, ``sin``) and applied as matmuls:
plain Range/Mul/Mod/Cos/Sin/MatMul in ONNX, any H x W, any Keras backend,
differentiable, no complex dtype anywhere.

Layout. A spectrum is real, ``(N, H, W//2 + 1, 2C)``: the first C channels
are the real parts, the last C the imaginary parts, as the 1x1 convolution
wants them; the real DFT runs along W (W//2 + 1 frequencies, numpy's
``rfft2`` convention), the complex one along H. No transposes: the W step is a
``(2K, W) @ (N, H, W, C)`` broadcast matmul whose rows interleave cos and
-sin per frequency, the H step a ``(2H, H) @ (N, H, 2KC)`` matmul whose
cos and sin halves are combined into real and imaginary parts by slices.
Orthonormal scaling (numpy's ``norm="ortho"``), so the spectrum's magnitude
does not grow with the image and the coarse and full-resolution passes of
the refiner see the same range.

Cost. Per transform ``H*W*C*(2H + W)`` multiply-adds (an FFT would be
``O(HWC log HW)``): at a U-Net bottleneck (H, W of 8 to 250) that is a fraction
of one 3x3 convolution of the same width; at a full-resolution level of
hundreds of pixels it is not. ``benchmarks/reach_export.py`` measures it.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops


def _size(x):
    """(H, W) of an NHWC tensor: Python ints where static, scalar tensors in an exported graph."""
    shape = ops.shape(x)
    return shape[1], shape[2]


def _phase(rows, columns, length):
    """float32 ``[rows, columns]``: 2*pi * (r * c mod length) / length.

    The product is reduced modulo ``length`` in integers before it becomes an
    angle, so a 250-px side keeps float32 angles to ~5e-7 rad, not ~5e-5.
    """
    r = ops.arange(0, rows, dtype="int32")
    c = ops.arange(0, columns, dtype="int32")
    product = ops.mod(ops.expand_dims(r, 1) * ops.expand_dims(c, 0), length)
    return ops.cast(product, "float32") * (2.0 * math.pi / ops.cast(length, "float32"))


def _h_matrix(height, scale):
    """``[2H, H]``: cos over sin of the length-H DFT, times ``scale`` (the orthonormal 1/sqrt(HW))."""
    angle = _phase(height, height, height)
    return ops.concatenate([ops.cos(angle), ops.sin(angle)], axis=0) * scale


def _scale(height, width):
    """The orthonormal DFT's 1/sqrt(H*W), applied once each way."""
    return ops.rsqrt(ops.cast(height * width, "float32"))


def _complex_h(spectrum, height, frequencies, channels, scale, inverse: bool):
    """The length-H complex DFT (or its inverse) along axis 1 of ``(N, H, K, 2C)``, real | imaginary parts.

    One matmul ``[cos; sin] @ [re | im]`` gives cos*re, cos*im, sin*re, sin*im;
    the forward DFT (exp(-i t)) is ``(cos*re + sin*im) + i (cos*im - sin*re)``,
    the inverse (exp(+i t)) ``(cos*re - sin*im) + i (sin*re + cos*im)``.
    """
    flat = ops.reshape(spectrum, (-1, height, frequencies * 2 * channels))
    mixed = ops.reshape(ops.matmul(_h_matrix(height, scale), flat), (-1, 2, height, frequencies, 2 * channels))
    cos_re, cos_im = mixed[:, 0, :, :, :channels], mixed[:, 0, :, :, channels:]
    sin_re, sin_im = mixed[:, 1, :, :, :channels], mixed[:, 1, :, :, channels:]
    if inverse:
        return cos_re - sin_im, sin_re + cos_im
    return cos_re + sin_im, cos_im - sin_re


def rfft2(x):
    """The orthonormal 2-D real DFT of a float32 ``(N, H, W, C)`` over H and W.

    Returns ``(N, H, W//2 + 1, 2C)``: real parts in the first C channels,
    imaginary parts in the last C; equals ``np.fft.rfft2(x, axes=(1, 2),
    norm="ortho")``. C must be static; N, H and W may be known only at run time.
    """
    channels = x.shape[-1]
    height, width = _size(x)
    frequencies = width // 2 + 1
    scale = _scale(height, width)
    angle = _phase(frequencies, width, width)  # [K, W]
    # Rows k*2 and k*2 + 1: cos and -sin of frequency k, so the W step's output reshapes to (.., K, 2C) for free.
    along_w = ops.reshape(ops.stack([ops.cos(angle), -ops.sin(angle)], axis=1), (2 * frequencies, width))
    spectrum = ops.reshape(ops.matmul(along_w, x), (-1, height, frequencies, 2 * channels))
    real, imaginary = _complex_h(spectrum, height, frequencies, channels, scale, inverse=False)
    return ops.concatenate([real, imaginary], axis=-1)


def irfft2(spectrum, width):
    """The inverse of :func:`rfft2`: ``(N, H, W//2 + 1, 2C)`` real | imaginary parts to float32 ``(N, H, W, C)``.

    ``width`` is the output's W (W//2 + 1 frequencies do not tell an odd W from
    the even one below it). As ``np.fft.irfft2(..., s=(H, W), norm="ortho")``,
    the imaginary parts of the W frequencies 0 and W/2 are ignored, so any
    spectrum (a convolution's output is no real image's) has a real inverse.
    """
    channels = spectrum.shape[-1] // 2
    height, frequencies = _size(spectrum)
    scale = _scale(height, width)
    real, imaginary = _complex_h(spectrum, height, frequencies, channels, scale, inverse=True)
    # x[w] = sum_k a_k (re_k cos - im_k sin), a_k = 1 for k = 0 and W/2, else 2 (the conjugate half).
    k = ops.arange(0, frequencies, dtype="int32")
    single = ops.logical_or(ops.equal(k, 0), ops.equal(2 * k, width))
    weight = ops.expand_dims(ops.where(single, 1.0, 2.0), 0)
    angle = ops.transpose(_phase(frequencies, width, width))  # [W, K]
    along_w = ops.reshape(ops.stack([ops.cos(angle) * weight, -ops.sin(angle) * weight], axis=2),
                          (width, 2 * frequencies))
    interleaved = ops.reshape(ops.stack([real, imaginary], axis=3), (-1, height, 2 * frequencies, channels))
    return ops.matmul(along_w, interleaved)


@keras.saving.register_keras_serializable(package="inpaint")
class FourierUnit(layers.Layer):
    """LaMa's Fourier unit: rfft2 -> 1x1 conv (2C -> 2C) + ReLU on real | imaginary parts -> irfft2.

    The transforms run in float32 whatever the dtype policy; the convolution in
    the policy's compute dtype.
    """

    def build(self, input_shape):
        channels = input_shape[-1]
        self.spectral = layers.Dense(2 * channels, activation="relu", name="spectral", dtype=self.dtype_policy)
        self.spectral.build((None, None, None, 2 * channels))

    def call(self, x):
        width = _size(x)[1]
        spectrum = self.spectral(rfft2(ops.cast(x, "float32")))
        return ops.cast(irfft2(ops.cast(spectrum, "float32"), width), x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="inpaint")
class SpectralTransform(layers.Layer):
    """FFC's spectral transform as a residual block: ``x + expand(h + FourierUnit(h))``, ``h = relu(reduce(x))``.

    ``reduce`` is a 1x1 conv to ``hidden_ratio`` of the input channels (LaMa: 1/2),
    ``expand`` a 1x1 conv back to the input channels. ``expand`` starts at zero
    (``output_initializer``), so the block is the identity when first added to
    a trained network and training moves it from there: its kernel's gradient
    is ``(h + FourierUnit(h))`` times the incoming one, not zero. Output shape
    and dtype are the input's, any H x W (exports with dynamic H x W to ONNX).
    """

    def __init__(self, hidden_ratio: float = 0.5, output_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.hidden_ratio = hidden_ratio
        self.output_initializer = keras.initializers.get(output_initializer)

    def build(self, input_shape):
        channels = input_shape[-1]
        hidden = max(1, int(round(channels * self.hidden_ratio)))
        policy = self.dtype_policy
        self.reduce = layers.Dense(hidden, activation="relu", name="reduce", dtype=policy)
        self.fourier = FourierUnit(name="fourier", dtype=policy)
        self.expand = layers.Dense(channels, kernel_initializer=self.output_initializer, name="expand", dtype=policy)
        self.reduce.build((None, None, None, channels))
        self.fourier.build((None, None, None, hidden))
        self.expand.build((None, None, None, hidden))

    def call(self, x):
        hidden = self.reduce(x)
        return x + ops.cast(self.expand(hidden + self.fourier(hidden)), x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "hidden_ratio": self.hidden_ratio,
                "output_initializer": keras.initializers.serialize(self.output_initializer)}
