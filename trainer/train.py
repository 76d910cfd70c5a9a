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
    data: str = "photos"             # photos[:DIR] (make photos) | samples | cifar10 | cifar10:PATH | a folder
    model_base_path: str = "models/inpaint"  # versions are written to BASE/1, BASE/2, ...
    model_name: str = "inpaint"      # name used in TF Serving's warmup requests
    image_size: int = 96             # largest training crop side; steps also draw 1/2 and 3/4 of it
    depth: int = 4                   # encoder levels; the report compared 2, 3 and 5
    base_filters: int = 20           # width of the first level; the report used 32 (7.8 M params)
    dilations: str = ""              # dilated bottleneck convolutions, e.g. "2,4" (slow in TF on a CPU)
    coarse_side: int = 128           # the coarse pass runs with the long side at most this
    smoothing: int = 8               # Jacobi steps per pyramid level of the push-pull fill (0: plain push-pull)
    precision: str = "auto"          # auto: bfloat16 compute where the hardware has it, else float32
    mask_kind: str = "mixed"         # lines | strokes | boxes | mixed
    hole_weight: float = 10.0        # L1 weight of hole pixels relative to known ones (partial conv used 6)
    batch_size: int = 8
    epochs: int = 4
    steps_per_epoch: int = 50
    learning_rate: float = 3e-4      # peak, cosine-decayed to zero; low because the default fine-tunes
    validation_size: int = 64        # fixed crops scored after every epoch
    init_weights: str = "models/pretrained/inpaint/1"  # start from these weights ("" or none: from scratch)
    checkpoint_dir: str = ""         # if set: resumable backups every epoch (an interrupted run resumes)
    workers: int = 1                 # threads drawing crops and masks (a GPU needs several)
    max_minutes: float = 9.0         # stop after the epoch that passes this much training time (0: never)
    seed: int = 0                    # same seed, same data, same masks, same weights


def train(config: TrainConfig) -> Path:
    """Run one training job; return the published version folder.

    Under a Keras backend other than TensorFlow (JAX on a GPU, say) the
    SavedModel cannot be written there: the finished weights and run record go
    to ``checkpoint_dir`` instead, and ``publish_checkpoint`` publishes them on
    a machine with TensorFlow.
    """
    dataset = load_dataset(config.data)
    check_dataset_image_size(dataset, config.image_size)
    logger.info("data %s: %d train, %d validation, %d held-out images", dataset.source,
                len(dataset.train), len(dataset.validation), len(dataset.test))

    import keras  # deferred: --help and bad-input errors stay fast

    from .model import HoleWeightedL1
    from .pipeline import MaskedBatches, TimeLimit, ValidationMetrics
    keras.utils.set_random_seed(config.seed)
    precision = resolve_precision(config.precision)
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    logger.info("keras backend %s, compute precision %s", keras.backend.backend(), precision)
    model = build_model(config)
    if config.init_weights:
        from .savedmodel import load_weights_from_version

        load_weights_from_version(model, Path(config.init_weights))
        logger.info("starting from the weights of %s", config.init_weights)
    total_steps = config.epochs * config.steps_per_epoch
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=total_steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=HoleWeightedL1(config.hole_weight))
    logger.info("model %s: %d parameters", model.name, model.count_params())

    callbacks = [ValidationMetrics.for_config(dataset, config)]
    if config.checkpoint_dir:
        # Saves weights, optimizer and epoch after every epoch; a rerun with the same directory resumes.
        callbacks.append(keras.callbacks.BackupAndRestore(str(Path(config.checkpoint_dir) / "backup")))
    if config.max_minutes:
        callbacks.append(TimeLimit(config.max_minutes))
    started = time.monotonic()
    history = model.fit(
        MaskedBatches.for_config(dataset, config),
        epochs=config.epochs,
        callbacks=callbacks,
        verbose=1 if sys.stdout.isatty() else 2,  # a progress bar on a terminal, a line per epoch in logs
    )
    seconds = time.monotonic() - started

    record = run_record(config, dataset, model, history.history, seconds)
    record["precision"] = precision
    if config.init_weights:
        record["initialised_from"] = lineage(Path(config.init_weights))
    if keras.backend.backend() != "tensorflow":
        return save_checkpoint(model, config, record)
    return publish(float32_copy(model, config), config, record)


def build_model(config: TrainConfig):
    from .model import build_model as build

    return build(config.depth, config.base_filters, parse_int_list(config.dilations), config.coarse_side,
                 config.smoothing)


PRECISIONS = ("auto", "float32", "bfloat16")


def resolve_precision(precision: str) -> str:
    """``auto``: bfloat16 on a GPU or a CPU that computes it natively (AVX512-BF16, AMX), else float32."""
    if precision != "auto":
        return precision
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return "bfloat16" if jax.devices()[0].platform == "gpu" else "float32"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "float32"
    return "bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"


def float32_copy(model, config: TrainConfig):
    """The trained weights in an all-float32 model: what is exported and served."""
    import keras

    keras.mixed_precision.set_global_policy("float32")
    copy = build_model(config)
    copy.set_weights(model.get_weights())
    return copy


FINAL_WEIGHTS = "final.weights.h5"
CHECKPOINT_RECORD = "run.json"


