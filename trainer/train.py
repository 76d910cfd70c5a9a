"""Train the inpainting U-Net and publish it as the next version of a model repository.

Reads top-down: the config; ``train`` and its steps in the order they run (open the data, start or
resume, configure Keras, build and compile, callbacks, fit, record and publish); the pieces they use;
publishing a checkpoint; the command line. Defaults are chosen so that ``make train`` finishes in
under 10 minutes on 2 CPU cores (see docs/training.md).

Beyond one machine: ``--data`` is resolved in ``sources.py``; ``--loader stream`` (automatic for globs,
TFRecords and large folders) decodes photos in a tf.data pipeline from their file names
(``stream.py``); ``--strategy`` spreads the replicas over GPUs and workers (``distribute.py``);
``--backup-dir`` resumes a killed run from its last epoch and publishes it once (``resume.py``);
``--logdir`` writes TensorBoard summaries.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from inpaint.core.envvars import Command, ToolVariables
from inpaint.core.masks import MASK_KINDS
from inpaint.core.repository import RUN_RECORD, staged_version

from .data import Dataset, check_dataset_image_size
from .distribute import STRATEGIES
from .errors import BackupError, DistributionError, TrainingError
from .sources import DATA_FORMATS, LOADERS

if TYPE_CHECKING:
    from .resume import BackupState

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    data: str = "photos"             # photos[:DIR] (make photos) | samples | cifar10 | cifar10:PATH | a folder | a glob
    loader: str = "auto"             # auto | memory | stream: decode everything first, or stream from file names
    data_format: str = "auto"        # auto | images | tfrecord (auto: by the files' suffixes)
    deterministic: bool = True       # streamed batches come in a reproducible order
    model_base_path: str = "models/inpaint"  # versions are written to BASE/1, BASE/2, ...
    model_name: str = "inpaint"      # name used in TF Serving's warmup requests
    image_size: int = 96             # largest training crop side; steps also draw 1/2 and 3/4 of it
    depth: int = 4                   # encoder levels; the report compared 2, 3 and 5
    base_filters: int = 20           # width of the first level; the report used 32 (7.8 M params)
    dilations: str = ""              # dilated bottleneck convolutions, e.g. "2,4" (slow in TF on a CPU)
    spectral_blocks: int = 0         # Fourier units after the bottleneck (reach.py): the whole image in view
    leaky_blocks: str = ""           # refiner blocks whose ReLUs leak (slope 0.2), e.g. "up2": they cannot fall silent
    coarse_side: int = 128           # the coarse pass runs with the long side at most this
    smoothing: int = 8               # Jacobi steps per pyramid level of the push-pull fill (0: plain push-pull)
    precision: str = "auto"          # auto: bfloat16 compute where the hardware has it, else float32
    mask_kind: str = "mixed"         # lines | strokes | boxes | mixed
    hole_weight: float = 10.0        # L1 weight of hole pixels relative to known ones (partial conv used 6)
    adversarial_weight: float = 0.0  # > 0: train against a PatchGAN discriminator (adversarial.py)
    feature_matching_weight: float = 0.0  # the discriminator's feature-matching L1, next to the adversarial term
    discriminator_filters: int = 32  # width of the discriminator's first level
    discriminator_learning_rate: float = 1e-4  # peak, cosine-decayed like the generator's
    batch_size: int = 8
    epochs: int = 4
    steps_per_epoch: int = 50
    learning_rate: float = 3e-4      # peak, cosine-decayed to zero; low because the default fine-tunes
    validation_size: int = 64        # fixed crops scored after every epoch
    init_weights: str = "models/pretrained/inpaint/1"  # start from these weights ("" or none: from scratch)
    reinitialise: str = ""           # refiner blocks that start afresh over --init-weights, e.g. "up2"
    checkpoint_dir: str = ""         # if set: resumable backups every epoch (an interrupted run resumes)
    workers: int = 1                 # threads drawing crops and masks in memory (a stream uses AUTOTUNE)
    strategy: str = "auto"           # auto | one | mirrored | multi-worker (TF_CONFIG)
    backup_dir: str = ""             # if set: a killed run restarted with the same command resumes, publishes once
    logdir: str = ""                 # if set: TensorBoard losses, validation metrics and example fills per epoch
    max_minutes: float = 9.0         # stop after the epoch that passes this much training time (0: never)
    seed: int = 0                    # same seed, same data, same masks, same weights


def train(config: TrainConfig) -> Path | None:
    """Run one training job; return the published version folder (None on a worker that is not the chief).

    Under a Keras backend other than TensorFlow (JAX on a GPU, say) the
    SavedModel cannot be written there: the finished weights and run record go
    to ``checkpoint_dir`` instead, and ``publish_checkpoint`` publishes them on
    a machine with TensorFlow.
    """
    from .distribute import resolve_distribution

    # First of all: MultiWorkerMirroredStrategy must exist before TensorFlow runs any op.
    distribution = resolve_distribution(config.strategy)
    try:
        return _train(config, distribution)
    finally:
        distribution.cleanup()


def backup_folder(config: TrainConfig) -> str:
    """``--backup-dir``, else ``--checkpoint-dir``/backup (where it always was), else none."""
    return config.backup_dir or (str(Path(config.checkpoint_dir) / "backup") if config.checkpoint_dir else "")


def _train(config: TrainConfig, distribution) -> Path | None:
    """The steps of a run, in order; each is a function below."""
    data = open_training_data(config)
    run = start_or_resume(config, distribution)
    if run.already_published:
        return run.published
    precision = configure_keras(config, distribution)
    model = build_and_compile(config, distribution, run)
    backup = backup_callback(run, distribution)
    callbacks = epoch_callbacks(config, data, distribution, run) + ([backup] if backup else [])
    history, seconds = fit(model, data, config, distribution, run, callbacks, backup)
    record = {**run_record(config, data, model, history, seconds), "precision": precision, **run.describe(),
              "distribution": distribution_record(config, distribution)}
    return publish_run(model, config, record, distribution, run)


def open_training_data(config: TrainConfig):
    """The ``--data`` source, in memory (``data.Dataset``) or to stream (``stream.FileSource``), logged."""
    from .sources import open_data

    data = open_data(config.data, config.loader, config.data_format)
    if isinstance(data, Dataset):
        check_dataset_image_size(data, config.image_size)
        logger.info("data %s: %d train, %d validation, %d held-out images", data.source,
                    len(data.train), len(data.validation), len(data.test))
    elif data.format == "tfrecord":
        logger.info("data %s streamed: %d TFRecord shards, split by record name", data.source, len(data.train))
    else:
        logger.info("data %s streamed: %d train, %d validation, %d held-out files", data.source,
                    len(data.names["train"]), len(data.names["validation"]), len(data.names["test"]))
    return data


@dataclass
class Run:
    """This run's identity and, with a backup folder, where a restart of it stands."""

    id: str
    backup_dir: str = ""
    state: BackupState | None = None  # the last epoch backed up; None: a fresh start
    finished: bool = False            # every epoch done (or stopped early) before a kill: publish only
    already_published: bool = False   # a restart after publishing: nothing to train
    published: Path | None = None     # that version, on the chief

    @property
    def start_epoch(self) -> int:
        return self.state.epoch if self.state else 0

    def describe(self) -> dict:
        described = {"run_id": self.id}
        if self.state is not None:
            described["resumed_after_epoch"] = self.state.epoch
        return described

    def remove_backup(self) -> None:
        """Once published: the same command started again trains a new run."""
        if self.backup_dir:
            from .resume import RunBackup

            RunBackup(Path(self.backup_dir)).finish()


