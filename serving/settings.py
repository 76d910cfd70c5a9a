"""inpaint-serve's settings, each written once: a ``ServerConfig`` (or ``BatchingOptions``) field that is set by
a flag carries a ``Setting`` in its metadata, and ``serving/cli.py`` builds the click option from it.

The field gives the option's name, type and default; the ``Setting`` its help, its flag where that is not
the field's name dashed, TF Serving's underscore spelling where TF Serving has the flag, and the bounds a
value must keep. Its environment variable follows from the flag (``INPAINT_SERVE_<FLAG>``, core/envvars.py).
Nothing here needs click: the server runs without its CLI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Setting:
    help: str
    flag: str | None = None          # default: the field's name, dashed (--memory-budget-mib)
    tf_serving: bool = False         # also TF Serving's spelling of the flag (--model_base_path)
    min: float | None = None         # bounds of a number
    max: float | None = None
    choices: tuple[str, ...] = ()
    path: str | None = None          # "folder": a folder's path; "file": a file that exists
    check: Callable[[Any], None] | None = None  # raises ValueError for a value it refuses, saying why
    hidden: bool = False

    def flags(self, field_name: str) -> list[str]:
        """The option's flags: the dashed one first, TF Serving's after it."""
        flag = self.flag or "--" + field_name.replace("_", "-")
        return [flag, "--" + flag[2:].replace("-", "_")] if self.tf_serving else [flag]


def setting(help: str, **how: Any) -> dict[str, Setting]:
    """Field metadata: ``field(default=..., metadata=setting("Largest H x W per image.", min=1))``."""
    return {"setting": Setting(help, **how)}


def check_port(value: int) -> None:
    if not -1 <= value <= 65535:
        raise ValueError("must be 0-65535 (0 picks a free port; -1 disables REST)")


def check_origin(value: str) -> None:
    if value != "*" and not re.fullmatch(r"https?://[^/\s]+", value):
        raise ValueError("must be * or an origin: scheme://host[:port], no path (https://app.example.com)")
