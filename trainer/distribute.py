"""``--strategy``: one device, ``MirroredStrategy`` over local GPUs, ``MultiWorkerMirroredStrategy``.

* ``one``: no ``tf.distribute`` scope at all, exactly the single-device trainer.
* ``mirrored``: every local GPU (the CPU where there is none) holds a replica; gradients are summed
  across them each step.
* ``multi-worker``: ``MultiWorkerMirroredStrategy`` configured by ``TF_CONFIG``, the standard
  (``{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}``); the chief
  is the ``chief`` task, else worker 0. It must be created before TensorFlow runs any op, so the
  trainer resolves the strategy first.
* ``auto``: ``multi-worker`` when ``TF_CONFIG`` names more than one task, ``mirrored`` on more than one
  local GPU, else ``one``.

The global batch is ``--batch-size`` (per replica) times the replicas in sync. Only the chief writes
what outlives the run (the version, the backup, TensorBoard logs); the other workers write the same
things into temporary folders that are deleted, as TensorFlow's multi-worker guide advises.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field

from .errors import DistributionError

logger = logging.getLogger(__name__)

STRATEGIES = ("auto", "one", "mirrored", "multi-worker")


def tf_config() -> dict:
    try:
        return json.loads(os.environ.get("TF_CONFIG") or "{}")
    except json.JSONDecodeError as error:
        raise DistributionError(f"TF_CONFIG is not JSON: {error}") from None


def cluster_tasks(config: dict) -> int:
    """Tasks that train (chief and workers) in a TF_CONFIG."""
    cluster = config.get("cluster") or {}
    return sum(len(cluster.get(job, [])) for job in ("chief", "worker"))


def is_chief_task(config: dict) -> bool:
    task = config.get("task") or {}
    if task.get("type") == "chief":
        return True
    return task.get("type", "worker") == "worker" and int(task.get("index", 0)) == 0 and \
        not (config.get("cluster") or {}).get("chief")


@dataclass
class Distribution:
    """The resolved strategy and this process's place in it."""

    name: str                      # one | mirrored | multi-worker
    strategy: object | None = None  # None: the default strategy, no scope
    replicas: int = 1
    workers: int = 1
    is_chief: bool = True
    task: str = "chief"
    _reduce: object | None = field(default=None, repr=False)
    _temporary: list[str] = field(default_factory=list, repr=False)

    def scope(self):
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def describe(self) -> dict:
        return {"strategy": self.name, "replicas": self.replicas, "workers": self.workers, "task": self.task}

    def _sum(self, value: float, chief_only: bool) -> float:
        """The sum of ``value`` over every replica (or the chief's first replica's alone): a collective
        every worker must call at the same point."""
        if self.strategy is None or self.workers == 1:
            return value
        import tensorflow as tf

        if self._reduce is None:
            strategy = self.strategy

            @tf.function
            def reduce(x, only_first):
                def per_replica():
                    first = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group, 0)
                    return tf.where(tf.logical_or(tf.logical_not(only_first), first), x, 0.0)
                return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(per_replica), axis=None)

            self._reduce = reduce
        return float(self._reduce(tf.constant(value, tf.float32), tf.constant(chief_only)))

    def any(self, flag: bool) -> bool:
        """True on every worker if ``flag`` is true on any (a time limit must stop all of them at once)."""
        return self._sum(1.0 if flag else 0.0, chief_only=False) > 0

    def chief_value(self, value: float) -> float:
        """The chief's ``value``, on every worker."""
        return self._sum(float(value), chief_only=True)

    def writable(self, path: str) -> str:
        """``path`` on the chief; a temporary folder (deleted by ``cleanup``) on the other workers."""
        if self.is_chief or not path:
            return path
        folder = tempfile.mkdtemp(prefix=f"inpaint-{self.task.replace(':', '')}-")
        self._temporary.append(folder)
        return folder

    def cleanup(self) -> None:
        for folder in self._temporary:
            shutil.rmtree(folder, ignore_errors=True)
        self._temporary.clear()


def resolve_distribution(name: str) -> Distribution:
    """Create the strategy ``name`` asks for. Call before TensorFlow runs anything."""
    if name not in STRATEGIES:
        raise DistributionError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    import keras

    if keras.backend.backend() != "tensorflow":
        if name in ("mirrored", "multi-worker"):
            raise DistributionError(f"--strategy {name} needs the TensorFlow backend (KERAS_BACKEND=tensorflow)")
        return Distribution("one")
    import tensorflow as tf

    config = tf_config()
    if name == "auto":
        if cluster_tasks(config) > 1:
            name = "multi-worker"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "one"
    if name == "one":
        return Distribution("one")
    if name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
        logger.info("MirroredStrategy over %d replicas", strategy.num_replicas_in_sync)
        return Distribution("mirrored", strategy, strategy.num_replicas_in_sync)
    if cluster_tasks(config) < 1 or "task" not in config:
        raise DistributionError("--strategy multi-worker needs TF_CONFIG with a cluster and this process's task, "
                                'e.g. {"cluster": {"worker": ["host1:2222", "host2:2222"]}, '
                                '"task": {"type": "worker", "index": 0}}')
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    task = config["task"]
    distribution = Distribution("multi-worker", strategy, strategy.num_replicas_in_sync,
                                workers=cluster_tasks(config), is_chief=is_chief_task(config),
                                task=f"{task.get('type', 'worker')}:{int(task.get('index', 0))}")
    logger.info("MultiWorkerMirroredStrategy: %s of %d workers (%s), %d replicas in sync", distribution.task,
                distribution.workers, "chief" if distribution.is_chief else "not the chief", distribution.replicas)
    return distribution
