"""The container images, built and run here (issue 26).

`make base-images` (a no-op where Docker Hub answers or the stand-ins are here) and `make image` build the
serving and model images with podman, from the Dockerfiles as they are; then ``inpaint-serve`` is started
from inside the serving image's file system, as a container runtime would start it: the image's own
ENTRYPOINT, CMD, environment and USER read from its config, the model image's repository copied out by the
Kubernetes initContainer's own command (run inside the model image) and mounted at /models. ``podman run``
is refused in this sandbox (setrlimit RLIMIT_NPROC), so ``podman image mount`` + ``chroot`` stand in for
it, in a private mount namespace (``unshare --mount``): /proc, /dev, /sys and /models vanish with the
process, nothing to clean up on the host but the image mounts. The trainer image is not built here: it
installs TensorFlow (minutes of download and install); docs/images.md has its size and build time.

Slow tier (tests/conftest.py). Needs root and podman; a cold build takes minutes on a loaded machine.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from helpers import free_port, wait_serving

ROOT = Path(__file__).resolve().parents[1]
SERVING, MODELS = "inpaint-serving:cpu", "inpaint-models:latest"
# The Kubernetes initContainer's command (k8s/components/model-from-image), run inside the model image.
COPY_MODELS = ["sh", "-c", "cp -r /models/. /target/"]
# What the serving image must not hold: TensorFlow and what comes with it.
TRAINING_ONLY = ("tensorflow", "keras", "tf_keras", "tf2onnx", "tensorboard")


def unavailable_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return "podman image mount and chroot are Linux's"
    if os.geteuid() != 0:
        return "needs root (podman image mount, mount, chroot): run it as root"
    for tool, package in (("podman", "podman"), ("unshare", "util-linux"), ("chroot", "coreutils"),
                          ("make", "make")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed: apt-get install {package} (docs/images.md)"
    return None


pytestmark = [pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason())),
              pytest.mark.timeout(3600)]


def run(*command: str, timeout: float = 1800, env: dict | None = None) -> str:
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, f"{shlex.join(command)} exited {result.returncode}:\n{result.stderr[-4000:]}"
    return result.stdout


def podman(*args: str) -> str:
    return run("podman", *args, timeout=120).strip()


def config_of(image: str) -> dict:
    return json.loads(podman("image", "inspect", image))[0]["Config"]


def size_mb(image: str) -> float:
    return int(podman("image", "inspect", "--format", "{{.Size}}", image)) / 1e6


@pytest.fixture(scope="module")
def built(request) -> dict[str, float]:
    """The stand-ins (where no registry answers), then the serving and model images: image -> build seconds."""
    run("make", "base-images", env={"ENGINE": "podman"})
    seconds = {}
    for name, image in (("serving", SERVING), ("models", MODELS)):
        start = time.monotonic()
        run("make", "image", f"IMAGES={name}", env={"ENGINE": "podman"})
        seconds[image] = time.monotonic() - start
    with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        # A layer cached from an earlier build makes a build shorter than a cold one.
        print("".join(f"\ntest_images: {image} {size_mb(image):.1f} MB, make image {took:.0f} s"
                      for image, took in seconds.items()))
    return seconds


@contextmanager
def image_mount(image: str):
    """The image's file system, read-only, mounted by podman (unmounted afterwards)."""
    path = podman("image", "mount", image)
    try:
        yield Path(path)
    finally:
        podman("image", "unmount", image)


