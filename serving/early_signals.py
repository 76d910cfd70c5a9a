"""Stop signals that arrive while ``inpaint-serve`` is still importing, remembered rather than lost.

Python raises KeyboardInterrupt for a SIGINT wherever the interpreter is, and an import that catches
broadly can swallow it: a server told to stop half a second after it was launched then went on to serve
(measured). ``remember`` (first thing in ``serving/cli.py``) records SIGINT, SIGTERM and SIGHUP until
``serve`` installs its own handlers and acts on what was recorded.
"""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
received: list[int] = []


def _record(signum: int, frame) -> None:
    received.append(signum)


def remember() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, _record)