def start_or_resume(config: TrainConfig, distribution) -> Run:
    """A fresh run, or the one a restart with the same backup folder goes on with (every worker agrees)."""
    backup_dir = backup_folder(config)
    if not backup_dir:
        return Run(uuid.uuid4().hex)
    from .resume import RunBackup, check_resumable, find_published

    backup = RunBackup(Path(backup_dir))
    run_id = backup.identity(dataclasses.asdict(config), create=distribution.is_chief) or uuid.uuid4().hex
    published = find_published(Path(config.model_base_path), run_id) if distribution.is_chief else None
    if distribution.chief_value(published is not None):
        if published is not None:
            logger.info("this run already published %s (it was stopped before removing %s): nothing to train",
                        published, backup_dir)
            backup.finish()
        return Run(run_id, backup_dir, already_published=True, published=published)
    state = backup.state()
    check_resumable(state, config.epochs)
    done = state.epoch if state else 0
    if distribution.workers > 1 and distribution.chief_value(done) != done:
        raise BackupError(f"{distribution.task} finds {done} epochs in {backup_dir}, the chief another number: "
                          "--backup-dir must be one folder every worker reads (a shared volume)")
    finished = state is not None and (state.stopped or state.epoch >= config.epochs)
    if finished:
        logger.info("resuming from %s: training had finished after epoch %d; publishing", backup_dir, state.epoch)
    elif state is not None:
        logger.info("resuming from %s: %d of %d epochs done, continuing with epoch %d", backup_dir, state.epoch,
                    config.epochs, state.epoch + 1)
    else:
        logger.info("backing up every epoch to %s (run %s)", backup_dir, run_id)
    return Run(run_id, backup_dir, state, finished)


