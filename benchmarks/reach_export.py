"""Which "reach" blocks export to ONNX with dynamic H x W, and what they cost (issue 20, item 3).

    python benchmarks/reach_export.py [--quick] [--threads N] [--budget 0.5]

Each block is a small Keras model on ``(N, H, W, C)`` float32, written as a SavedModel with a
``serving_default`` signature of any N x H x W, converted by tf2onnx exactly as ``export/onnx_export.py``
does (same command, same opset), then run in ONNX Runtime at every size and compared with TensorFlow:

(a) ``tf.signal`` Fourier unit: rfft2d -> 1x1 conv + ReLU on real | imaginary -> irfft2d (LaMa's FFC core);
(b) the same unit with in-graph DFT matrices (``trainer/reach.py``), and the whole ``SpectralTransform``
    block (1x1 reduce to C/2, Fourier unit, 1x1 expand, residual); row "(a)=(b)" is their largest
    difference in TF with shared weights;
(c) global context (mean over H x W -> 1x1 conv C/4 + ReLU -> 1x1 conv C -> broadcast add) and a 3x3
    convolution with dilation 4; a plain 3x3 convolution C -> C is the yardstick ("x conv").

Sizes: C = 320 at 8x8 (the U-Net bottleneck of the coarse pass, 128/16), 16x16, 64x64 and 250x188 (the
fine pass's bottleneck on a 4000x3000 photo); C = 20 at 128x128 and 256x256 (a full-resolution level).
Times are medians of runs at batch 1 after a warm-up, on whatever else the machine is doing: compare rows
of one run, not runs of different days.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers, ops  # noqa: E402

from inpaint.core.contract import SIGNATURE_NAME  # noqa: E402
from inpaint.export.onnx_export import OPSET  # noqa: E402
from inpaint.trainer.reach import FourierUnit, SpectralTransform  # noqa: E402

SIZES = {320: ((8, 8), (16, 16), (64, 64), (250, 188)), 20: ((128, 128), (256, 256))}
PARITY = 1e-4


class SignalFourierUnit(layers.Layer):
    """(a): the Fourier unit with ``tf.signal.rfft2d``/``irfft2d`` (orthonormal), TensorFlow only."""

    def build(self, input_shape):
        channels = input_shape[-1]
        self.spectral = layers.Dense(2 * channels, activation="relu", name="spectral")
        self.spectral.build((None, None, None, 2 * channels))

    def call(self, x):
        height, width = tf.shape(x)[1], tf.shape(x)[2]
        scale = tf.math.rsqrt(tf.cast(height * width, tf.float32))
        spectrum = tf.signal.rfft2d(tf.transpose(x, (0, 3, 1, 2)))  # over the last two axes: NCHW
        stacked = tf.concat([tf.math.real(spectrum), tf.math.imag(spectrum)], axis=1) * scale
        real, imaginary = tf.split(tf.transpose(self.spectral(tf.transpose(stacked, (0, 2, 3, 1))), (0, 3, 1, 2)),
                                   2, axis=1)
        image = tf.signal.irfft2d(tf.complex(real, imaginary), fft_length=tf.stack([height, width]))
        # irfft2d divides by H*W; the orthonormal inverse divides by sqrt(H*W).
        return tf.transpose(image, (0, 2, 3, 1)) * tf.cast(tf.sqrt(tf.cast(height * width, tf.float32)), x.dtype)


class GlobalContext(layers.Layer):
    """(c): ``x + conv(relu(conv(mean_HW(x))))``, broadcast over H x W."""

    def build(self, input_shape):
        channels = input_shape[-1]
        self.squeeze = layers.Dense(max(1, channels // 4), activation="relu", name="squeeze")
        self.excite = layers.Dense(channels, name="excite")
        self.squeeze.build((None, None, None, channels))
        self.excite.build((None, None, None, max(1, channels // 4)))

    def call(self, x):
        return x + self.excite(self.squeeze(ops.mean(x, axis=(1, 2), keepdims=True)))


def wrap(block: layers.Layer, channels: int) -> keras.Model:
    inputs = keras.Input((None, None, channels), name="x")
    return keras.Model(inputs, block(inputs))


def blocks(channels: int) -> dict[str, keras.Model]:
    """The models to compare, weights seeded; (a) shares (b)'s Fourier-unit weights."""
    keras.utils.set_random_seed(0)
    matmul_unit = wrap(FourierUnit(), channels)
    signal_unit = wrap(SignalFourierUnit(), channels)
    signal_unit.set_weights(matmul_unit.get_weights())
    return {
        "(a) tf.signal Fourier unit": signal_unit,
        "(b) matmul Fourier unit": matmul_unit,
        # A trained block's expand is not zero: a random one makes the parity check mean something.
        "(b) SpectralTransform": wrap(SpectralTransform(output_initializer="glorot_uniform"), channels),
        "(c) global context": wrap(GlobalContext(), channels),
        "(c) 3x3 conv, dilation 4": wrap(layers.Conv2D(channels, 3, padding="same", dilation_rate=4), channels),
        "3x3 conv (yardstick)": wrap(layers.Conv2D(channels, 3, padding="same"), channels),
    }


