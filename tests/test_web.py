"""The web page at ``/`` on the REST port, driven in a real headless Chromium against the real server.

The model fills holes with 128 (``onnx_models``), so the downloaded result shows exactly which pixels the
page's mask covered: they must lie along the stroke painted with the mouse, and nothing else may change.
Needs Debian's Chromium (``apt-get install chromium``) and Python's ``playwright`` (``pip install
playwright``; not ``playwright install``: the browser is Debian's).
"""

from __future__ import annotations

import base64
import json
import re
import struct
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import random_image, write_png

try:
    from playwright.sync_api import sync_playwright
except ImportError:
    pytest.skip("the web page tests need playwright: pip install playwright (or make install)",
                allow_module_level=True)

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"the web page tests need Chromium at {CHROMIUM}: apt-get install chromium",
                allow_module_level=True)

# No network here: without the background-networking flags Chromium keeps trying to reach Google.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
BRUSH = 24     # the brush size set on the page, in screen pixels
SLACK = 3      # photo pixels of rounding (pointer positions, anti-aliased edges) around a stroke
FILL = 128     # what the test model writes into holes
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module; each test gets its own context."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh page; script errors on it, and anything its content security policy blocks, fail the test."""
    context = browser.new_context(viewport={"width": 1000, "height": 700}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text)
            if "Content Security Policy" in message.text else None)
    yield page
    context.close()
    assert errors == [], f"script errors on the page: {errors}"


def open_page(page, server) -> None:
    """Load the page and wait until it has shown the model's status."""
    page.goto(server.rest_url + "/")
    page.wait_for_function("document.querySelector('#status').textContent.includes('AVAILABLE')", timeout=WAIT_MS)


def choose_photo(page, path: Path, width: int, height: int) -> None:
    """Open ``path`` with the file picker and wait until the page shows it."""
    page.set_input_files("#file", str(path))
    wait_status(page, f"{width}×{height}")


def wait_status(page, text: str) -> str:
    """Wait until ``#status`` contains ``text``; return the whole status."""
    page.wait_for_function("text => document.querySelector('#status').textContent.includes(text)", arg=text,
                           timeout=WAIT_MS)
    return page.inner_text("#status")


def set_brush(page, size: int) -> None:
    """Move the brush slider to ``size`` screen pixels."""
    page.eval_on_selector("#brush-size", "(slider, size) => { slider.value = size; "
                          "slider.dispatchEvent(new Event('input')); }", size)


def drag(page, start: tuple[float, float], end: tuple[float, float]) -> tuple[dict, tuple, tuple]:
    """Paint from ``start`` to ``end`` (fractions of the shown photo); the mask's box and the screen points."""
    box = page.locator("#mask").bounding_box()
    a = (box["x"] + start[0] * box["width"], box["y"] + start[1] * box["height"])
    b = (box["x"] + end[0] * box["width"], box["y"] + end[1] * box["height"])
    page.mouse.move(*a)
    page.mouse.down()
    page.mouse.move(*b, steps=12)
    page.mouse.up()
    return box, a, b


def stroke_regions(box: dict, a: tuple, b: tuple, shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """``(band, core)`` in photo pixels: within the brush radius of the stroke plus ``SLACK``, and minus it."""
    height, width = shape[:2]
    scale = width / box["width"]
    radius = BRUSH / 2 * scale

    def to_photo(point):  # fixed point, 4 fractional bits, for cv2.line's shift
        return (round((point[0] - box["x"]) * scale * 16), round((point[1] - box["y"]) * scale * 16))

    def band(half_width: float) -> np.ndarray:
        canvas = np.zeros((height, width), np.uint8)
        cv2.line(canvas, to_photo(a), to_photo(b), 1, max(1, round(2 * half_width)), cv2.LINE_8, shift=4)
        return canvas.astype(bool)

    return band(radius + SLACK), band(radius - SLACK)


def download_result(page) -> tuple[str, np.ndarray]:
    """Wait for a result, download it, return its file name and RGB pixels; fail on an error shown instead."""
    page.wait_for_function("""() => document.querySelector("#status.error")
                               || document.querySelector('#download:not([aria-disabled="true"])')""",
                           timeout=WAIT_MS)
    assert page.query_selector("#status.error") is None, page.inner_text("#status")
    with page.expect_download() as info:
        page.click("#download")
    download = info.value
    pixels = cv2.imdecode(np.fromfile(download.path(), np.uint8), cv2.IMREAD_COLOR)
    return download.suggested_filename, cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)