def configure_keras(config: TrainConfig, distribution) -> str:
    """Refuse what cannot run here, seed everything, set the compute precision; the precision used."""
    import keras  # deferred: --help and bad-input errors stay fast

    check_adversarial(config, keras.backend.backend(), distribution.workers)
    keras.utils.set_random_seed(config.seed)
    precision = resolve_precision(config.precision)
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    logger.info("keras backend %s, compute precision %s, strategy %s: %d replica(s), global batch %d",
                keras.backend.backend(), precision, distribution.name, distribution.replicas,
                config.batch_size * distribution.replicas)
    return precision


def build_and_compile(config: TrainConfig, distribution, run: Run):
    """The network (from ``--init-weights`` on a fresh start) compiled with its losses, in the strategy's scope."""
    with distribution.scope():
        model = build_model(config)
        if config.init_weights and run.state is None:
            from .savedmodel import load_weights_from_version

            load_weights_from_version(model, Path(config.init_weights))
            logger.info("starting from the weights of %s", config.init_weights)
            if config.reinitialise:
                from .model import reinitialise_blocks

                names = reinitialise_blocks(model, parse_name_list(config.reinitialise), config.seed)
                logger.info("re-initialised %s", ", ".join(names))
        model = compile_for_training(model, config)
        if distribution.strategy is not None or run.backup_dir:
            build_optimizers(model)  # in the scope: mirrored, and ready for a restore
        if distribution.workers > 1:
            build_for_multi_worker(model, config)
    logger.info("model %s: %d parameters", model.name, model.count_params())  # with a discriminator, if any
    return model


def epoch_callbacks(config: TrainConfig, data, distribution, run: Run) -> list:
    """What runs after every epoch: validation scores, TensorBoard summaries, the time limit."""
    from .pipeline import TensorBoardLogger, TimeLimit

    validation = validation_metrics(config, data, distributed=distribution.strategy is not None)
    callbacks = [validation]
    if config.logdir:
        callbacks.append(TensorBoardLogger(distribution.writable(config.logdir), validation))
    if config.max_minutes:
        callbacks.append(TimeLimit(config.max_minutes, run.state.seconds if run.state else 0.0,
                                   agree=distribution.any if distribution.workers > 1 else None))
    return callbacks


def validation_metrics(config: TrainConfig, data, distributed: bool):
    """The fixed validation crops, scored after every epoch."""
    from .pipeline import ValidationMetrics

    if isinstance(data, Dataset):
        return ValidationMetrics.for_config(data, config, direct=distributed)
    from .stream import validation_examples

    return ValidationMetrics(*validation_examples(data, config.validation_size, config.image_size,
                                                  config.mask_kind, config.seed), direct=distributed)


def backup_callback(run: Run, distribution):
    """The epoch backup (None without a backup folder): last among the callbacks, it records what the
    others added to the epoch's logs."""
    if not run.backup_dir:
        return None
    from .resume import ResumableBackup

    return ResumableBackup(Path(run.backup_dir), run.state, Path(distribution.writable(run.backup_dir)))


def fit(model, data, config: TrainConfig, distribution, run: Run, callbacks: list, backup) -> tuple[dict, float]:
    """Train the epochs left; the history and training seconds of the whole run, across restarts."""
    started = time.monotonic()
    if run.finished:  # killed after the last epoch, before publishing: the backup holds the final weights
        backup.set_model(model)
        backup.on_train_begin()
        history = {}
    else:
        batches, fit_options = fit_input(data, config, distribution, run.start_epoch)
        history = model.fit(
            batches,
            epochs=config.epochs,
            callbacks=callbacks,
            verbose=1 if sys.stdout.isatty() else 2,  # a progress bar on a terminal, a line per epoch in logs
            **fit_options,
        ).history
    if backup is not None:
        return backup.history, backup.seconds
    return history, time.monotonic() - started


