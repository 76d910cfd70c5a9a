"""A new user's first hour (issue 22), each row of the issue's table as a test that failed before.

1. ``make demo`` on a fresh clone's files, on a busy machine: the recipe waits for SERVING (``inpaint-client
   health --wait``) instead of giving up after a second.
2. A server stopped at any moment of its start leaves no process behind (fork server, its worker, the
   resource tracker), and its codec worker dies with it even on SIGKILL.
3. Masks that cannot silently go wrong: JPEG noise and anti-aliased edges are not holes; a photo given as
   the mask, IMAGE and MASK swapped, and an all-hole mask are refused with a message that says so.
4. Errors name the fix: the architecture mismatch (checked from the run record before TensorFlow loads),
   no server, one path to ``predict``; ``loadtest --images`` reads subfolders as the trainer does.
5. Quiet output: no setuptools warnings building the package; TensorFlow's start-up banners hidden.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import random_image, write_png
from helpers import free_port, wait_for, wait_serving

from inpaint.client.cli import main as client_main
from inpaint.core.images import MaskError, as_mask, decode_mask, holes_of
from inpaint.core.masks import generate_mask

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)
PRETRAINED = ROOT / "models" / "pretrained" / "inpaint" / "1"


def sample_photo() -> np.ndarray:
    """A real photo: scikit-image's astronaut, held out of training, as ``make demo`` uses it."""
    from inpaint.trainer.data import SAMPLE_TEST, samples_dir

    photo = cv2.imread(str(samples_dir() / SAMPLE_TEST[0]), cv2.IMREAD_COLOR)
    return cv2.cvtColor(cv2.resize(photo, (128, 128), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)


def stroke_mask(size: int = 128, seed: int = 3) -> np.ndarray:
    """``inpaint-client mask``'s kind of mask: 255 = hole."""
    return generate_mask("strokes", size, size, np.random.default_rng(seed)) * np.uint8(255)


def one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("Error: ") and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[-1], result.output
    return lines[-1]


def client_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "inpaint.client.cli", *args]


# -- 1. make demo, and health --wait -----------------------------------------------------------------------