def user_of(root: Path, user: str) -> tuple[int, int, str]:
    """uid, gid and home of an image's USER, resolved in its own /etc/passwd as a runtime does (gid 0 and
    home / for a uid it does not list)."""
    name, _, group = user.partition(":")
    for line in (root / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if len(fields) >= 6 and name in (fields[0], fields[2]):
            return int(fields[2]), int(group or fields[3]), fields[5]
    assert name.isdigit(), f"USER {user} is not in the image's /etc/passwd"
    return int(name), int(group or 0), "/"


def in_image(root: Path, config: dict, argv: list[str], binds: dict[str, Path], scratch: Path,
             **popen) -> subprocess.Popen:
    """Start ``argv`` inside the image mounted at ``root`` as its USER, with its Env and WorkingDir: a
    writable overlay over the read-only image, ``binds`` (path inside -> folder here), /proc, /dev and /sys,
    all in a private mount namespace that ends with the process."""
    uid, gid, home = user_of(root, config.get("User") or "0")
    merged, upper, work = scratch / "root", scratch / "upper", scratch / "work"
    for folder in (merged, upper, work):
        folder.mkdir(parents=True)
    mounts = [f"mount -t overlay overlay -o lowerdir={root},upperdir={upper},workdir={work} {merged}"]
    for inside, outside in binds.items():
        target = shlex.quote(str(merged / inside.lstrip("/")))
        mounts += [f"mkdir -p {target}", f"mount --bind {shlex.quote(str(outside))} {target}"]
    mounts += [f"mount -t proc proc {merged}/proc", f"mount --rbind /dev {merged}/dev",
               f"mount --rbind /sys {merged}/sys"]
    workdir = config.get("WorkingDir") or "/"
    script = " && ".join(mounts + [
        f'exec chroot --userspec={uid}:{gid} --groups={gid} {merged} /bin/sh -c \'cd "$0" && exec "$@"\' '
        f'{shlex.quote(workdir)} "$@"'])
    env = dict(item.split("=", 1) for item in config.get("Env") or [])
    env.setdefault("HOME", home)
    return subprocess.Popen(["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script, "sh",
                             *argv], env=env, **popen)


def installed_packages(root: Path) -> list[str]:
    folders = [*root.glob("usr/local/lib/python3*/*-packages"), *root.glob("usr/lib/python3*/*-packages")]
    return sorted(entry.name.lower() for folder in folders for entry in folder.iterdir())


@pytest.fixture(scope="module")
def model_copy(built, tmp_path_factory) -> Path:
    """/models of the model image, copied out by the initContainer's command run inside that image."""
    target = tmp_path_factory.mktemp("target")
    config = config_of(MODELS)
    with image_mount(MODELS) as root:
        uid, gid, _ = user_of(root, config.get("User") or "0")
        os.chown(target, uid, gid)   # an emptyDir the pod's user can write
        copy = in_image(root, config, COPY_MODELS, {"/target": target}, tmp_path_factory.mktemp("models-root"),
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output, _ = copy.communicate(timeout=120)
    assert copy.returncode == 0, f"the initContainer's copy failed inside {MODELS}: {output}"
    assert uid != 0, f"{MODELS} runs as root: its Dockerfile names USER 10001"
    versions = sorted(path.name for path in (target / "inpaint").iterdir())
    assert versions and (target / "inpaint" / versions[-1] / "model.onnx").is_file(), versions
    return target


def test_the_serving_image_holds_no_tensorflow(built):
    with image_mount(SERVING) as root:
        packages = installed_packages(root)
    assert any(name.startswith("onnxruntime") for name in packages), packages
    assert any(name.startswith("openvino") for name in packages), packages  # what --runtime auto runs on CPUs
    assert any(name.startswith("inpaint") for name in packages), packages
    heavy = [name for name in packages if name.startswith(TRAINING_ONLY)]
    assert not heavy, f"{SERVING} holds training packages: {heavy}"


def test_inpaint_serve_runs_from_the_serving_image(built, model_copy, tmp_path):
    from inpaint.client import InpaintClient
    from inpaint.core.images import read_image
    from inpaint.trainer.data import SAMPLE_TEST, samples_dir

    config = config_of(SERVING)
    assert config.get("User") not in (None, "", "0", "root"), f"{SERVING} runs as root"
    assert config["Entrypoint"] == ["inpaint-serve"], config["Entrypoint"]
    port, rest_port = free_port(), free_port()
    # The image's ENTRYPOINT and CMD as they are; the flags after them (the last of a flag wins) keep the
    # server on 127.0.0.1 and off ports another server here may hold.
    argv = [*config["Entrypoint"], *(config.get("Cmd") or []),
            "--host", "127.0.0.1", "--port", str(port), "--rest-port", str(rest_port)]
    log = tmp_path / "server.log"
    with image_mount(SERVING) as root, log.open("w") as out:
        uid = user_of(root, config["User"])[0]
        server = in_image(root, config, argv, {"/models": model_copy}, tmp_path / "serving",
                          stdout=out, stderr=subprocess.STDOUT)
        try:
            try:
                wait_serving(f"127.0.0.1:{port}", server, timeout=180)
            except AssertionError as error:
                raise AssertionError(f"{error}; exit code {server.poll()}; its log:\n{log.read_text()[-4000:]}")
            status = Path(f"/proc/{server.pid}/status").read_text()
            assert f"Uid:\t{uid}\t" in status, f"inpaint-serve is not running as uid {uid}:\n{status}"

            photo = read_image(samples_dir() / SAMPLE_TEST[0])[:256, :256]
            mask = np.zeros(photo.shape[:2], np.uint8)
            mask[96:160, 80:176] = 255
            with InpaintClient(f"127.0.0.1:{port}") as client:
                assert client.health() == "SERVING"
                filled = client.inpaint(photo, mask)
            assert filled.shape == photo.shape
            known = mask == 0
            assert np.array_equal(filled[known], photo[known]), "known pixels changed"
            assert filled[~known].std() > 1, "the hole came back flat"

            with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/", timeout=30) as page:
                assert page.status == 200
                assert "<title>inpaint</title>" in page.read().decode()
            # the default runtime on the CPU image: OpenVINO on the version's int8 graph
            assert "OpenVINO runs on the CPU" in log.read_text() and "runs model.int8.onnx" in log.read_text()
        finally:
            server.terminate()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    assert server.returncode in (0, -15), f"inpaint-serve exited {server.returncode}:\n{log.read_text()[-4000:]}"