def fit_input(data, config: TrainConfig, distribution, start_epoch: int) -> tuple[object, dict]:
    """What ``fit`` draws from, and how: a ``tf.data`` stream (streamed data, or any under a strategy)
    or the in-memory ``MaskedBatches``, both starting at ``start_epoch``."""
    if distribution.strategy is not None or not isinstance(data, Dataset):
        batches = training_input(data, config, distribution, start_epoch * config.steps_per_epoch)
        return batches, {"steps_per_epoch": config.steps_per_epoch, "shuffle": False}  # a stream is drawn at random
    from .pipeline import MaskedBatches

    batches = MaskedBatches.for_config(data, config)
    batches.epoch = start_epoch  # a resumed run draws the crops of the epochs it goes on with
    return batches, {}


def distribution_record(config: TrainConfig, distribution) -> dict:
    return {**distribution.describe(), "per_replica_batch": config.batch_size,
            "global_batch": config.batch_size * distribution.replicas, "learning_rate": config.learning_rate}


def publish_run(model, config: TrainConfig, record: dict, distribution, run: Run) -> Path | None:
    """Publish the trained network as the next version (the chief's copy), then remove the backup.

    Under another Keras backend the weights and record are saved for ``--publish-checkpoint`` instead.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        folder = save_checkpoint(model, config, record)
        run.remove_backup()
        return folder
    if not distribution.is_chief:
        # Every worker saves, as TensorFlow's multi-worker guide advises; only the chief's is kept.
        scratch = distribution.writable(config.model_base_path)
        publish(float32_copy(model, config), dataclasses.replace(config, model_base_path=scratch), record)
        logger.info("%s done: the chief publishes the version", distribution.task)
        return None
    version = publish(float32_copy(model, config), config, record)
    run.remove_backup()
    return version


def adversarial_weights(config: TrainConfig):
    from .adversarial import AdversarialWeights

    return AdversarialWeights(config.adversarial_weight, config.feature_matching_weight,
                              config.discriminator_filters, config.discriminator_learning_rate)


def compile_for_training(model, config: TrainConfig):
    """The model compiled with its losses: the network alone (L1), or wrapped with a discriminator."""
    import keras

    from .model import HoleWeightedL1

    total_steps = config.epochs * config.steps_per_epoch
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=total_steps)
    weights = adversarial_weights(config)
    if not weights.enabled:
        model.compile(optimizer=keras.optimizers.Adam(schedule), loss=HoleWeightedL1(config.hole_weight))
        return model
    from .adversarial import AdversarialTrainer, build_discriminator

    trainer = AdversarialTrainer(model, build_discriminator(weights.discriminator_filters),
                                 HoleWeightedL1(config.hole_weight), weights)
    critic_schedule = keras.optimizers.schedules.CosineDecay(weights.discriminator_learning_rate, total_steps)
    # beta_1 0.5: the usual GAN setting; a slower first moment follows a moving opponent badly.
    trainer.compile(optimizer=keras.optimizers.Adam(schedule, beta_1=0.5),
                    discriminator_optimizer=keras.optimizers.Adam(critic_schedule, beta_1=0.5))
    return trainer


def build_optimizers(model) -> None:
    from .adversarial import AdversarialTrainer

    if isinstance(model, AdversarialTrainer):
        model.build_optimizers()
    else:
        model.optimizer.build(model.trainable_variables)


def check_adversarial(config: TrainConfig, backend: str, workers: int) -> None:
    """The adversarial step is TensorFlow's, on one worker: say so before anything trains."""
    if not adversarial_weights(config).enabled:
        return
    if backend != "tensorflow":
        raise DistributionError(f"--adversarial-weight needs the TensorFlow backend (KERAS_BACKEND={backend}): "
                                "unset KERAS_BACKEND, or train the L1 stage there and the adversarial stage "
                                "with TensorFlow")
    if workers > 1:
        raise DistributionError("--adversarial-weight runs on one worker (one machine, any number of GPUs): "
                                "use --strategy one or mirrored")


