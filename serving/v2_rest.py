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

The body is read and size-capped as TF Serving's REST API reads it (``RestApi.read_body``); a large JSON
header is parsed, and a large JSON answer encoded, in its codec process. Errors are ``{"error": ...}`` with
the statuses of ``errors``.
"""

from __future__ import annotations

import re

from aiohttp import web

from inpaint.core.contract import IMAGE, OUTPUT

from .admission import JSON_OUT_BYTES_PER_VALUE
from .errors import InvalidInput, ModelNotFound, status_of
from .rest import error_response, parse_cost
from .v2_api import (PROTOCOL, array_from_bytes, decode_infer, encode_infer, model_metadata, model_ready,
                     requested_version, server_metadata)

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


class V2Rest:
    def __init__(self, rest):
        self.rest = rest  # the RestApi: its data plane, body reading, codec process and timeout
        self.dataplane = rest.dataplane

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

        return await self.rest.respond("metadata", name, metadata, PROTOCOL)

    async def infer(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]

        async def infer(outcome):
            version = requested_version(request.match_info.get("version", ""))
            rest = self.rest
            body = await rest.read_body(request, outcome)
            deadline = rest.deadline()
            header_length = _header_length(request, len(body))
            header = body[:header_length] if header_length < len(body) else body
            await self.dataplane.admit(outcome, parse_cost(header, rest.max_json_values), "parsing the body",
                                       deadline)
            parsed = await rest.in_codec(len(header), decode_infer, header, len(body) - header_length,
                                          self.dataplane.limits, rest.max_json_values)
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
            answer, json_length = await rest.in_codec(json_bytes, encode_infer, name, prediction.version,
                                                       parsed.id, output, parsed.outputs)
            if json_length is None:
                return web.Response(body=answer, content_type="application/json")
            return web.Response(body=answer, content_type="application/octet-stream",
                                headers={HEADER_LENGTH: str(json_length)})

        return await self.rest.respond("predict", name, infer, PROTOCOL)


def add_v2_routes(app: web.Application, rest) -> None:
    """The Open Inference Protocol's REST routes, served with ``rest`` (a ``RestApi``)'s body handling."""
    api = V2Rest(rest)
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