def export_onnx(model: keras.Model, channels: int, folder: Path) -> tuple[Path | None, str]:
    """SavedModel -> tf2onnx (the command ``export/onnx_export.convert`` runs); the ONNX path, or the error."""
    saved = folder / "saved_model"
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE_NAME, tf.function(lambda x: {"y": model(x, training=False)}, input_signature=[
        tf.TensorSpec([None, None, None, channels], tf.float32, name="x")]))
    archive.write_out(str(saved), verbose=False)
    output = folder / "model.onnx"
    command = [sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved), "--signature_def",
               SIGNATURE_NAME, "--opset", str(OPSET), "--output", str(output)]
    result = subprocess.run(command, capture_output=True, text=True, check=False,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if result.returncode == 0 and output.is_file():
        return output, "yes"
    wanted = ("ValueError: make_sure failure", "Unsupported ops")
    lines = [line.split(" - ")[-1].strip() for line in result.stderr.splitlines() if any(w in line for w in wanted)]
    lines = list(dict.fromkeys(lines))  # each message once, in order (tf2onnx repeats the traceback)
    return None, "no: " + ("; ".join(lines) if lines else result.stderr.strip().splitlines()[-1])


def median_ms(run, budget: float, most: int = 25) -> float:
    """Median wall time of ``run()`` in ms: one warm-up, then at least 3 runs and ``budget`` seconds."""
    run()
    times: list[float] = []
    while len(times) < 3 or (sum(times) < budget and len(times) < most):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


@dataclass
class Row:
    block: str
    channels: int
    size: tuple[int, int]
    converts: str
    parity: float | None = None
    tf_ms: float | None = None
    ort_ms: float | None = None
    notes: list[str] = field(default_factory=list)


def measure(channels: int, sizes, budget: float, threads: int | None) -> list[Row]:
    rows: list[Row] = []
    models = blocks(channels)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    sessions: dict[str, ort.InferenceSession | None] = {}
    converts: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as temporary:
        for index, (name, model) in enumerate(models.items()):
            folder = Path(temporary) / str(index)
            folder.mkdir()
            path, converts[name] = export_onnx(model, channels, folder)
            sessions[name] = (ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                              if path else None)
        for height, width in sizes:
            x = np.random.default_rng(height * width).standard_normal((1, height, width, channels)).astype(np.float32)
            for name, model in models.items():
                function = tf.function(lambda v, m=model: m(v, training=False), input_signature=[
                    tf.TensorSpec([None, None, None, channels], tf.float32)])
                expected = function(x).numpy()
                row = Row(name, channels, (height, width), converts[name])
                row.tf_ms = median_ms(lambda: function(x).numpy(), budget)
                session = sessions[name]
                if session is not None:
                    row.parity = float(np.abs(session.run(None, {"x": x})[0] - expected).max())
                    row.ort_ms = median_ms(lambda: session.run(None, {"x": x}), budget)
                rows.append(row)
            signal, matmul = (models[n](x, training=False).numpy() for n in
                              ("(a) tf.signal Fourier unit", "(b) matmul Fourier unit"))
            rows.append(Row("(a)=(b) in TF, largest difference", channels, (height, width), "-",
                            parity=float(np.abs(signal - matmul).max())))
            print(f"measured C={channels} {height}x{width}", file=sys.stderr, flush=True)
    return rows


def table(rows: list[Row]) -> str:
    yardstick = {(r.channels, r.size): r for r in rows if r.block.startswith("3x3 conv (yard")}
    lines = ["| block | C | H x W | converts | ORT-TF max diff | TF ms | ORT ms | x conv (TF, ORT) |",
             "|---|---|---|---|---|---|---|---|"]

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    for r in rows:
        conv = yardstick.get((r.channels, r.size))
        ratios = "-"
        if conv and r.tf_ms:
            ratios = f"{r.tf_ms / conv.tf_ms:.2f}, " + (fmt(r.ort_ms / conv.ort_ms, ".2f") if r.ort_ms else "-")
        parity = fmt(r.parity, ".1e")
        if r.parity is not None and r.parity > PARITY and not r.block.startswith("(a)="):
            parity += " FAIL"
        lines.append(f"| {r.block} | {r.channels} | {r.size[0]}x{r.size[1]} | {r.converts} | {parity} | "
                     f"{fmt(r.tf_ms, '.2f')} | {fmt(r.ort_ms, '.2f')} | {ratios} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only the smallest size of each channel count")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads for TF and ORT (0: their default)")
    parser.add_argument("--budget", type=float, default=0.5, help="seconds of timed runs per cell, at least 3 runs")
    args = parser.parse_args()
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    rows: list[Row] = []
    for channels, sizes in SIZES.items():
        rows += measure(channels, sizes[:1] if args.quick else sizes, args.budget, args.threads or None)
    print(f"tf {tf.__version__}, tf2onnx opset {OPSET}, onnxruntime {ort.__version__}, "
          f"{os.cpu_count()} CPUs, threads {args.threads or 'default'}, batch 1, float32\n")
    print(table(rows))


if __name__ == "__main__":
    main()
