"""TF Serving's REST predict body <-> numpy, as plain functions a worker process can run.

A large JSON body takes seconds to parse and CPython's parser holds the GIL the
whole time, so ``rest`` runs these in a separate process for large bodies:
the event loop (and ``/healthz``) never waits on them. Declared shapes are
checked against the limits before any array is allocated.
"""

from __future__ import annotations

import json

import numpy as np

from .errors import InvalidInput
from .inputs import Limits, check_shapes


def declared_shape(value) -> tuple[int, ...]:
    """The shape a nested list claims, read along its first elements (numpy checks the rest)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


def _first_scalar(value):
    while isinstance(value, list) and value:
        value = value[0]
    return value


def to_array(name: str, value) -> np.ndarray:
    """A JSON tensor as uint8 (integers 0..255) or float32 (floats, which must lie in [0, 1])."""
    first = _first_scalar(value)
    dtype = np.float32 if isinstance(first, float) else np.uint8
    try:
        return np.asarray(value, dtype=dtype)
    except OverflowError:
        raise InvalidInput(f"input '{name}' has integers outside 0..255") from None
    except (ValueError, TypeError):
        raise InvalidInput(f"input '{name}' is not a rectangular array of numbers") from None


def parse_body(body: bytes) -> dict:
    try:
        parsed = json.loads(body)
    except RecursionError:
        raise InvalidInput("request body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("request body is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise InvalidInput("request body must be a JSON object")
    return parsed


def _row_form_columns(instances) -> dict[str, list]:
    if not isinstance(instances, list) or not instances or not all(isinstance(i, dict) for i in instances):
        raise InvalidInput("'instances' must be a non-empty list of objects with 'image' and 'mask'")
    names = set(instances[0])
    if any(set(i) != names for i in instances):
        raise InvalidInput("every instance must have the same named inputs")
    return {name: [i[name] for i in instances] for name in names}


def decode_predict(body: bytes, limits: Limits) -> tuple[dict[str, np.ndarray], bool, str]:
    """``(arrays, row_form, signature_name)`` from a ``:predict`` body; InvalidInput naming the problem."""
    parsed = parse_body(body)
    if ("instances" in parsed) == ("inputs" in parsed):
        raise InvalidInput("the request body needs exactly one of 'instances' or 'inputs'")
    row_form = "instances" in parsed
    if row_form:
        columns = _row_form_columns(parsed["instances"])
    else:
        columns = parsed["inputs"]
        if not isinstance(columns, dict):
            raise InvalidInput("'inputs' must be an object mapping input names to tensors")
    check_shapes({name: declared_shape(value) for name, value in columns.items()}, limits)
    arrays = {name: to_array(name, value) for name, value in columns.items()}
    signature = parsed.get("signature_name", "")
    if not isinstance(signature, str):
        raise InvalidInput("'signature_name' must be a string")
    return arrays, row_form, signature


def encode_predictions(output: np.ndarray, row_form: bool) -> bytes:
    """TF Serving's answer: ``predictions`` for the row form, ``outputs`` for the columnar form.

    TF Serving drops the output's name when the signature has a single output.
    """
    key = "predictions" if row_form else "outputs"
    return json.dumps({key: output.tolist()}, separators=(",", ":")).encode()