def test_health_wait_polls_until_a_server_started_later_is_serving(onnx_repo):
    port = free_port()
    waiting = subprocess.Popen(client_command("--target", f"127.0.0.1:{port}", "health", "--wait", "120"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    server = None
    try:
        assert "waiting up to 120 s for 127.0.0.1:" in waiting.stderr.readline()  # the stated bound
        assert waiting.poll() is None, "nobody is serving yet: it must keep waiting"
        server = subprocess.Popen([sys.executable, "-m", "inpaint.serving.cli", "--model-base-path", str(onnx_repo),
                                   "--host", "127.0.0.1", "--port", str(port), "--rest-port", "-1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert waiting.wait(timeout=120) == 0, waiting.stderr.read()
        assert waiting.stdout.read().strip() == "SERVING"
    finally:
        for process in (waiting, server):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


def test_health_wait_is_bounded_and_says_how_to_start_a_server():
    started = time.monotonic()
    result = CliRunner().invoke(client_main, ["--target", f"127.0.0.1:{free_port()}", "--timeout", "0.5", "health",
                                              "--wait", "1.5"])
    assert time.monotonic() - started < 15
    one_line_error(result, "was not SERVING within --wait 1.5 s", "inpaint-serve --model-base-path")


def fresh_clone(destination: Path) -> Path:
    """The repository's tracked files as they are in this working tree: what a fresh clone holds."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, destination / name)
    return destination


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.skipif(not (VENV / "bin" / "inpaint-serve").exists(), reason="not run from the project's venv")
def test_make_demo_works_on_a_fresh_clone(tmp_path):
    """The real recipe: server, health --wait, photo, mask, predict, three load levels, stop; its report."""
    clone = fresh_clone(tmp_path / "clone")
    port, rest_port = free_port(), free_port()
    # The venv this suite runs in, marked up to date (-o) so make does not reinstall it from the clone.
    command = ["make", "-C", str(clone), f"VENV={VENV}", "-o", str(VENV / ".installed"), f"PORT={port}",
               f"REST_PORT={rest_port}", "demo"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS", "INPAINT_"))}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    demo = clone / "reports" / "demo"
    log = (demo / "server.log").read_text() if (demo / "server.log").exists() else ""
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:], log[-3000:])
    assert f"demo files in {Path('reports') / 'demo'}" in result.stdout
    assert "waiting up to 120 s" in result.stderr
    photo = cv2.imread(str(demo / "photo.png"))
    holes = as_mask(demo / "photo_mask.png") > 0
    inpainted = cv2.imread(str(demo / "photo.inpainted.png"))
    assert photo.shape == inpainted.shape == (256, 256, 3) and 0.05 < holes.mean() < 0.6
    np.testing.assert_array_equal(inpainted[~holes], photo[~holes])
    levels = json.loads((demo / "load.json").read_text())["levels"]
    assert [(level["mode"], level["level"]) for level in levels] == [("concurrency", n) for n in (1, 8, 32)]
    assert all(level["ok"] > 0 and not level["errors"] for level in levels), levels
    assert {"load.csv", "server.log"} <= {path.name for path in demo.iterdir()}
    assert "stopped" in log


# -- 2. no orphans -------------------------------------------------------------------------------------------


def session_processes(session: int) -> list[str]:
    """``pid state command`` of every live (not zombie) process in ``session``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            found.append(f"{entry.name} {fields[0]} {command[:120]}")
    return found


def start_server_process(base: Path, log: Path) -> subprocess.Popen:
    """``inpaint-serve`` in a session of its own (its id is the server's pid), REST on: a codec process."""
    command = [sys.executable, "-m", "inpaint.serving.cli", "--model-base-path", str(base), "--host", "127.0.0.1",
               "--port", "0", "--rest-port", "0", "--drain-seconds", "2"]
    with log.open("w") as output:  # a file, not a pipe: an orphan holding a pipe would hang the test
        return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)


def kill_session(session: int) -> None:
    for line in session_processes(session):
        try:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass


# The moments: seconds after the start (0.1 s is during Python's imports), and "child": as soon as the first
# child process exists (the fork server or the resource tracker is starting: before the fix, the window in
# which SIGTERM left three orphans behind).
@pytest.mark.parametrize("signum, moment", [
    (signal.SIGTERM, 0.1), (signal.SIGINT, 0.5), (signal.SIGTERM, "child"), (signal.SIGINT, "child"),
    (signal.SIGTERM, 3.0),
], ids=["SIGTERM-0.1s", "SIGINT-0.5s", "SIGTERM-first-child", "SIGINT-first-child", "SIGTERM-3s"])
def test_a_server_stopped_while_it_starts_leaves_no_process_behind(onnx_repo, tmp_path, signum, moment):
    server = start_server_process(onnx_repo, tmp_path / "server.log")
    try:
        if moment == "child":
            wait_for(lambda: len(session_processes(server.pid)) > 1, 120, "the server's first child process")
        else:
            time.sleep(moment)  # the moment of the stop is what is tested
        had = session_processes(server.pid)
        server.send_signal(signum)
        server.wait(timeout=60)
        wait_for(lambda: not session_processes(server.pid), 15,
                 f"no process left after {signal.Signals(signum).name} (had {had})")
    finally:
        if server.poll() is None:
            server.kill()
        kill_session(server.pid)


def test_the_codec_worker_dies_with_a_server_killed_outright(onnx_repo, tmp_path):
    server = start_server_process(onnx_repo, tmp_path / "server.log")
    try:
        wait_for(lambda: "serving model" in (tmp_path / "server.log").read_text(), 120, "the server to start")
        assert len(session_processes(server.pid)) >= 3, session_processes(server.pid)  # fork server, worker, tracker
        server.kill()
        server.wait(timeout=30)
        wait_for(lambda: not session_processes(server.pid), 15, "the children to exit after SIGKILL")
    finally:
        if server.poll() is None:
            server.kill()
        kill_session(server.pid)


# -- 3. masks that cannot silently go wrong --------------------------------------------------------------------


def test_a_mask_saved_as_jpeg_gives_exactly_the_painted_holes():
    painted = stroke_mask(256)
    for quality in (50, 75, 95):
        ok, jpeg = cv2.imencode(".jpg", painted, [cv2.IMWRITE_JPEG_QUALITY, quality])
        noisy = cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED)
        assert np.count_nonzero(noisy) > np.count_nonzero(painted), "JPEG noise: nonzero pixels outside the strokes"
        np.testing.assert_array_equal(decode_mask(jpeg.tobytes(), 10**6), painted > 0, err_msg=f"quality {quality}")


def test_an_anti_aliased_brush_marks_the_pixels_it_mostly_covers():
    brushed = np.zeros((120, 160), np.uint8)
    cv2.line(brushed, (10, 20), (150, 100), 255, 15, cv2.LINE_AA)
    cv2.circle(brushed, (40, 90), 12, 255, -1, cv2.LINE_AA)
    soft = cv2.GaussianBlur(brushed, (0, 0), 2)  # a soft brush: wide grey edges
    for mask in (brushed, soft):
        holes = holes_of(mask)
        np.testing.assert_array_equal(holes, mask >= 128)
        assert holes.sum() < np.count_nonzero(mask), "the faint edge is not a hole"
    transparent = np.dstack([sample_photo()[:120, :128]] + [255 - brushed[:, :128]])  # erased with that brush
    np.testing.assert_array_equal(holes_of(transparent), brushed[:, :128] > 127)
    flat = np.zeros((120, 160, 3), np.uint8)
    flat[:, :80, 0] = 200  # half the image painted in one flat colour: a mask, not a photo
    assert holes_of(flat).mean() == 0.5


def test_predict_refuses_a_photo_given_as_its_own_mask_before_sending(tmp_path):
    photo = write_png(tmp_path / "photo.png", sample_photo())
    nobody = f"127.0.0.1:{free_port()}"  # nothing is sent: the mask is checked first
    for send in ("auto", "pixels"):
        result = CliRunner().invoke(client_main, ["--target", nobody, "predict", str(photo), str(photo),
                                                  "--send", send])
        one_line_error(result, f"mask {photo} looks like a photo, not a mask", "did you swap IMAGE and MASK?")
    assert not (tmp_path / "photo.inpainted.png").exists()


def test_predict_refuses_image_and_mask_swapped(tmp_path):
    photo = tmp_path / "photo.jpg"
    cv2.imwrite(str(photo), cv2.cvtColor(sample_photo(), cv2.COLOR_RGB2BGR))
    mask = write_png(tmp_path / "photo_mask.png", stroke_mask())
    result = CliRunner().invoke(client_main, ["--target", f"127.0.0.1:{free_port()}", "predict", str(mask), str(photo)])
    one_line_error(result, f"mask {photo} looks like a photo", "did you swap IMAGE and MASK?")


def test_an_all_hole_mask_is_refused_by_the_client_and_the_server(onnx_repo, start_server, tmp_path):
    from grpc_helpers import Stubs
    from test_bytes import b64, bytes_body, encode, post, predict_url

    from inpaint.core.tensors import predict_bytes_request

    photo = write_png(tmp_path / "photo.png", sample_photo())
    white = write_png(tmp_path / "white.png", np.full((128, 128), 255, np.uint8))
    nobody = f"127.0.0.1:{free_port()}"
    result = CliRunner().invoke(client_main, ["--target", nobody, "predict", str(photo), str(white)])
    one_line_error(result, f"mask {white} marks 100% of the image as holes", "did you swap IMAGE and MASK, or invert")
    with pytest.raises(MaskError, match="marks 100% of the image as holes"):
        as_mask(np.ones((8, 8), bool))

    server = start_server(onnx_repo)
    status, answer = post(predict_url(server), bytes_body([photo.read_bytes()], [white.read_bytes()]))
    assert status == 400 and "input 'mask_bytes'[0] marks 100% of the image as holes" in answer["error"], answer
    with pytest.raises(grpc.RpcError) as refused:
        Stubs(server.grpc_target).prediction.Predict(
            predict_bytes_request([photo.read_bytes()], [photo.read_bytes()], "inpaint"), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'mask_bytes'[0] looks like a photo, not a mask" in refused.value.details()
    good = encode(stroke_mask(), ".png")
    status, answer = post(predict_url(server), {"signature_name": "serving_bytes", "instances": [
        {"image_bytes": b64(photo.read_bytes()), "mask_bytes": b64(good)}]})
    assert status == 200, answer


# -- 4. errors that name the fix -------------------------------------------------------------------------------


def test_an_architecture_mismatch_names_init_weights_none_before_tensorflow_loads(tmp_path):
    script = f"""
import sys
from click.testing import CliRunner
from inpaint.trainer.train import main
result = CliRunner().invoke(main, ["--data", "samples", "--depth", "3", "--epochs", "1",
                                   "--init-weights", {str(PRETRAINED)!r}, "--model-base-path", {str(tmp_path)!r}])
print(result.exit_code, "tensorflow" in sys.modules, result.output.strip().splitlines()[-1])
"""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    exit_code, loaded, line = done.stdout.strip().split(" ", 2)
    assert (exit_code, loaded) == ("1", "False"), done.stdout + done.stderr
    assert line == (f"Error: {PRETRAINED} does not match this architecture: its run record has --depth 4, this run "
                    "--depth 3; give --depth 4 to fine-tune it, or --init-weights none to train from scratch")
    assert time.monotonic() - started < 60
    from inpaint.trainer.train import main as train_main

    missing = CliRunner().invoke(train_main, ["--init-weights", str(tmp_path / "nope"), "--model-base-path",
                                              str(tmp_path)])
    one_line_error(missing, "is not a published version", "--init-weights none")


def test_no_server_says_how_to_start_one():
    port = free_port()
    result = CliRunner().invoke(client_main, ["--target", f"127.0.0.1:{port}", "--timeout", "2", "status"])
    one_line_error(result, f"no server reachable at 127.0.0.1:{port}", f"`make serve PORT={port}`",
                   f"`inpaint-serve --model-base-path models/pretrained/inpaint --port {port}`")


def test_predict_with_one_path_points_to_inpaint_client_mask(tmp_path):
    photo = write_png(tmp_path / "photo.png", random_image(16, 16))
    result = CliRunner().invoke(client_main, ["predict", str(photo)])
    one_line_error(result, "got 1 path", f"`inpaint-client mask {photo}`", str(tmp_path / "photo_mask.png"))


def test_loadtest_images_reads_subfolders_as_the_trainer_does(tmp_path):
    from inpaint.client.loadtest import LoadConfig, build_requests
    from inpaint.trainer.data import image_files

    for name in ("a/one.png", "a/b/two.jpg", "c/three.png"):  # as data/photos: one folder per source
        write_png(tmp_path / "photos" / name, random_image(80, 96, seed=len(name)))
    (tmp_path / "photos" / "notes.txt").write_text("not a photo")
    assert len(image_files(tmp_path / "photos")) == 3
    requests = build_requests(LoadConfig(images=tmp_path / "photos", image_size=64, variants=3))
    assert len(requests) == 3


# -- 5. quiet output -----------------------------------------------------------------------------------------


def test_building_the_package_prints_no_setuptools_warnings(tmp_path):
    clone = fresh_clone(tmp_path / "clone")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                             "-w", str(tmp_path / "wheel"), str(clone)], capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "would be ignored" not in output and "Warning" not in output, output
    import zipfile

    [wheel] = (tmp_path / "wheel").glob("inpaint-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"inpaint/serving/static/{name}" for name in ("index.html", "app.js", "style.css")} <= names


def test_tensorflow_starts_without_its_banners_unless_verbose():
    script = """
from inpaint.trainer.startup import import_tensorflow
tf = import_tensorflow()
print(int(tf.reduce_sum(tf.ones([3])).numpy()))
"""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "3", done.stderr
    assert done.stderr == "", done.stderr
