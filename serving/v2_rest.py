"""The Open Inference Protocol (KServe v2) over REST, on the REST port next to TF Serving's API.

* ``GET /v2``: server metadata
* ``GET /v2/health/live`` and ``/v2/health/ready``: 200 when true, 503 when not, empty bodies
* ``GET /v2/models/NAME[/versions/V]``: model metadata
* ``GET /v2/models/NAME[/versions/V]/ready``: 200 when AVAILABLE, 503 when not (yet), 404 for an unknown one
* ``POST /v2/models/NAME[/versions/V]/infer``: JSON tensors, and the binary tensor data extension: with an
  ``Inference-Header-Content-Length: N`` header the body's first N bytes are the JSON and each input with a
  ``binary_data_size`` parameter follows in input order. Outputs come back binary when the request asks
  (output parameter ``binary_data``, or request parameter ``binary_data_output``, which tritonclient sets
  when it names no outputs), with the same header and ``application/octet-stream``; else as JSON ``data``.

Bodies, the codec process and errors are ``rest_transport``'s, as for TF Serving's REST API. The request's
path: the ``inpaint.serving`` package's docstring.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
from aiohttp import web

from inpaint.core.contract import IMAGE, OUTPUT

from .admission import JSON_OUT_BYTES_PER_VALUE
from .errors import InvalidInput, ModelNotFound, status_of
from .inputs import Limits
from .rest_codec import check_json_values, parse_body
from .rest_transport import RestTransport, error_response, parse_cost
from .v2_protocol import (OUTPUT_DATATYPE, PROTOCOL, InputSpec, array_from_bytes, check_inputs, check_outputs,
                          model_metadata, model_ready, requested_version, server_metadata)

HEADER_LENGTH = "Inference-Header-Content-Length"


def _header_length(request: web.Request, body_bytes: int) -> int:
    """How many of the body's bytes are its JSON header: all of them without the binary extension's header."""
    value = request.headers.get(HEADER_LENGTH)
    if value is None:
        return body_bytes
    if not re.fullmatch(r"\s*[0-9]{1,18}\s*", value):
        raise InvalidInput(f"{HEADER_LENGTH} must be a byte count, got {value[:32]!r}")
    length = int(value)
    if length > body_bytes:
        raise InvalidInput(f"{HEADER_LENGTH} is {length} but the body holds only {body_bytes} bytes")
    return length


# -- bodies: plain functions, which the codec process runs for large ones ---------------------------

def array_from_json(spec: InputSpec, data) -> np.ndarray:
    """A JSON ``data`` array, flattened or nested: integers 0..255 for UINT8, numbers for FP32."""
    if not isinstance(data, list):
        raise InvalidInput(f"input '{spec.name}' has 'data' that is not a JSON array")
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(f"input '{spec.name}' has 'data' that is not a rectangular array of numbers") from None
    integers = array.dtype.kind in "iu"
    if array.size and not (integers or (spec.datatype == "FP32" and array.dtype.kind == "f")):
        kind = "integers 0..255" if spec.datatype == "UINT8" else "numbers"
        raise InvalidInput(f"input '{spec.name}' is {spec.datatype} and its 'data' must hold {kind}")
    if array.size != spec.count:
        raise InvalidInput(f"input '{spec.name}' has {array.size} values in 'data'; {spec.describe()} needs "
                           f"{spec.count}")
    if spec.datatype == "UINT8" and array.size and (array.min() < 0 or array.max() > 255):
        raise InvalidInput(f"input '{spec.name}' has values outside 0..255")
    return array.astype(spec.dtype, copy=False).reshape(spec.shape)


@dataclass
class InferBody:
    """A REST infer request's JSON, checked: arrays of the inputs sent as JSON, where the binary ones lie."""

    id: str | None
    arrays: dict[str, np.ndarray]
    binary: list[tuple[InputSpec, int]]  # (input, offset in the binary part), in input order
    outputs: list[tuple[str, bool]]      # (name, as binary data)