def build_for_multi_worker(model, config: TrainConfig) -> None:
    """Two work-arounds for Keras 3 under MultiWorkerMirroredStrategy (keras-team/keras#20585).

    * ``fit`` averages the first distributed batch over the replicas to build the model
      (``_maybe_symbolic_build``), a reduce the strategy refuses for an (x, y) pair: everything it
      would build is built here from a zero batch, and that step is skipped.
    * ``fit`` averages each step's logs over the workers with ``reduce("MEAN", axis=0)``, which fails
      on scalars: the train step returns them as 1-element vectors, which that reduce averages.
    """
    import numpy as np
    import tensorflow as tf

    from .pipeline import crop_sizes

    side = crop_sizes(config.image_size, 2**config.depth)[0]
    sample = np.zeros((config.batch_size, side, side, 4), np.float32)
    model._symbolic_build(data_batch=(sample, sample))
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    train_step = model.train_step

    def vector_logs_train_step(data):
        return {name: tf.reshape(value, [1]) for name, value in train_step(data).items()}

    model.train_step = vector_logs_train_step


def training_input(data, config: TrainConfig, distribution, start_step: int):
    """The streamed ``tf.data`` input, one pipeline per worker under a strategy (per-replica batches)."""
    from .pipeline import crop_sizes
    from .stream import Layout, training_batches

    sizes = crop_sizes(config.image_size, 2**config.depth)

    def pipeline(pipelines: int = 1, pipeline_id: int = 0, replicas: int = 1):
        layout = Layout(config.batch_size, sizes, replicas, pipelines, pipeline_id, start_step)
        return training_batches(data, layout, mask_kind=config.mask_kind, seed=config.seed,
                                deterministic=config.deterministic)

    if distribution.strategy is None:
        return pipeline()
    return distribution.strategy.distribute_datasets_from_function(
        lambda context: pipeline(context.num_input_pipelines, context.input_pipeline_id,
                                 context.num_replicas_in_sync))


def build_model(config: TrainConfig):
    from .model import build_model as build

    return build(config.depth, config.base_filters, parse_int_list(config.dilations), config.coarse_side,
                 config.smoothing, config.spectral_blocks, parse_name_list(config.leaky_blocks))


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

    from .adversarial import generator_of

    keras.mixed_precision.set_global_policy("float32")
    copy = build_model(config)
    copy.set_weights(generator_of(model).get_weights())
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
    """Publish the weights a finished run left in ``folder`` as the next version of ``model_base_path``.

    ``folder`` may also be one epoch of a ``--backup-dir`` (``BACKUP/epoch-000012``): a run still
    training, or stopped for good, publishes the network as it was after that epoch.
    """
    from .resume import METADATA_FILE, RUN_FILE, WEIGHTS_FILE

    if (folder / WEIGHTS_FILE).is_file() and (folder / METADATA_FILE).is_file():
        return _publish_backup_epoch(folder, model_base_path, folder.parent / RUN_FILE)
    record_path, weights = folder / CHECKPOINT_RECORD, folder / FINAL_WEIGHTS
    if not (record_path.is_file() and weights.is_file()):
        raise BackupError(f"{folder} holds no finished run ({CHECKPOINT_RECORD} and {FINAL_WEIGHTS}) and no "
                          f"backup epoch ({WEIGHTS_FILE} and {METADATA_FILE})")
    record = json.loads(record_path.read_text())
    config = _config_from(record["config"], model_base_path)
    import keras

    keras.mixed_precision.set_global_policy("float32")
    model = build_model(config)
    model.load_weights(str(weights))
    record["published_from"] = str(folder)
    return publish(model, config, record)


def _config_from(options: dict, model_base_path: str) -> TrainConfig:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return dataclasses.replace(TrainConfig(**{k: v for k, v in options.items() if k in known}),
                               model_base_path=model_base_path)


def _publish_backup_epoch(folder: Path, model_base_path: str, run_file: Path) -> Path:
    """The network of one backup epoch, loaded as the run built it (with its discriminator, if any)."""
    from .resume import METADATA_FILE, WEIGHTS_FILE

    if not run_file.is_file():
        raise BackupError(f"{folder} is a backup epoch but {run_file} (the run's options) is missing")
    run = json.loads(run_file.read_text())
    config = _config_from(run["config"], model_base_path)
    metadata = json.loads((folder / METADATA_FILE).read_text())
    import keras

    keras.mixed_precision.set_global_policy("float32")
    model = compile_for_training(build_model(config), config)
    build_optimizers(model)
    model.load_weights(str(folder / WEIGHTS_FILE))
    from .adversarial import generator_of

    record = {"parameters": int(generator_of(model).count_params()), "config": dataclasses.asdict(config),
              "history": metadata.get("history", {}),
              "steps_done": int(metadata["epoch"]) * config.steps_per_epoch,
              "training_seconds": metadata.get("seconds"), "run_id": run.get("run_id"),
              "published_from": str(folder)}
    if config.init_weights:
        record["initialised_from"] = lineage(Path(config.init_weights))
    return publish(float32_copy(model, config), config, record)


