"""TF Serving's REST predict body <-> numpy, as plain functions a worker process can run.

A large JSON body takes seconds to parse and CPython's parser holds the GIL the
whole time, so ``rest`` runs these in a separate process for large bodies:
the event loop (and ``/healthz``) never waits on them. Declared shapes are
checked against the limits before any array is allocated.
"""

from __future__ import annotations

import base64
import binascii
import json

import numpy as np

from inpaint.core.contract import BYTES_SIGNATURE_NAME

from .errors import InvalidInput, RequestTooLarge
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


def to_array(name: str, value) -> np.ndarray:
    """A JSON tensor read as the signature's dtype, uint8, whatever the spelling of its numbers.

    JSON has one number type and writers spell it as they like (JavaScript writes ``0.0`` as ``0``), so no
    value's spelling picks the dtype: every value must be an integer 0..255 (``255.0`` is 255), and any
    other number is refused naming the input, never truncated to a wrong image.
    """
    try:
        array = np.asarray(value, dtype=np.float32)  # exact for 0..255; 4 bytes a value
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(f"input '{name}' is not a rectangular array of numbers") from None
    wrong = ~np.isfinite(array) | (array < 0) | (array > 255) | (array != np.rint(array))
    if wrong.any():
        example = array[wrong].flat[0]
        raise InvalidInput(f"input '{name}' is uint8 (the signature's dtype) and its JSON values must be integers "
                           f"0..255; it holds {example:g}. Send pixels as integers (a float image in [0, 1] "
                           "times 255, rounded), or the image file (signature 'serving_bytes')")
    return array.astype(np.uint8)


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
        raise InvalidInput("'instances' must be a non-empty list of objects, one per image, naming its inputs")
    names = set(instances[0])
    if any(set(i) != names for i in instances):
        raise InvalidInput("every instance must have the same named inputs")
    return {name: [i[name] for i in instances] for name in names}


def to_files(name: str, value, max_count: int) -> list[bytes]:
    """A JSON string tensor as bytes: a ``{"b64": ...}`` object, or a list of them (TF Serving's convention)."""
    values = value if isinstance(value, list) else [value]
    if len(values) > max_count:
        raise InvalidInput(f"input '{name}' holds {len(values)} files, over the limit of {max_count} per request "
                           "(--max-images-per-request)")
    files = []
    for index, item in enumerate(values):
        if not (isinstance(item, dict) and set(item) == {"b64"} and isinstance(item["b64"], str)):
            raise InvalidInput(f"input '{name}'[{index}] must be {{\"b64\": \"<base64 of the file>\"}}")
        try:
            files.append(base64.b64decode(item["b64"], validate=True))
        except (binascii.Error, ValueError):
            raise InvalidInput(f"input '{name}'[{index}] is not valid base64") from None
    return files


def check_json_values(body: bytes, max_values: int) -> None:
    """Refuse, before parsing, a body holding more than ``max_values`` JSON values.

    Parsing costs memory per value (a Python object and a list slot each), not per byte: counting the
    separators bounds it. Files in base64 hold none, so ``serving_bytes`` bodies pass whatever their size.
    """
    values = body.count(b",") + body.count(b"[") + body.count(b"{")
    if values > max_values:
        raise RequestTooLarge(f"request body holds about {values} JSON values, over the {max_values} that REST "
                              f"takes as arrays; send the image files (signature '{BYTES_SIGNATURE_NAME}') or "
                              "use gRPC")


def decode_predict(body: bytes, limits: Limits, max_json_values: int) -> tuple[dict, bool, str]:
    """``(inputs, row_form, signature_name)`` from a ``:predict`` body; InvalidInput naming the problem.

    Inputs are arrays for ``serving_default`` (shapes checked before any is built) and lists of file bytes
    for ``serving_bytes``.
    """
    check_json_values(body, max_json_values)
    parsed = parse_body(body)
    if ("instances" in parsed) == ("inputs" in parsed):
        raise InvalidInput("the request body needs exactly one of 'instances' or 'inputs'")
    signature = parsed.get("signature_name", "")
    if not isinstance(signature, str):
        raise InvalidInput("'signature_name' must be a string")
    row_form = "instances" in parsed
    if row_form:
        columns = _row_form_columns(parsed["instances"])
    else:
        columns = parsed["inputs"]
        if not isinstance(columns, dict):
            raise InvalidInput("'inputs' must be an object mapping input names to tensors")
    if signature == BYTES_SIGNATURE_NAME:
        return {name: to_files(name, value, limits.max_images) for name, value in columns.items()}, row_form, signature
    check_shapes({name: declared_shape(value) for name, value in columns.items()}, limits)
    return {name: to_array(name, value) for name, value in columns.items()}, row_form, signature


def encode_predictions(output: np.ndarray | list[bytes], row_form: bool) -> bytes:
    """TF Serving's answer: ``predictions`` for the row form, ``outputs`` for the columnar form.

    TF Serving drops the output's name when the signature has a single output, and writes binary strings
    (outputs whose name ends in ``_bytes``) as ``{"b64": ...}``.
    """
    key = "predictions" if row_form else "outputs"
    if isinstance(output, list):
        values = [{"b64": base64.b64encode(data).decode("ascii")} for data in output]
    else:
        values = output.tolist()
    return json.dumps({key: values}, separators=(",", ":")).encode()