def save_checkpoint(model, config: TrainConfig, record: dict) -> Path:
    """Finished float32 weights and the run record, for ``publish_checkpoint`` elsewhere."""
    folder = Path(config.checkpoint_dir or config.model_base_path)
    folder.mkdir(parents=True, exist_ok=True)
    float32_copy(model, config).save_weights(str(folder / FINAL_WEIGHTS))
    (folder / CHECKPOINT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    logger.info("saved %s; publish it with: inpaint-train --publish-checkpoint %s", folder / FINAL_WEIGHTS, folder)
    return folder


def publish_checkpoint(folder: Path, model_base_path: str) -> Path:
    """Publish the weights a finished run left in ``folder`` as the next version of ``model_base_path``."""
    record_path, weights = folder / CHECKPOINT_RECORD, folder / FINAL_WEIGHTS
    if not (record_path.is_file() and weights.is_file()):
        raise DataError(f"{folder} holds no finished run ({CHECKPOINT_RECORD} and {FINAL_WEIGHTS})")
    record = json.loads(record_path.read_text())
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in record["config"].items() if k in known})
    config.model_base_path = model_base_path
    import keras

    keras.mixed_precision.set_global_policy("float32")
    model = build_model(config)
    model.load_weights(str(weights))
    record["published_from"] = str(folder)
    return publish(model, config, record)


def lineage(version: Path) -> dict:
    """Where a fine-tuned model's weights came from: that version's run record, less its history."""
    record_path = version / RUN_RECORD
    if not record_path.is_file():
        return {"path": str(version)}
    record = json.loads(record_path.read_text())
    record.pop("history", None)
    record.get("dataset", {}).pop("files", None)
    return {"path": str(version), **record}


def run_record(config: TrainConfig, dataset: Dataset, model, history: dict, seconds: float) -> dict:
    """What is saved with the model: config, data, final metrics, the per-epoch history."""
    import keras

    history = {name: [float(v) for v in values] for name, values in history.items()}
    steps_done = len(history.get("loss", [])) * config.steps_per_epoch  # fewer than planned after a time limit
    return {
        "config": dataclasses.asdict(config),
        "dataset": dataset.describe(),
        "final_metrics": {name: values[-1] for name, values in history.items()},
        "history": history,
        "parameters": int(model.count_params()),
        "training_seconds": round(seconds, 1),
        "steps_done": steps_done,
        "seconds_per_step": round(seconds / max(1, steps_done), 4),
        "versions": {"keras": keras.__version__, "backend": keras.backend.backend(),
                     "python": platform.python_version()},
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


def parse_int_list(text: str) -> tuple[int, ...]:
    """``"2,4"`` -> ``(2, 4)``; an empty string is an empty tuple."""
    return tuple(int(part) for part in text.split(",") if part.strip())


def _positive_list(ctx, param, value):
    try:
        numbers = parse_int_list(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None
    if any(number <= 0 for number in numbers):
        raise click.BadParameter("every value must be positive")
    return value


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
@click.option("--dilations", default=_DEFAULTS.dilations, callback=_positive_list, envvar="INPAINT_DILATIONS",
              help="Dilation rates of extra bottleneck convolutions, comma-separated ('' for none).")
@click.option("--coarse-side", default=_DEFAULTS.coarse_side, callback=_positive, envvar="INPAINT_COARSE_SIDE",
              help="Long side, in pixels, of the coarse pass (larger images are downscaled to it first).")
@click.option("--smoothing", default=_DEFAULTS.smoothing, type=click.IntRange(min=0), envvar="INPAINT_SMOOTHING",
              help="Jacobi smoothing steps per pyramid level of the push-pull fill the network refines.")
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
@click.option("--init-weights", default=_DEFAULTS.init_weights, envvar="INPAINT_INIT_WEIGHTS",
              callback=lambda ctx, param, value: "" if value in ("none", "") else value,
              help="Start from this published version's weights (e.g. models/pretrained/inpaint/1); the "
                   "architecture options must match its run record; 'none' trains from scratch.")
@click.option("--checkpoint-dir", default=_DEFAULTS.checkpoint_dir, envvar="INPAINT_CHECKPOINT_DIR",
              type=click.Path(file_okay=False),
              help="Back up weights, optimizer and epoch here after every epoch; rerunning resumes.")
@click.option("--workers", default=_DEFAULTS.workers, callback=_positive, envvar="INPAINT_WORKERS",
              help="Threads that draw training crops and masks.")
@click.option("--max-minutes", default=_DEFAULTS.max_minutes, type=click.FloatRange(min=0), envvar="INPAINT_MAX_MINUTES",
              help="Stop after the epoch that passes this many minutes of training (0: no limit).")
@click.option("--publish-checkpoint", "finished_run", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              envvar="INPAINT_PUBLISH_CHECKPOINT",
              help="Publish a finished run's checkpoint folder (trained under another Keras backend) and exit.")
@click.option("--seed", default=_DEFAULTS.seed, envvar="INPAINT_SEED", help="Random seed; a run is reproducible.")
@click.option("-v", "--verbose", is_flag=True, help="Show debug logs and tracebacks.")
def main(verbose: bool, finished_run: Path | None, **options) -> None:
    """Train the inpainting network and publish SavedModel version N+1 under --model-base-path."""
    # TensorFlow's C++ start-up lines (CUDA probing on CPU machines) are noise unless asked for.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "3")
    configure_logging(verbose)
    config = TrainConfig(**options)
    try:
        if finished_run is not None:
            version = publish_checkpoint(finished_run, config.model_base_path)
        else:
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
