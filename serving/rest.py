"""TF Serving's REST API on aiohttp, plus Prometheus metrics and liveness/readiness.

* ``GET /v1/models/NAME[/versions/V]`` model status
* ``GET /v1/models/NAME[/versions/V]/metadata`` signature
* ``POST /v1/models/NAME[/versions/V]:predict`` with ``instances`` (row) or ``inputs`` (columnar)
* ``GET /monitoring/prometheus/metrics`` and ``/metrics``
* ``GET /healthz`` (alive) and ``/readyz`` (a version AVAILABLE and not draining)

A thin adapter: JSON to numpy, the data plane, numpy to JSON.
"""

from __future__ import annotations

import json
import re

import numpy as np
from aiohttp import web
from google.protobuf import json_format

from inpaint.core.contract import OUTPUT, SIGNATURE_NAME
from inpaint.core.tensors import signature_def

from .dataplane import DataPlane
from .errors import InvalidInput, status_of
from .models import ModelVersion


_MODEL_PATH = re.compile(r"^(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?P<rest>/metadata|:predict)?$")


def version_status_json(model_version: ModelVersion) -> dict:
    """One entry of TF Serving's REST model status."""
    return {"version": str(model_version.version), "state": model_version.state.name,
            "status": {"error_code": "UNKNOWN" if model_version.error else "OK",
                       "error_message": model_version.error}}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _arrays_from_json(body: dict) -> tuple[dict[str, np.ndarray], bool]:
    """Inputs from ``instances`` (row form) or ``inputs`` (columnar form); True when row form."""
    if ("instances" in body) == ("inputs" in body):
        raise InvalidInput("the request body needs exactly one of 'instances' or 'inputs'")
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances or not all(isinstance(i, dict) for i in instances):
            raise InvalidInput("'instances' must be a non-empty list of objects with 'image' and 'mask'")
        names = set(instances[0])
        if any(set(i) != names for i in instances):
            raise InvalidInput("every instance must have the same named inputs")
        return {name: _to_array(name, [i[name] for i in instances]) for name in names}, True
    inputs = body["inputs"]
    if not isinstance(inputs, dict):
        raise InvalidInput("'inputs' must be an object mapping input names to tensors")
    return {name: _to_array(name, value) for name, value in inputs.items()}, False


def _to_array(name: str, value) -> np.ndarray:
    try:
        array = np.asarray(value)
    except ValueError:
        raise InvalidInput(f"input '{name}' is not a rectangular array") from None
    if array.dtype.kind in "iu":
        if array.size and (array.min() < 0 or array.max() > 255):
            raise InvalidInput(f"input '{name}' has integers outside 0..255")
        return array.astype(np.uint8)
    if array.dtype.kind == "f":
        return array.astype(np.float32)
    raise InvalidInput(f"input '{name}' must hold numbers (uint8 0..255 or float in [0, 1]), got {array.dtype}")


class RestApi:
    def __init__(self, dataplane: DataPlane, max_request_bytes: int):
        self.dataplane = dataplane
        self.app = web.Application(client_max_size=max_request_bytes)
        self.app.add_routes([
            web.get("/v1/models/{path:.+}", self.get_model),
            web.post("/v1/models/{path:.+}", self.post_model),
            web.get("/monitoring/prometheus/metrics", self.metrics),
            web.get("/metrics", self.metrics),
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
        ])

    def _parse(self, request: web.Request) -> tuple[str, int | None, str]:
        match = _MODEL_PATH.match(request.match_info["path"])
        if match is None:
            raise web.HTTPNotFound(text=json.dumps({"error": f"malformed model URL {request.path}"}),
                                   content_type="application/json")
        version = int(match["version"]) if match["version"] else None
        return match["name"], version, match["rest"] or ""

    async def _respond(self, api: str, name: str, handler) -> web.Response:
        async with self.dataplane.request(api, name) as outcome:
            try:
                return web.json_response(await handler(outcome))
            except Exception as error:  # noqa: BLE001 - the same table as gRPC
                code, http_status, message = status_of(error, f"REST {api}", name)
                outcome.status = code.name
                return _error(http_status, message)

    async def get_model(self, request: web.Request) -> web.Response:
        name, version, rest = self._parse(request)
        if rest == ":predict":
            return _error(405, "use POST for :predict")
        if rest == "/metadata":
            async def metadata(outcome):
                served = self.dataplane.signature(outcome, name, version)
                definition = json_format.MessageToDict(signature_def(served.signature))
                return {"model_spec": {"name": name, "signature_name": "", "version": str(served.version)},
                        "metadata": {"signature_def": {"signature_def": {SIGNATURE_NAME: definition}}}}

            return await self._respond("metadata", name, metadata)

        async def status(outcome):
            return {"model_version_status": [version_status_json(v)
                                             for v in self.dataplane.version_statuses(name, version)]}

        return await self._respond("status", name, status)

    async def post_model(self, request: web.Request) -> web.Response:
        name, version, rest = self._parse(request)
        if rest != ":predict":
            return _error(404, f"unknown REST method {request.path}; use .../models/{name}:predict")

        async def predict(outcome):
            try:
                body = await request.json()
            except (ValueError, UnicodeDecodeError):
                raise InvalidInput("request body is not valid JSON") from None
            if not isinstance(body, dict):
                raise InvalidInput("request body must be a JSON object")
            arrays, row_form = _arrays_from_json(body)
            output_filter = []
            prediction = await self.dataplane.predict(outcome, name, version, body.get("signature_name", ""),
                                                      arrays, output_filter, None)
            result = prediction.outputs[OUTPUT]
            # TF Serving drops the output's name when the signature has a single output.
            return {"predictions": result.tolist()} if row_form else {"outputs": result.tolist()}

        return await self._respond("predict", name, predict)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.dataplane.metrics.render(), content_type="text/plain", charset="utf-8")

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(self, request: web.Request) -> web.Response:
        if self.dataplane.draining:
            return web.json_response({"status": "draining"}, status=503)
        if not self.dataplane.manager.is_available():
            return web.json_response({"status": "no model version available"}, status=503)
        return web.json_response({"status": "ready"})