def check_only_stroke_filled(before: np.ndarray, after: np.ndarray, band: np.ndarray, core: np.ndarray) -> None:
    """Holes (128) all along the stroke's core, and not one pixel changed outside its band."""
    assert after.shape == before.shape
    changed = np.any(after != before, axis=2)
    assert changed[core].any()
    assert (after[core] == FILL).all()
    assert not changed[~band].any(), f"{int(changed[~band].sum())} pixels changed outside the stroke"


def test_paint_inpaint_download_and_inpaint_the_result_again(start_server, onnx_repo, page, tmp_path):
    """Undo, eraser and clear-then-undo shape the mask; the result keeps every pixel outside the stroke."""
    server = start_server(onnx_repo)
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    photo = random_image(480, 640, seed=1)
    open_page(page, server)
    choose_photo(page, write_png(tmp_path / "photo.png", photo), 640, 480)
    set_brush(page, BRUSH)

    drag(page, (0.1, 0.9), (0.4, 0.9))
    page.keyboard.press("Control+z")  # undone: it must not be in the mask
    drag(page, (0.1, 0.1), (0.4, 0.1))
    page.click("#eraser")
    set_brush(page, 3 * BRUSH)
    drag(page, (0.1, 0.1), (0.4, 0.1))  # erased with a wider brush: not in the mask either
    page.click("#eraser")
    set_brush(page, BRUSH)
    box, a, b = drag(page, (0.2, 0.3), (0.8, 0.6))
    page.click("#clear")
    assert page.is_disabled("#clear")
    page.click("#undo")  # brings the strokes back
    page.click("#inpaint")
    assert page.is_disabled("#inpaint")
    name, first = download_result(page)
    assert "Done" in page.inner_text("#status")
    assert name == "photo-inpainted.png"
    band, core = stroke_regions(box, a, b, photo.shape)
    check_only_stroke_filled(photo, first, band, core)

    box, a, b = drag(page, (0.3, 0.8), (0.7, 0.2))  # painted on the result, sent with it
    page.click("#inpaint")
    _, second = download_result(page)
    band, core = stroke_regions(box, a, b, photo.shape)
    check_only_stroke_filled(first, second, band, core)
    assert all(url.startswith((server.rest_url + "/", "blob:", "data:")) for url in requests), requests


def file_event(page, kind: str, name: str, data: bytes, mime: str) -> None:
    """Drop (``kind="drop"``) or paste (``"paste"``) a file holding ``data`` on the page, as a user would."""
    page.evaluate("""([kind, name, b64, type]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, { type }));
        const init = { bubbles: true, cancelable: true };
        const event = kind === "drop" ? new DragEvent("drop", { ...init, dataTransfer: transfer })
                                      : new ClipboardEvent("paste", { ...init, clipboardData: transfer });
        document.querySelector("#workspace").dispatchEvent(event);
    }""", [kind, name, base64.b64encode(data).decode(), mime])