def _parameters(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} 'parameters' must be a JSON object")
    return value


def _flag(parameters: dict, key: str, where: str, default: bool) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"{where} parameter '{key}' must be true or false")
    return value


def _input_spec(index: int, tensor) -> InputSpec:
    if not isinstance(tensor, dict):
        raise InvalidInput(f"inputs[{index}] must be a JSON object with name, shape, datatype and data")
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if not isinstance(name, str):
        raise InvalidInput(f"inputs[{index}] needs a string 'name'")
    if not isinstance(datatype, str):
        raise InvalidInput(f"input '{name}' needs a string 'datatype'")
    if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
        raise InvalidInput(f"input '{name}' needs a 'shape' that is a list of integers")
    return InputSpec(name, datatype, tuple(shape))


def decode_infer(header: bytes, binary_bytes: int, limits: Limits, max_json_values: int) -> InferBody:
    """A REST infer request's JSON ``header``, followed by ``binary_bytes`` of binary tensor data.

    The inputs' declared shapes pass the limits, and each binary input's ``binary_data_size`` is what its
    shape needs, before any array is built; the binary sizes must add up to ``binary_bytes`` exactly.
    """
    check_json_values(header, max_json_values)
    parsed = parse_body(header)
    request_id = parsed.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    parameters = _parameters(parsed.get("parameters"), "the request's")
    tensors = parsed.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise InvalidInput("the request body needs 'inputs', a non-empty list of tensors")
    specs = [_input_spec(index, tensor) for index, tensor in enumerate(tensors)]
    check_inputs(specs, limits)
    arrays, binary, offset = {}, [], 0
    for spec, tensor in zip(specs, tensors):
        size = _parameters(tensor.get("parameters"), f"input '{spec.name}'").get("binary_data_size")
        if size is None:
            if "data" not in tensor:
                raise InvalidInput(f"input '{spec.name}' has neither 'data' nor a 'binary_data_size' parameter")
            arrays[spec.name] = None  # built once every size has been checked
            continue
        if "data" in tensor:
            raise InvalidInput(f"input '{spec.name}' has both 'data' and binary data; send one")
        if not isinstance(size, int) or isinstance(size, bool) or size != spec.nbytes:
            raise InvalidInput(f"input '{spec.name}' has binary_data_size {size!r}; {spec.describe()} needs "
                               f"{spec.nbytes}")
        binary.append((spec, offset))
        offset += size
    if offset != binary_bytes:
        raise InvalidInput(f"the body holds {binary_bytes} bytes of binary tensor data after its JSON header but "
                           f"the inputs' binary_data_size add up to {offset}")
    for spec, tensor in zip(specs, tensors):
        if spec.name in arrays:
            arrays[spec.name] = array_from_json(spec, tensor["data"])
    binary_default = _flag(parameters, "binary_data_output", "the request's", False)
    outputs = parsed.get("outputs")
    if outputs is None or outputs == []:  # none named: all of them
        return InferBody(request_id, arrays, binary, [(OUTPUT, binary_default)])
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                for o in outputs):
        raise InvalidInput("'outputs' must be a list of objects, each with a string 'name'")
    check_outputs([o["name"] for o in outputs])
    wanted = [(o["name"], _flag(_parameters(o.get("parameters"), f"output '{o['name']}'"), "binary_data",
                                f"output '{o['name']}'", binary_default)) for o in outputs]
    return InferBody(request_id, arrays, binary, list(dict(wanted).items()))


def encode_infer(model_name: str, version: int, request_id: str | None, output: np.ndarray,
                 outputs: list[tuple[str, bool]]) -> tuple[bytes, int | None]:
    """The REST infer answer: ``(body, JSON header length)``, the length None when no output is binary."""
    answer: dict = {"model_name": model_name, "model_version": str(version)}
    if request_id is not None:
        answer["id"] = request_id
    tensors, binary = [], []
    for name, as_binary in outputs:
        tensor = {"name": name, "datatype": OUTPUT_DATATYPE, "shape": list(output.shape)}
        if as_binary:
            tensor["parameters"] = {"binary_data_size": output.nbytes}
            binary.append(np.ascontiguousarray(output).data)
        else:
            tensor["data"] = output.ravel().tolist()
        tensors.append(tensor)
    answer["outputs"] = tensors
    header = json.dumps(answer, separators=(",", ":")).encode()
    if not binary:
        return header, None
    return b"".join([header, *binary]), len(header)


