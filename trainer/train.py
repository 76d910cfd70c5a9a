"""Train the inpainting U-Net and publish it as the next version of a model repository.

Reads top-down: config, data, model, fit, export. Defaults are chosen so that
``make train`` finishes in under 10 minutes on 2 CPU cores (see README).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

from inpaint.core.masks import MASK_KINDS
from inpaint.core.repository import RUN_RECORD, staged_version

from .data import Dataset, DataError, check_dataset_image_size, load_dataset

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    data: str = "samples"            # samples | photos[:DIR] | cifar10 | cifar10:PATH | a folder of images
    model_base_path: str = "models/inpaint"  # versions are written to BASE/1, BASE/2, ...
    model_name: str = "inpaint"      # name used in TF Serving's warmup requests
    image_size: int = 64             # training crop side; the report used 32
    depth: int = 4                   # encoder levels; the report compared 2, 3 and 5
    base_filters: int = 16           # width of the first level; the report used 32 (7.8 M params)
    colour_correction: bool = True   # match each fill to the known pixels around its hole
    precision: str = "auto"          # auto: bfloat16 compute where the CPU has it (2x faster here), else float32
    mask_kind: str = "mixed"         # lines | strokes | boxes | mixed
    hole_weight: float = 10.0        # L1 weight of hole pixels relative to known ones (partial conv used 6)
    batch_size: int = 32
    epochs: int = 17
    steps_per_epoch: int = 200
    learning_rate: float = 2e-3      # peak; cosine-decayed to zero over the run
    validation_size: int = 256       # fixed crops scored after every epoch
    seed: int = 0                    # same seed, same data, same masks, same weights


def train(config: TrainConfig) -> Path:
    """Run one training job; return the published version folder."""
    dataset = load_dataset(config.data)
    check_dataset_image_size(dataset, config.image_size)
    logger.info("data %s: %d train, %d validation, %d held-out images", dataset.source,
                len(dataset.train), len(dataset.validation), len(dataset.test))

    import keras  # deferred: --help and bad-input errors stay fast

    from .model import HoleWeightedL1, build_unet
    from .pipeline import MaskedBatches, ValidationMetrics
    keras.utils.set_random_seed(config.seed)
    precision = resolve_precision(config.precision)
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    logger.info("training compute precision: %s", precision)
    model = build_unet(config.depth, config.base_filters, config.colour_correction)
    total_steps = config.epochs * config.steps_per_epoch
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=total_steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=HoleWeightedL1(config.hole_weight))
    logger.info("model %s: %d parameters", model.name, model.count_params())

    validation = ValidationMetrics.for_config(dataset, config)
    started = time.monotonic()
    history = model.fit(
        MaskedBatches.for_config(dataset, config),
        epochs=config.epochs,
        callbacks=[validation],
        verbose=1 if sys.stdout.isatty() else 2,  # a progress bar on a terminal, a line per epoch in logs
    )
    seconds = time.monotonic() - started

    record = run_record(config, dataset, model, history.history, seconds)
    record["precision"] = precision
    return publish(float32_copy(model, config), config, record)


PRECISIONS = ("auto", "float32", "bfloat16")


def resolve_precision(precision: str) -> str:
    """``auto``: bfloat16 where the CPU computes it natively (AVX512-BF16 or AMX), else float32."""
    if precision != "auto":
        return precision
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "float32"
    return "bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"


def float32_copy(model, config: TrainConfig):
    """The trained weights in an all-float32 model: what is exported and served."""
    import keras

    from .model import build_unet

    keras.mixed_precision.set_global_policy("float32")
    copy = build_unet(config.depth, config.base_filters, config.colour_correction)
    copy.set_weights(model.get_weights())
    return copy


def run_record(config: TrainConfig, dataset: Dataset, model, history: dict, seconds: float) -> dict:
    """What is saved with the model: config, data, final metrics, the per-epoch history."""
    import keras
    import tensorflow as tf

    history = {name: [float(v) for v in values] for name, values in history.items()}
    return {
        "config": dataclasses.asdict(config),
        "dataset": dataset.describe(),
        "final_metrics": {name: values[-1] for name, values in history.items()},
        "history": history,
        "parameters": int(model.count_params()),
        "training_seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / (config.epochs * config.steps_per_epoch), 4),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__, "python": platform.python_version()},
        "note": "dice is the founding report's metric, kept only for comparison: it carries no signal.",
    }


def publish(model, config: TrainConfig, record: dict) -> Path:
    """SavedModel, warmup file and run record, published atomically as the next version."""
    from .savedmodel import export_saved_model, write_warmup_requests

    with staged_version(Path(config.model_base_path)) as staged:
        export_saved_model(model, config.depth, staged.path)
        write_warmup_requests(staged.path, config.model_name, config.image_size, config.seed)
        (staged.path / RUN_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    logger.info("published %s", staged.published)
    return staged.published


def _positive(ctx, param, value):
    if value is not None and value <= 0:
        raise click.BadParameter("must be positive")
    return value


_DEFAULTS = TrainConfig()


@click.command(context_settings={"show_default": True, "auto_envvar_prefix": "INPAINT"})
@click.option("--data", default=_DEFAULTS.data, envvar="INPAINT_DATA",
              help="Training data: 'samples' (bundled photos), 'photos[:DIR]' (assembled by make photos), "
                   "'cifar10', 'cifar10:PATH' or a folder of images.")
@click.option("--model-base-path", default=_DEFAULTS.model_base_path, envvar="INPAINT_MODEL_BASE_PATH",
              type=click.Path(file_okay=False), help="Model repository; the run is published as its next version.")
@click.option("--model-name", default=_DEFAULTS.model_name, envvar="INPAINT_MODEL",
              help="Model name written into the TF Serving warmup requests.")
@click.option("--image-size", default=_DEFAULTS.image_size, callback=_positive, envvar="INPAINT_IMAGE_SIZE",
              help="Side of the square training crops, in pixels.")
@click.option("--depth", default=_DEFAULTS.depth, callback=_positive, envvar="INPAINT_DEPTH",
              help="U-Net encoder depth (the report compared 2, 3 and 5).")
@click.option("--base-filters", default=_DEFAULTS.base_filters, callback=_positive, envvar="INPAINT_BASE_FILTERS",
              help="Filters in the first U-Net level; doubled at every level.")
@click.option("--colour-correction/--no-colour-correction", default=_DEFAULTS.colour_correction,
              envvar="INPAINT_COLOUR_CORRECTION",
              help="Correct each fill to agree with the known pixels around its hole (seamless-cloning style).")
@click.option("--precision", default=_DEFAULTS.precision, type=click.Choice(PRECISIONS), envvar="INPAINT_PRECISION",
              help="Training compute precision; auto picks bfloat16 on CPUs with native bf16, else float32. "
                   "The exported model is always float32.")
@click.option("--mask-kind", default=_DEFAULTS.mask_kind, type=click.Choice(MASK_KINDS), envvar="INPAINT_MASK_KIND",
              help="Hole generator used for training.")
@click.option("--hole-weight", default=_DEFAULTS.hole_weight, callback=_positive, envvar="INPAINT_HOLE_WEIGHT",
              help="L1 weight of hole pixels relative to known pixels.")
@click.option("--batch-size", default=_DEFAULTS.batch_size, callback=_positive, envvar="INPAINT_BATCH_SIZE",
              help="Crops per training step.")
@click.option("--epochs", default=_DEFAULTS.epochs, callback=_positive, envvar="INPAINT_EPOCHS",
              help="Training epochs.")
@click.option("--steps-per-epoch", default=_DEFAULTS.steps_per_epoch, callback=_positive, envvar="INPAINT_STEPS",
              help="Training steps per epoch.")
@click.option("--learning-rate", default=_DEFAULTS.learning_rate, callback=_positive, envvar="INPAINT_LEARNING_RATE",
              help="Peak Adam learning rate, cosine-decayed to zero.")
@click.option("--validation-size", default=_DEFAULTS.validation_size, callback=_positive,
              envvar="INPAINT_VALIDATION_SIZE", help="Fixed validation crops scored after every epoch.")
@click.option("--seed", default=_DEFAULTS.seed, envvar="INPAINT_SEED", help="Random seed; a run is reproducible.")
@click.option("-v", "--verbose", is_flag=True, help="Show debug logs and tracebacks.")
def main(verbose: bool, **options) -> None:
    """Train the U-Net and publish SavedModel version N+1 under --model-base-path."""
    # TensorFlow's C++ start-up lines (CUDA probing on CPU machines) are noise unless asked for.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "3")
    configure_logging(verbose)
    config = TrainConfig(**options)
    try:
        version = train(config)
    except (DataError, ValueError, OSError) as error:
        if verbose:
            raise
        raise click.ClickException(str(error)) from None
    click.echo(f"wrote {version}")


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


if __name__ == "__main__":
    main()
