"""``--backup-dir``: a run killed at any instant and started again with the same command goes on from
its last finished epoch and publishes exactly one version.

The folder holds::

    run.json            this run's identity (a random id) and its options, written once at its start
    epoch-000003/       the backup after epoch 3: weights with the optimizer's state (Keras
                        BackupAndRestore's file) and training_metadata.json (epoch, history so far,
                        training seconds, whether a callback stopped training early)
    epoch-000002/       the one before, kept in case the newest cannot be read

An epoch's backup is written into a hidden temporary folder and renamed: a folder is whole or
absent, whenever the kill comes. The published version's run record carries the run id; a
restarted run that finds its id under the model base path was killed after publishing and returns
that version instead of training again. After publishing the folder is removed, so running the same
command once more trains a new run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import keras
from inpaint.core.repository import RUN_RECORD, list_versions

from .errors import BackupError

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
EPOCH_PREFIX = "epoch-"
WEIGHTS_FILE = "latest.weights.h5"      # BackupAndRestore's own names
METADATA_FILE = "training_metadata.json"
KEEP = 2
# Options that may differ between the first start and a restart without changing the run.
RESTART_MAY_CHANGE = {"workers", "max_minutes", "logdir", "deterministic"}


@dataclass
class BackupState:
    """A whole epoch backup."""

    folder: Path
    epoch: int
    history: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0
    stopped: bool = False

    @property
    def weights(self) -> Path:
        return self.folder / WEIGHTS_FILE


def _epoch_folders(backup_dir: Path) -> list[Path]:
    if not backup_dir.is_dir():
        return []
    folders = [p for p in backup_dir.iterdir() if p.is_dir() and p.name.startswith(EPOCH_PREFIX)
               and p.name[len(EPOCH_PREFIX):].isdigit()]
    return sorted(folders, key=lambda p: int(p.name[len(EPOCH_PREFIX):]), reverse=True)


def _readable(path: Path) -> bool:
    import h5py

    try:
        with h5py.File(path, "r"):
            return True
    except (OSError, ValueError):
        return False


def latest_state(backup_dir: Path) -> BackupState | None:
    """The newest epoch backup that can be read, or None (a fresh run)."""
    for folder in _epoch_folders(backup_dir):
        try:
            metadata = json.loads((folder / METADATA_FILE).read_text())
        except (OSError, ValueError) as error:
            logger.warning("backup %s is unreadable (%s): trying the one before", folder, error)
            continue
        state = BackupState(folder, int(metadata["epoch"]), metadata.get("history", {}),
                            float(metadata.get("seconds", 0.0)), bool(metadata.get("stopped", False)))
        if _readable(state.weights):
            return state
        logger.warning("backup weights %s are unreadable: trying the one before", state.weights)
    legacy = backup_dir / METADATA_FILE  # Keras' own layout, left by this trainer before epoch folders
    if legacy.is_file() and _readable(backup_dir / WEIGHTS_FILE):
        try:
            return BackupState(backup_dir, int(json.loads(legacy.read_text())["epoch"]))
        except (OSError, ValueError, KeyError):
            logger.warning("backup %s is unreadable: starting afresh", legacy)
    return None


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """Keras ``BackupAndRestore`` whose backups survive a kill at any instant and carry the history.

    Restores ``state`` (read before ``fit`` so that the data stream can start where it stopped) and
    writes each epoch's backup into ``write_dir`` (the backup folder on the chief, a temporary one on
    the other workers).
    """

    def __init__(self, backup_dir: Path, state: BackupState | None, write_dir: Path | None = None):
        super().__init__(str(backup_dir), save_freq="epoch", delete_checkpoint=False)
        self.state = state
        self.write_dir = Path(write_dir or backup_dir)
        self.history: dict[str, list[float]] = {k: list(v) for k, v in (state.history if state else {}).items()}
        self.seconds_before = state.seconds if state else 0.0
        self.started = time.monotonic()

    @property
    def seconds(self) -> float:
        return self.seconds_before + time.monotonic() - self.started

    def on_train_begin(self, logs=None):
        self.started = time.monotonic()
        self._load_model()

    def _load_model(self):
        if self.state is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)  # its variables are in the file
        self.model.load_weights(str(self.state.weights))
        self.model._initial_epoch = self.state.epoch  # how BackupAndRestore tells fit where to start
        self._current_epoch = self.state.epoch

    def on_epoch_end(self, epoch, logs=None):
        for name, value in (logs or {}).items():
            self.history.setdefault(name, []).append(float(value))
        self._current_epoch = epoch + 1
        self._save_model()

    def _save_model(self):
        self.write_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.write_dir))
        try:
            self.model.save_weights(str(staging / WEIGHTS_FILE))
            metadata = {"epoch": self._current_epoch, "batch": 0, "history": self.history,
                        "seconds": round(self.seconds, 1), "stopped": bool(self.model.stop_training)}
            (staging / METADATA_FILE).write_text(json.dumps(metadata))
            os.rename(staging, self.write_dir / f"{EPOCH_PREFIX}{self._current_epoch:06d}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        for old in _epoch_folders(self.write_dir)[KEEP:]:
            shutil.rmtree(old, ignore_errors=True)

    def on_train_end(self, logs=None):
        pass  # the backup stays until the version is published (RunBackup.finish)


class RunBackup:
    """The backup folder of one run: its identity, its state, and its removal once published."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def identity(self, config: dict, create: bool) -> str | None:
        """This run's id: read from ``run.json``, or created there (``create``, on the chief) for a
        fresh run. Warns about options that differ from the first start's."""
        path = self.folder / RUN_FILE
        if path.is_file():
            try:
                stored = json.loads(path.read_text())
            except ValueError:
                stored = None
            if stored is not None:
                changed = sorted(k for k, v in stored.get("config", {}).items()
                                 if k in config and config[k] != v and k not in RESTART_MAY_CHANGE)
                if changed:
                    logger.warning("%s was started with other options (%s): resuming anyway", self.folder,
                                   ", ".join(f"{k}={stored['config'][k]!r}" for k in changed))
                return stored["run_id"]
        if not create:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(".staging-*"):  # a kill mid-backup leaves one
            shutil.rmtree(stale, ignore_errors=True)
        run_id = uuid.uuid4().hex
        temporary = self.folder / f".{RUN_FILE}.tmp"
        temporary.write_text(json.dumps({"run_id": run_id, "config": config}, indent=2) + "\n")
        os.rename(temporary, path)
        return run_id

    def state(self) -> BackupState | None:
        return latest_state(self.folder)

    def finish(self) -> None:
        """Remove the backup after publishing: epochs first, the identity last (a kill in between
        leaves an identity whose version exists, which the next start recognises)."""
        for folder in _epoch_folders(self.folder):
            shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(self.folder, ignore_errors=True)


def find_published(model_base_path: Path, run_id: str | None) -> Path | None:
    """The version under ``model_base_path`` whose run record carries ``run_id``."""
    if not run_id:
        return None
    for version in reversed(list_versions(model_base_path)):
        record = model_base_path / str(version) / RUN_RECORD
        try:
            if json.loads(record.read_text()).get("run_id") == run_id:
                return model_base_path / str(version)
        except (OSError, ValueError):
            continue
    return None


def check_resumable(state: BackupState | None, epochs: int) -> None:
    if state is not None and state.epoch > epochs:
        raise BackupError(f"the backup in {state.folder.parent} has {state.epoch} epochs done, more than --epochs "
                          f"{epochs}")