def lineage(version: Path) -> dict:
    """Where a fine-tuned model's weights came from: that version's run record, less its history."""
    record_path = version / RUN_RECORD
    if not record_path.is_file():
        return {"path": str(version)}
    record = json.loads(record_path.read_text())
    record.pop("history", None)
    record.get("dataset", {}).pop("files", None)
    return {"path": str(version), **record}


def run_record(config: TrainConfig, dataset, model, history: dict, seconds: float) -> dict:
    """What is saved with the model: config, data, final metrics, the per-epoch history, the weights' origin."""
    import keras

    from .adversarial import generator_of

    history = {name: [float(v) for v in values] for name, values in history.items()}
    steps_done = len(history.get("loss", [])) * config.steps_per_epoch  # fewer than planned after a time limit
    record = {
        "config": dataclasses.asdict(config),
        "dataset": dataset.describe(),
        "final_metrics": {name: values[-1] for name, values in history.items()},
        "history": history,
        "parameters": int(generator_of(model).count_params()),
        "training_seconds": round(seconds, 1),
        "steps_done": steps_done,
        "seconds_per_step": round(seconds / max(1, steps_done), 4),
        "versions": {"keras": keras.__version__, "backend": keras.backend.backend(),
                     "python": platform.python_version()},
        "note": "dice is the founding report's metric, kept only for comparison: it carries no signal.",
    }
    if config.init_weights:
        record["initialised_from"] = lineage(Path(config.init_weights))
    return record


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