def png_bytes(image: np.ndarray) -> bytes:
    """An RGB image as the bytes of a PNG file."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


def test_drop_and_paste_open_photos_and_server_errors_are_shown(start_server, onnx_repo, page):
    """Dropped and pasted files open (others are refused by name); a refused request shows the server's words."""
    server = start_server(onnx_repo, max_pixels=100_000)
    open_page(page, server)
    file_event(page, "drop", "animation.gif", b"GIF89a", "image/gif")
    assert "is not a PNG, JPEG, WebP or BMP" in wait_status(page, "animation.gif")
    file_event(page, "drop", "small.png", png_bytes(random_image(150, 200, seed=2)), "image/png")
    wait_status(page, "small.png: 200×150")
    file_event(page, "paste", "image.png", png_bytes(random_image(480, 640, seed=3)), "image/png")
    wait_status(page, "image.png: 640×480")

    drag(page, (0.2, 0.5), (0.8, 0.5))
    page.click("#inpaint")
    page.wait_for_selector("#status.error", timeout=WAIT_MS)
    message = page.inner_text("#status")
    assert "640x480 = 307200 pixels, over the limit of 100000" in message, message
    assert page.is_enabled("#inpaint")
    assert page.get_attribute("#download", "aria-disabled") == "true"


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """``jpeg`` with an EXIF segment (big-endian TIFF, one IFD entry) holding ``orientation``."""
    entry = struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)  # SHORT, count 1, value left-justified
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1) + entry + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def test_a_rotated_jpeg_is_sent_as_shown(start_server, onnx_repo, page, tmp_path):
    """A JPEG with EXIF orientation 6 is inpainted upright, as the browser shows it, not as stored."""
    server = start_server(onnx_repo)
    stored = random_image(300, 400, seed=4)  # as the file's pixels are stored: 400 wide
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(stored, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 98])
    assert ok
    path = tmp_path / "portrait.jpg"
    path.write_bytes(with_exif_orientation(jpeg.tobytes(), 6))  # 6: turn 90° clockwise to show
    shown = np.rot90(cv2.cvtColor(cv2.imdecode(jpeg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB), k=-1)
    open_page(page, server)
    choose_photo(page, path, 300, 400)
    set_brush(page, BRUSH)
    box, a, b = drag(page, (0.2, 0.2), (0.8, 0.7))
    page.click("#inpaint")
    name, result = download_result(page)
    assert name == "portrait-inpainted.png"
    assert result.shape == shown.shape
    band, core = stroke_regions(box, a, b, shown.shape)
    assert (result[core] == FILL).all()
    # Outside the stroke: the shown pixels, up to the two JPEG decoders' rounding.
    difference = np.abs(result.astype(int) - shown.astype(int))[~band]
    assert difference.mean() < 1.5 and np.percentile(difference, 99) <= 4, difference.max()


def sent_mask(body: str) -> np.ndarray:
    """The mask file of a ``serving_bytes`` request body, decoded as stored (grey levels)."""
    instance = json.loads(body)["instances"][0]
    data = base64.b64decode(instance["mask_bytes"]["b64"])
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)


def test_the_page_decides_brush_edges_by_the_mask_rule_and_refuses_strokes_over_the_photo(start_server, onnx_repo,
                                                                                           page, tmp_path):
    """The mask sent holds only black and white (the anti-aliased edges decided at half scale, as the server
    would); strokes over (nearly) the whole photo are refused on the page, with nothing sent."""
    server = start_server(onnx_repo)
    bodies: list[str] = []
    page.on("request", lambda request: bodies.append(request.post_data) if request.method == "POST" else None)
    photo = random_image(120, 160, seed=5)
    open_page(page, server)
    choose_photo(page, write_png(tmp_path / "small.png", photo), 160, 120)
    set_brush(page, BRUSH)
    box, a, b = drag(page, (0.1, 0.3), (0.9, 0.7))
    page.click("#inpaint")
    _, result = download_result(page)
    mask = sent_mask(bodies[-1])
    assert set(np.unique(mask)) == {0, 255}, np.unique(mask)
    np.testing.assert_array_equal(result == FILL, np.repeat((mask == 255)[..., None], 3, axis=2) | (photo == FILL))

    set_brush(page, 160)
    for row in np.linspace(0.02, 0.98, 7):
        drag(page, (0.01, row), (0.99, row))
    page.click("#inpaint")
    page.wait_for_selector("#status.error", timeout=WAIT_MS)
    message = page.inner_text("#status")
    assert re.search(r"the strokes cover (9\d|100) % of the photo, over 90 %", message), message
    assert len(bodies) == 1, "nothing was sent the second time"
    assert page.is_enabled("#inpaint")


def fetch(url: str) -> tuple[str, str]:
    """``(content type, text)`` of a GET."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.headers.get_content_type(), response.read().decode()


def test_the_page_and_its_files_are_served_with_nothing_from_elsewhere(start_server, onnx_repo):
    """``/`` names the served model; the page, script and style load nothing from another host."""
    server = start_server(onnx_repo, model_name="retouch", wait=False)
    kind, page = fetch(server.rest_url + "/")
    assert kind == "text/html"
    assert '<meta name="inpaint-model" content="retouch">' in page and "{{" not in page
    files = {"index.html": page}
    for name, expected in [("app.js", "text/javascript"), ("style.css", "text/css")]:
        kind, files[name] = fetch(f"{server.rest_url}/static/{name}")
        assert kind == expected
    assert "serving_bytes" in files["app.js"]
    for name, text in files.items():
        assert not re.findall(r"\b(?:https?|wss?)://", text), f"{name} names an absolute URL"
    assert re.findall(r"""\b(?:src|href)=["']?([^"'\s>]*)""", page) == ["data:,", "static/style.css", "static/app.js"]
    assert "@import" not in files["style.css"] and "url(" not in files["style.css"]