class V2Rest:
    def __init__(self, transport: RestTransport):
        self.transport, self.dataplane = transport, transport.dataplane

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(server_metadata())

    async def live(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def ready(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.dataplane.is_ready() else 503)

    async def model_ready(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            ready = model_ready(self.dataplane, name, requested_version(request.match_info.get("version", "")))
        except (InvalidInput, ModelNotFound) as error:
            _, http_status, message = status_of(error, "REST v2 model ready", name)
            return error_response(http_status, message)
        return web.Response(status=200 if ready else 503)

    async def model_metadata(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]

        async def metadata(outcome):
            version = requested_version(request.match_info.get("version", ""))
            return web.json_response(model_metadata(self.dataplane, outcome, name, version))

        return await self.transport.respond("metadata", name, metadata, PROTOCOL)

    async def infer(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]

        async def infer(outcome):
            version = requested_version(request.match_info.get("version", ""))
            transport = self.transport
            body = await transport.read_body(request, outcome)
            deadline = transport.deadline()
            header_length = _header_length(request, len(body))
            header = body[:header_length] if header_length < len(body) else body
            await self.dataplane.admit(outcome, parse_cost(header, transport.max_json_values), "parsing the body",
                                       deadline)
            parsed = await transport.in_codec(len(header), decode_infer, header, len(body) - header_length,
                                              self.dataplane.limits, transport.max_json_values)
            arrays = dict(parsed.arrays)
            binary = memoryview(body)[header_length:]
            image = next(spec for spec, _ in parsed.binary if spec.name == IMAGE) if IMAGE not in arrays else None
            shape = arrays[IMAGE].shape if image is None else image.shape
            itemsize = max([spec.dtype.itemsize for spec, _ in parsed.binary] + [1])
            reply = sum(JSON_OUT_BYTES_PER_VALUE if not as_binary else 2 for _, as_binary in parsed.outputs)
            await self.dataplane.admit_arrays(outcome, shape, itemsize, reply, deadline)
            for spec, offset in parsed.binary:  # sizes checked by decode_infer
                arrays[spec.name] = array_from_bytes(spec, binary[offset : offset + spec.nbytes], "binary data")
            prediction = await self.dataplane.predict(outcome, name, version, "", arrays,
                                                      [output for output, _ in parsed.outputs], deadline)
            output = prediction.outputs[OUTPUT]
            json_bytes = sum(output.nbytes * 4 for _, as_binary in parsed.outputs if not as_binary)
            answer, json_length = await transport.in_codec(json_bytes, encode_infer, name, prediction.version,
                                                           parsed.id, output, parsed.outputs)
            if json_length is None:
                return web.Response(body=answer, content_type="application/json")
            return web.Response(body=answer, content_type="application/octet-stream",
                                headers={HEADER_LENGTH: str(json_length)})

        return await self.transport.respond("predict", name, infer, PROTOCOL)


def add_v2_routes(app: web.Application, transport: RestTransport) -> None:
    """The Open Inference Protocol's REST routes on ``app``, answered through ``transport``."""
    api = V2Rest(transport)
    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    app.add_routes([
        web.get("/v2", api.server_metadata),
        web.get("/v2/health/live", api.live),
        web.get("/v2/health/ready", api.ready),
        web.get(model, api.model_metadata),
        web.get(versioned, api.model_metadata),
        web.get(model + "/ready", api.model_ready),
        web.get(versioned + "/ready", api.model_ready),
        web.post(model + "/infer", api.infer),
        web.post(versioned + "/infer", api.infer),
    ])
