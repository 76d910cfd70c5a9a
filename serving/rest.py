"""TF Serving's REST API on aiohttp, plus Prometheus metrics and liveness/readiness.

* ``GET /v1/models/NAME[/versions/V | /labels/LABEL]`` model status
* ``GET /v1/models/NAME[/versions/V | /labels/LABEL]/metadata`` signature
* ``POST /v1/models/NAME[/versions/V | /labels/LABEL]:predict`` with ``instances`` (row) or ``inputs``
  (columnar)
* ``GET /monitoring/prometheus/metrics`` and ``/metrics``
* ``GET /healthz`` (alive) and ``/readyz`` (a version AVAILABLE and not draining)
* ``GET /``: the web page (``web``)
* ``/v2/...``: the Open Inference Protocol (KServe v2), added by ``v2_rest`` on the same app

A thin adapter: JSON to numpy (``rest_codec``), the data plane, numpy to JSON; bodies, the codec process and
errors are ``rest_transport``'s. The request's path: the ``inpaint.serving`` package's docstring.
"""

from __future__ import annotations

import json
import re

from aiohttp import web
from google.protobuf import json_format

from inpaint.core.contract import BYTES_SIGNATURE, BYTES_SIGNATURE_NAME, IMAGE, OUTPUT, OUTPUT_BYTES, SIGNATURE_NAME
from inpaint.core.tensors import signature_def

from .admission import JSON_OUT_BYTES_PER_VALUE
from .dataplane import DataPlane, is_bytes_signature
from .models import ModelVersion
from .rest_codec import decode_predict, encode_predictions
from .rest_transport import RestTransport, error_response, parse_cost
from .shutdown import Replies
from .web import add_web_routes, cors_middleware

BYTES_REPLY_FACTOR = 4.0   # PNG answers as base64 JSON: the files, their base64 and the JSON's copies

_MODEL_PATH = re.compile(r"^(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
                         r"(?P<rest>/metadata|:predict)?$")


def version_status_json(model_version: ModelVersion) -> dict:
    """One entry of TF Serving's REST model status."""
    return {"version": str(model_version.version), "state": model_version.state.name,
            "status": {"error_code": "UNKNOWN" if model_version.error else "OK",
                       "error_message": model_version.error}}


class RestApi(RestTransport):
    """The REST app: TF Serving's routes, the metrics, health and the web page, answered through the transport
    it is (which ``v2_rest`` answers through too)."""

    def __init__(self, dataplane: DataPlane, max_request_bytes: int, max_json_values: int,
                 model_name: str = "inpaint", cors_origin: str | None = None, timeout: float | None = None,
                 body_seconds: float | None = None):
        super().__init__(dataplane, max_request_bytes, max_json_values, timeout, body_seconds)
        self.replies = Replies()  # outermost: it writes the replies, after the other middlewares set headers
        middlewares = [self.replies.middleware] + ([cors_middleware(cors_origin)] if cors_origin else [])
        self.app = web.Application(client_max_size=max_request_bytes, middlewares=middlewares)
        add_web_routes(self.app, model_name)
        self.app.add_routes([
            web.get("/v1/models/{path:.+}", self.get_model),
            web.post("/v1/models/{path:.+}", self.post_model),
            web.get("/monitoring/prometheus/metrics", self.metrics),
            web.get("/metrics", self.metrics),
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
        ])

    def _parse(self, request: web.Request) -> tuple[str, int | str | None, str]:
        """``(model name, version, method)``: the version a number (``/versions/V``), a label
        (``/labels/LABEL``) or None."""
        match = _MODEL_PATH.match(request.match_info["path"])
        if match is None:
            raise web.HTTPNotFound(text=json.dumps({"error": f"malformed model URL {request.path[:128]}"}),
                                   content_type="application/json")
        version = int(match["version"]) if match["version"] else match["label"]
        return match["name"], version, match["rest"] or ""

    async def get_model(self, request: web.Request) -> web.Response:
        name, version, rest = self._parse(request)
        if rest == ":predict":
            return error_response(405, "use POST for :predict")
        if rest == "/metadata":
            async def metadata(outcome):
                served = self.dataplane.signature(outcome, name, version)
                definitions = {SIGNATURE_NAME: json_format.MessageToDict(signature_def(served.signature)),
                               BYTES_SIGNATURE_NAME: json_format.MessageToDict(signature_def(BYTES_SIGNATURE))}
                return {"model_spec": {"name": name, "signature_name": "", "version": str(served.version)},
                        "metadata": {"signature_def": {"signature_def": definitions}}}

            return await self.respond("metadata", name, metadata)

        async def status(outcome):
            return {"model_version_status": [version_status_json(v)
                                             for v in self.dataplane.version_statuses(name, version)]}

        return await self.respond("status", name, status)

    async def post_model(self, request: web.Request) -> web.Response:
        name, version, rest = self._parse(request)
        if rest != ":predict":
            return error_response(404, f"unknown REST method {request.path}; use .../models/{name}:predict")

        async def predict(outcome):
            body = await self.read_body(request, outcome)
            deadline = self.deadline()
            await self.dataplane.admit(outcome, parse_cost(body, self.max_json_values), "parsing the body", deadline)
            inputs, row_form, signature = await self.in_codec(len(body), decode_predict, body,
                                                               self.dataplane.limits, self.max_json_values)
            if is_bytes_signature(signature):
                prediction = await self.dataplane.predict_bytes(outcome, name, version, inputs, [], deadline,
                                                                BYTES_REPLY_FACTOR)
                files = prediction.outputs[OUTPUT_BYTES]
                return await self.in_codec(sum(map(len, files)), encode_predictions, files, row_form)
            if IMAGE in inputs:
                await self.dataplane.admit_arrays(outcome, inputs[IMAGE].shape, 1, JSON_OUT_BYTES_PER_VALUE,
                                                  deadline)
            prediction = await self.dataplane.predict(outcome, name, version, signature, inputs, [], deadline)
            output = prediction.outputs[OUTPUT]
            return await self.in_codec(output.nbytes * 4, encode_predictions, output, row_form)

        return await self.respond("predict", name, predict)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.dataplane.metrics.render(), content_type="text/plain", charset="utf-8")

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(self, request: web.Request) -> web.Response:
        if self.dataplane.draining:
            return web.json_response({"status": "draining"}, status=503)
        if not self.dataplane.models.is_available():
            return web.json_response({"status": "no model version available"}, status=503)
        return web.json_response({"status": "ready"})
