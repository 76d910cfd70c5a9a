"""The web page on the REST port: ``GET /`` and its files under ``/static/``, plus optional CORS.

The page (``static/``) is plain HTML, CSS and JavaScript shipped in the package:
no build step, no CDN, nothing fetched from the network. It calls the REST API
this server already speaks (``serving_bytes``), so any other front-end can do
the same; ``cors_origin`` lets one on another origin call it.

Every reply on the REST port carries ``SECURITY_HEADERS`` (``add_security_headers``): no MIME sniffing, no
framing, no referrer sent elsewhere, and a content security policy. The page's policy lets it load only its
own script and style sheet (no inline script or style in the markup), show the photos it holds as ``blob:``
URLs, and read the PNG the server returns as a ``data:`` URL; every other reply may load nothing. The
``Server`` header names the server without any version.
"""

from __future__ import annotations

import html
from importlib import resources

from aiohttp import web, web_response

STATIC = resources.files("inpaint.serving") / "static"
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
MODEL_PLACEHOLDER = "{{MODEL_NAME}}"  # index.html's one template field

SERVER_NAME = "inpaint-serve"  # the Server header: no versions of Python, aiohttp or ours
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
}
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
               "connect-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def add_web_routes(app: web.Application, model_name: str) -> None:
    """``GET /`` (the page, told which model to call) and ``GET /static/{file}``; the security headers on
    every reply of ``app`` (``add_security_headers``)."""
    page = (STATIC / "index.html").read_text(encoding="utf-8").replace(MODEL_PLACEHOLDER, html.escape(model_name))

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-cache", "Content-Security-Policy": PAGE_POLICY})

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        suffix = name[name.rfind("."):] if "." in name else ""
        resource = STATIC / name
        if "/" in name or name.startswith(".") or suffix not in _TYPES or not resource.is_file():
            raise web.HTTPNotFound(text=f"no static file {name!r}")
        return web.Response(body=resource.read_bytes(), content_type=_TYPES[suffix],
                            headers={"Cache-Control": "no-cache"})

    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)
    add_security_headers(app)


def add_security_headers(app: web.Application) -> None:
    """``SECURITY_HEADERS`` on every reply of ``app`` (a handler's own policy kept), ``Server`` without versions.

    aiohttp answers requests its parser refuses (a malformed request line, say) before any application sees
    them, with its module default for ``Server``; that default is replaced too, once per process.
    """
    web_response.SERVER_SOFTWARE = SERVER_NAME
    if _secure not in app.on_response_prepare:
        app.on_response_prepare.append(_secure)


async def _secure(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_NAME
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def cors_middleware(origin: str):
    """Allow ``origin`` (or ``*``) to call the API from a browser: preflights answered, replies marked."""
    headers = {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
               "Access-Control-Allow-Headers": "Content-Type", "Access-Control-Max-Age": "600"}
    if origin != "*":
        headers["Vary"] = "Origin"

    @web.middleware
    async def cors(request: web.Request, handler):
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return web.Response(status=204, headers=headers)
        try:
            response = await handler(request)
        except web.HTTPException as error:
            error.headers.update(headers)
            raise
        response.headers.update(headers)
        return response

    return cors