def parse_name_list(text: str) -> tuple[str, ...]:
    """``"up2, up3"`` -> ``("up2", "up3")``; an empty string is an empty tuple."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _block_list(ctx, param, value):
    import re

    wrong = [name for name in parse_name_list(value) if not re.fullmatch(r"(down|up)\d+|bottleneck", name)]
    if wrong:
        raise click.BadParameter(f"{', '.join(wrong)}: name refiner blocks, e.g. up2 or down1,bottleneck")
    return value


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


# What inpaint-train read before its variables carried its own prefix (issue 24), and the option each set.
# Refused, not ignored: a setting meant for the trainer is never dropped silently, nor another tool's taken.
UNPREFIXED_ENVVARS = {f"INPAINT_{name}": "--" + name.lower().replace("_", "-") for name in (
    "DATA", "LOADER", "DATA_FORMAT", "DETERMINISTIC", "MODEL_BASE_PATH", "IMAGE_SIZE", "DEPTH", "BASE_FILTERS",
    "DILATIONS", "SPECTRAL_BLOCKS", "COARSE_SIDE", "SMOOTHING", "PRECISION", "MASK_KIND", "HOLE_WEIGHT",
    "ADVERSARIAL_WEIGHT", "FEATURE_MATCHING_WEIGHT", "DISCRIMINATOR_FILTERS", "DISCRIMINATOR_LEARNING_RATE",
    "BATCH_SIZE", "EPOCHS", "LEARNING_RATE", "VALIDATION_SIZE", "INIT_WEIGHTS", "CHECKPOINT_DIR", "WORKERS",
    "STRATEGY", "BACKUP_DIR", "LOGDIR", "MAX_MINUTES", "PUBLISH_CHECKPOINT", "SEED", "VERBOSE")}
UNPREFIXED_ENVVARS |= {"INPAINT_MODEL": "--model-name", "INPAINT_STEPS": "--steps-per-epoch"}
# INPAINT_TRAIN_<OPTION> for every option (--batch-size: INPAINT_TRAIN_BATCH_SIZE), the old names refused.
VARIABLES = ToolVariables("inpaint-train", "INPAINT_TRAIN_")
VARIABLES.rename(UNPREFIXED_ENVVARS)
option = VARIABLES.option


_DEFAULTS = TrainConfig()


@click.command(cls=Command, variables=VARIABLES, context_settings={"show_default": True})
@option("--data", default=_DEFAULTS.data,
        help="Training data: 'samples' (bundled photos), 'photos[:DIR]' (assembled by make photos), "
             "'cifar10', 'cifar10:PATH', a folder of images (recursive), a glob ('photos/**/*.jpg') or "
             "TFRecord shards (a folder or glob of *.tfrecord / *.tfrec); any path tf.io.gfile reads.")
@option("--loader", default=_DEFAULTS.loader, type=click.Choice(LOADERS),
        help="memory: decode every image before the first step (the built-in sources' way); stream: keep "
             "only file names and decode, crop and mask in a parallel tf.data pipeline (memory independent "
             "of the data's size); auto: stream globs, TFRecords, remote paths and folders of more than "
             "1,000 images or 100 MB, read the rest into memory.")
@option("--data-format", default=_DEFAULTS.data_format, type=click.Choice(DATA_FORMATS),
        help="What --data holds; auto: image files if there are any, else TFRecord shards (by suffix).")
@option("--deterministic/--no-deterministic", default=_DEFAULTS.deterministic,
        help="Streamed batches in a reproducible order (each example is seeded either way; "
             "--no-deterministic lets fast decodes overtake slow ones).")
@option("--model-base-path", default=_DEFAULTS.model_base_path,
        type=click.Path(file_okay=False), help="Model repository; the run is published as its next version.")
@option("--model-name", default=_DEFAULTS.model_name, help="Model name written into the TF Serving warmup requests.")
@option("--image-size", default=_DEFAULTS.image_size, callback=_positive,
        help="Side of the square training crops, in pixels.")
@option("--depth", default=_DEFAULTS.depth, callback=_positive,
        help="U-Net encoder depth (the report compared 2, 3 and 5).")
@option("--base-filters", default=_DEFAULTS.base_filters, callback=_positive,
        help="Filters in the first U-Net level; doubled at every level.")
@option("--dilations", default=_DEFAULTS.dilations, callback=_positive_list,
        help="Dilation rates of extra bottleneck convolutions, comma-separated ('' for none).")
@option("--spectral-blocks", default=_DEFAULTS.spectral_blocks, type=click.IntRange(min=0),
        help="Fourier units (LaMa's FFC, exported as plain matmuls) after the U-Net bottleneck: every cell sees "
             "the whole image. Added to --init-weights that lack them, they start as the identity.")
@option("--leaky-blocks", default=_DEFAULTS.leaky_blocks, callback=_block_list,
        help="Refiner blocks (comma-separated, as --reinitialise names them) whose ReLUs leak (slope 0.2): a unit "
             "that leaks passes gradient whatever its input, so the block cannot fall silent for good. Weights "
             "of --init-weights load into it all the same.")
@option("--coarse-side", default=_DEFAULTS.coarse_side, callback=_positive,
        help="Long side, in pixels, of the coarse pass (larger images are downscaled to it first).")
@option("--smoothing", default=_DEFAULTS.smoothing, type=click.IntRange(min=0),
        help="Jacobi smoothing steps per pyramid level of the push-pull fill the network refines.")
@option("--precision", default=_DEFAULTS.precision, type=click.Choice(PRECISIONS),
        help="Training compute precision; auto picks bfloat16 on CPUs with native bf16, else float32. "
             "The exported model is always float32.")
@option("--mask-kind", default=_DEFAULTS.mask_kind, type=click.Choice(MASK_KINDS),
        help="Hole generator used for training.")
@option("--hole-weight", default=_DEFAULTS.hole_weight, callback=_positive,
        help="L1 weight of hole pixels relative to known pixels.")
@option("--adversarial-weight", default=_DEFAULTS.adversarial_weight, type=click.FloatRange(min=0),
        help="Weight of the adversarial loss (a PatchGAN discriminator on the composited output, next to the "
             "L1 whose weight is 1); 0 trains with L1 alone. The discriminator is not exported.")
@option("--feature-matching-weight", default=_DEFAULTS.feature_matching_weight, type=click.FloatRange(min=0),
        help="Weight of the discriminator's feature-matching L1 (truth vs fill features); > 0 enables the "
             "discriminator too.")
@option("--discriminator-filters", default=_DEFAULTS.discriminator_filters, callback=_positive,
        help="Filters in the discriminator's first level.")
@option("--discriminator-learning-rate", default=_DEFAULTS.discriminator_learning_rate, callback=_positive,
        help="Peak Adam learning rate of the discriminator, cosine-decayed like the generator's.")
@option("--batch-size", default=_DEFAULTS.batch_size, callback=_positive,
        help="Crops per training step and replica: the global batch is this times the replicas in sync.")
@option("--epochs", default=_DEFAULTS.epochs, callback=_positive, help="Training epochs.")
@option("--steps-per-epoch", default=_DEFAULTS.steps_per_epoch, callback=_positive, help="Training steps per epoch.")
@option("--learning-rate", default=_DEFAULTS.learning_rate, callback=_positive,
        help="Peak Adam learning rate, cosine-decayed to zero. Kept as given at any number of replicas (no "
             "linear scaling with the global batch: Adam's steps do not grow with the batch the way SGD's "
             "do); scale it yourself if you raise the global batch a lot.")
@option("--validation-size", default=_DEFAULTS.validation_size, callback=_positive,
        help="Fixed validation crops scored after every epoch.")
@option("--init-weights", default=_DEFAULTS.init_weights,
        callback=lambda ctx, param, value: "" if value in ("none", "") else value,
        help="Start from this published version's weights (e.g. models/pretrained/inpaint/1); the "
             "architecture options must match its run record; 'none' trains from scratch.")
@option("--reinitialise", default=_DEFAULTS.reinitialise, callback=_block_list,
        help="Refiner blocks (comma-separated: down0..down3, bottleneck, up0..up3) whose weights start afresh "
             "over --init-weights: a block whose ReLUs never fire passes no gradient and cannot learn again "
             "(benchmarks/silent_layers.py finds them; the shipped model's up2).")
@option("--checkpoint-dir", default=_DEFAULTS.checkpoint_dir, type=click.Path(file_okay=False),
        help="Back up weights, optimizer and epoch in DIR/backup after every epoch (as --backup-dir); "
             "rerunning resumes. Also where another backend's finished weights go.")
@option("--workers", default=_DEFAULTS.workers, callback=_positive,
        help="Threads that draw training crops and masks with --loader memory (a stream uses tf.data's "
             "AUTOTUNE).")
@option("--strategy", default=_DEFAULTS.strategy, type=click.Choice(STRATEGIES),
        help="one: one device; mirrored: MirroredStrategy over the local GPUs; multi-worker: "
             "MultiWorkerMirroredStrategy configured by TF_CONFIG (only the chief publishes); auto: "
             "multi-worker when TF_CONFIG names several tasks, mirrored on several GPUs, else one.")
@option("--backup-dir", default=_DEFAULTS.backup_dir, type=click.Path(file_okay=False),
        help="Back up after every epoch (Keras BackupAndRestore, written atomically): a run killed at any "
             "point and started again with the same command continues from its last epoch and publishes "
             "one version; removed once published. Every worker must read it (shared volume).")
@option("--logdir", default=_DEFAULTS.logdir,
        help="TensorBoard log folder: losses, learning rate, validation metrics and example fills per epoch.")
@option("--max-minutes", default=_DEFAULTS.max_minutes, type=click.FloatRange(min=0),
        help="Stop after the epoch that passes this many minutes of training (0: no limit).")
@option("--publish-checkpoint", "finished_run", default=None,
        type=click.Path(file_okay=False, exists=True, path_type=Path),
        help="Publish a finished run's checkpoint folder (trained under another Keras backend), or one epoch "
             "of a --backup-dir (BACKUP/epoch-000012, while the run goes on), and exit.")
@option("--seed", default=_DEFAULTS.seed, help="Random seed; a run is reproducible.")
@option("-v", "--verbose", is_flag=True, help="Show debug logs and tracebacks.")
def main(verbose: bool, finished_run: Path | None, **options) -> None:
    """Train the inpainting network and publish SavedModel version N+1 under --model-base-path.

    Every option also reads INPAINT_TRAIN_<OPTION> (--batch-size: INPAINT_TRAIN_BATCH_SIZE).
    """
    # TensorFlow's C++ start-up lines (CUDA probing on CPU machines) are noise unless asked for.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "3")
    configure_logging(verbose)
    config = TrainConfig(**options)
    try:
        if finished_run is not None:
            version = publish_checkpoint(finished_run, config.model_base_path)
        else:
            from .startup import check_init_weights, import_tensorflow  # run record first, then TF, quietly
            check_init_weights(config)
            import_tensorflow(verbose)
            version = train(config)
    except (TrainingError, ValueError, OSError) as error:
        if verbose:
            raise
        raise click.ClickException(str(error)) from None
    click.echo(f"wrote {version}" if version is not None else "trained; the chief wrote the version")


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


if __name__ == "__main__":
    main()
