"""What the trainer and the exporter do before TensorFlow loads.

* ``check_init_weights``: ``--init-weights`` must name a published version whose
  architecture options (its run record) are this run's; checked in a
  millisecond, not after TensorFlow has loaded and the network is built.
* ``import_tensorflow``: TensorFlow without its start-up banners (CUDA probing
  on machines without a GPU, CPU instruction notes, oneDNN), which it writes to
  the process's stderr before its own logging starts, so ``TF_CPP_MIN_LOG_LEVEL``
  alone does not hide them. They are shown with ``-v``. oneDNN itself stays on
  (``TF_ENABLE_ONEDNN_OPTS`` is left as it is): only its notice goes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path

from inpaint.core.repository import RUN_RECORD

# The options that give the network its weights' names and shapes (train.py's TrainConfig fields).
ARCHITECTURE = ("depth", "base_filters", "dilations")

# TensorFlow's and XLA's start-up lines on CPU and GPU machines: notices, never errors of ours.
STARTUP_NOISE = re.compile(
    r"absl::InitializeLog|cudart_stub|Could not find cuda drivers|cpu_feature_guard|To enable the following "
    r"instructions|rebuild TensorFlow with the appropriate compiler flags|oneDNN custom operations|"
    r"TF_ENABLE_ONEDNN_OPTS|Unable to register cu(DNN|FFT|BLAS) factory|Attempting to register factory|"
    r"computation_placer|TF-TRT Warning|failed call to cuInit|cuda_executor|cuda_diagnostics|"
    r"This TensorFlow binary is optimized")


def check_init_weights(config) -> None:
    """ValueError, naming the fix, unless ``config.init_weights`` (empty: none) fits this run's architecture."""
    if not config.init_weights:
        if config.reinitialise:
            raise ValueError(f"--reinitialise {config.reinitialise} draws blocks afresh over trained weights: give "
                             "--init-weights VERSION, or drop --reinitialise (from scratch every block is new)")
        return
    version = Path(config.init_weights)
    if not (version / "saved_model.pb").is_file():
        raise ValueError(f"--init-weights {version} is not a published version (no saved_model.pb there): give "
                         "one, e.g. models/pretrained/inpaint/1, or --init-weights none to train from scratch")
    recorded = recorded_config(version)
    differ = [name for name in ARCHITECTURE
              if name in recorded and _normal(name, recorded[name]) != _normal(name, getattr(config, name))]
    if differ:
        theirs = " ".join(_option(name, recorded[name]) for name in differ)
        ours = " ".join(_option(name, getattr(config, name)) for name in differ)
        raise ValueError(f"{version} does not match this architecture: its run record has {theirs}, this run "
                         f"{ours}; give {theirs} to fine-tune it, or --init-weights none to train from scratch")


def recorded_config(version: Path) -> dict:
    """The training options in a version's run record; empty when it has none (weights are then checked by name)."""
    path = version / RUN_RECORD
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text()).get("config", {})
    except (ValueError, AttributeError) as error:
        raise ValueError(f"cannot read {path}: {error}; fix it, or --init-weights none to train from scratch") \
            from None


def _normal(name: str, value) -> object:
    if name == "dilations":
        return tuple(int(part) for part in str(value).split(",") if part.strip())
    return value


def _option(name: str, value) -> str:
    text = str(value)
    return f"--{name.replace('_', '-')} {text if text else repr(text)}"


def import_tensorflow(verbose: bool = False):
    """``import tensorflow`` (and keras), its start-up banners hidden unless ``verbose``; returns the module."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "3")
    if verbose or "tensorflow" in sys.modules:
        import tensorflow

        return tensorflow
    with stderr_without(STARTUP_NOISE):
        import keras  # noqa: F401 - keras' backend import loads TensorFlow's libraries too
        import tensorflow
    return tensorflow


@contextlib.contextmanager
def stderr_without(noise: re.Pattern):
    """Collect what is written to file descriptor 2 (C++ libraries too), then write back all but ``noise``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as collected:
        os.dup2(collected.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            collected.seek(0)
            kept = [line for line in collected.read().decode(errors="replace").splitlines(keepends=True)
                    if not noise.search(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
