"""What stops a training run before or while it trains: one base, one type per cause.

``inpaint-train`` turns any ``TrainingError`` into a one-line error (a traceback with ``--verbose``).
"""

from __future__ import annotations


class TrainingError(Exception):
    """The run cannot go on as asked."""


class DataError(TrainingError, ValueError):
    """The data source is missing, empty or unusable."""


class DistributionError(TrainingError):
    """Where the run is asked to execute cannot run it: the Keras backend, the strategy, TF_CONFIG, the workers."""


class BackupError(TrainingError):
    """A backup or checkpoint folder cannot be resumed or published from."""
