"""Make ``docs/images/web-page.png``: the web page in headless Chromium, after painting out a photo's cables.

Starts ``inpaint-serve`` with the shipped model on free ports, opens ``/`` at 1280x800, opens a photo,
paints strokes over what to remove, presses Inpaint and captures the page with the Compare slider
half-way (before on the left, after on the right). Needs what ``tests/test_web.py`` needs (playwright
and Debian's Chromium). Run from anywhere:

    .venv/bin/python docs/screenshot.py [--out PATH]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "pretrained" / "inpaint"
OUT = ROOT / "docs" / "images" / "web-page.png"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 800}

# (photo, strokes as (brush size in screen pixels, start, end), the points in fractions of the shown photo).
# The first photo that exists is used: data/photos is assembled by `make photos`; the sample ships with
# scikit-image. A stroke starts on the photo (a press elsewhere paints nothing) and may end past its edge.
SCENES = [
    (ROOT / "data" / "photos" / "lomiri-wallpapers-16.04" / "Bridge_by_Sander_Klootwijk.jpg",
     [(34, (0.001, 0.434), (0.514, -0.01)),    # the white cable, upper left
      (34, (0.999, 0.288), (0.242, 1.01)),     # the white cable, lower right
      (44, (0.747, 0.999), (0.473, -0.01))]),  # the dark cables
    (None, [(30, (0.695, 0.16), (0.645, 0.6)), (150, (0.612, 0.67), (0.612, 0.74))]),  # coffee.png: the spoon
]


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server() -> tuple[subprocess.Popen, str]:
    """``inpaint-serve`` with the shipped model on free ports; the process and its REST URL once ready."""
    rest_port = free_port()
    command = [sys.executable, "-m", "inpaint.serving.cli", "--model-base-path", str(MODEL), "--host", "127.0.0.1",
               "--port", str(free_port()), "--rest-port", str(rest_port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{rest_port}"
    wait_ready(process, url)
    return process, url


def wait_ready(process: subprocess.Popen, url: str, timeout: float = 120) -> None:
    """Poll ``/readyz`` until it answers 200; fail with the server's output if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"inpaint-serve exited with {process.returncode}:\n{process.stdout.read()}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"inpaint-serve at {url} was not ready after {timeout} s")


def pick_scene() -> tuple[Path, list]:
    """The first scene whose photo exists (``None`` stands for the scikit-image sample)."""
    for photo, strokes in SCENES:
        if photo is None:
            from inpaint.trainer.data import samples_dir

            photo = samples_dir() / "coffee.png"
        if photo.exists():
            return photo, strokes
    raise SystemExit("no photo found: run `make photos`, or install scikit-image")


def paint(page, strokes: list) -> None:
    """Drag the mouse along each stroke over the shown photo, with its brush size."""
    box = page.locator("#mask").bounding_box()
    for brush, start, end in strokes:
        page.eval_on_selector("#brush-size", "(slider, size) => { slider.value = size; "
                              "slider.dispatchEvent(new Event('input')); }", brush)
        page.mouse.move(box["x"] + start[0] * box["width"], box["y"] + start[1] * box["height"])
        page.mouse.down()
        page.mouse.move(box["x"] + end[0] * box["width"], box["y"] + end[1] * box["height"], steps=30)
        page.mouse.up()


def capture(url: str, photo: Path, strokes: list, out: Path) -> str:
    """Drive the page from opening ``photo`` to the compared result; write the screenshot, return the status."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(url + "/")
        page.set_input_files("#file", str(photo))
        page.wait_for_function("!document.querySelector('#inpaint').disabled")
        paint(page, strokes)
        page.click("#inpaint")
        page.wait_for_function("""() => document.querySelector("#status.error")
                                   || document.querySelector('#download:not([aria-disabled="true"])')""",
                               timeout=600_000)
        status = page.inner_text("#status")
        if page.query_selector("#status.error"):
            raise SystemExit(status)
        page.eval_on_selector("#split", "slider => { slider.value = 50; slider.dispatchEvent(new Event('input')); }")
        page.mouse.move(0, 0)  # no brush outline in the picture
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
        browser.close()
    return status


def main() -> None:
    """Start the server, capture the page, stop the server."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"where to write the PNG (default {OUT})")
    args = parser.parse_args()
    photo, strokes = pick_scene()
    process, url = start_server()
    try:
        status = capture(url, photo, strokes, args.out)
    finally:
        process.terminate()
        process.wait(timeout=60)
    print(f"{args.out}: {photo.name}; {status}")


if __name__ == "__main__":
    main()
