"""Faults of the tools around the model: the client CLI's status and -o, a killed export, `make -n demo`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import random_image, write_png
from helpers import free_port as another_free_port
from helpers import health_status, wait_for
from inpaint.core.contract import VersionState
from test_client import one_line_error, run_cli

REPO = Path(__file__).resolve().parents[1]


def _pair(folder: Path) -> tuple[str, str]:
    image = write_png(folder / "photo.png", random_image(12, 16))
    mask = write_png(folder / "photo_mask.png", (np.arange(12 * 16).reshape(12, 16) % 5 == 0).astype(np.uint8) * 255)
    return str(image), str(mask)


# -- inpaint-client status ----------------------------------------------------------------------------

def test_status_with_no_versions_is_a_one_line_error(tmp_path, start_server):
    (tmp_path / "empty").mkdir()
    target = start_server(tmp_path / "empty", wait=False).grpc_target
    one_line_error(run_cli("--target", target, "status"), f"model 'inpaint' has no versions at {target}")
    result = run_cli("--target", target, "status", "--json")
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout) == [], "the (empty) list stays machine-readable on stdout"
    assert f"model 'inpaint' has no versions at {target}" in result.stderr


def test_status_with_no_available_version_lists_them_then_fails(tmp_path, start_server, onnx_repo):
    broken = tmp_path / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "1" / "model.onnx").write_bytes(b"not an onnx model")
    server = start_server(broken, wait=False)
    wait_for(lambda: server.call(lambda: [v.state for v in server.server.manager.versions.values()])
             == [VersionState.END], 30, "version 1 to fail to load")
    target = server.grpc_target

    result = run_cli("--target", target, "status")
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("version 1: END  "), result.output  # the version and its load error first
    assert lines[-1] == f"Error: model 'inpaint' has no AVAILABLE version at {target}", result.output
    result = run_cli("--target", target, "--version", "1", "status")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == \
        f"Error: version 1 of model 'inpaint' is not AVAILABLE at {target}", result.output
    result = run_cli("--target", target, "status", "--json")
    assert result.exit_code == 1 and json.loads(result.stdout)[0]["state"] == "END", result.output

    healthy = start_server(onnx_repo).grpc_target  # one AVAILABLE version: exit 0, as before
    result = run_cli("--target", healthy, "status")
    assert result.exit_code == 0 and result.output.strip() == "version 1: AVAILABLE", result.output


# -- inpaint-client predict -o ------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["option", "envvar"])
def test_predict_unknown_output_format_is_refused_before_any_call(tmp_path, free_port, how):
    image, mask = _pair(tmp_path)
    out = tmp_path / "out.xyz"
    nobody = f"127.0.0.1:{free_port}"  # had anything been sent, the error would be "no server reachable"
    args, env = (["-o", str(out)], None) if how == "option" else ([], {"INPAINT_CLIENT_PREDICT_OUTPUT": str(out)})
    result = run_cli("--target", nobody, "--timeout", "5", "predict", image, mask, *args, env=env)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.strip().splitlines()]
    assert len(errors) == 1 and errors[0].startswith("Error:") and "'.xyz' is not an image format" in errors[0] and ".png" in errors[0], result.output
    assert "no server reachable" not in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_predict_output_files_folders_and_write_errors(tmp_path, onnx_repo, start_server):
    target = start_server(onnx_repo).grpc_target
    image, mask = _pair(tmp_path / "in")

    result = run_cli("--target", target, "predict", image, mask, "-o", str(tmp_path / "out.PNG"))
    assert result.exit_code == 0 and (tmp_path / "out.PNG").is_file(), result.output  # suffixes: any case
    (tmp_path / "existing.d").mkdir()  # an existing folder, suffix or not, is a folder
    result = run_cli("--target", target, "predict", image, mask, "-o", str(tmp_path / "existing.d"))
    assert result.exit_code == 0 and (tmp_path / "existing.d" / "photo.inpainted.png").is_file(), result.output
    result = run_cli("--target", target, "predict", image, mask, "-o", str(tmp_path / "new"))
    assert result.exit_code == 0 and (tmp_path / "new" / "photo.inpainted.png").is_file(), result.output

    (tmp_path / "a-file").write_text("in the way")  # no suffix means a folder, but a file is there
    one_line_error(run_cli("--target", target, "predict", image, mask, "-o", str(tmp_path / "a-file")),
                   "cannot write")


# -- a killed inpaint-export --------------------------------------------------------------------------

def _process(pid: int) -> tuple[str, str] | None:
    """(state, start time) of a live ``pid``, or None; a zombie counts as gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else (fields[0], fields[19])


def _same_process(pid: int, started: str) -> bool:
    """Whether ``pid`` is still alive and the process that started at ``started`` (not a reused pid)."""
    state = _process(pid)
    return state is not None and state[1] == started


def _tf2onnx_child(parent: int) -> tuple[int, str] | None:
    """(pid, start time) of ``parent``'s child whose command line runs tf2onnx, or None."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"tf2onnx" in cmdline and (alive := _process(int(entry.name))):
            return int(entry.name), alive[1]
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")
def test_a_killed_export_takes_tf2onnx_with_it_and_the_next_export_cleans_up(tiny_version, tmp_path):
    base = tmp_path / "inpaint"
    shutil.copytree(tiny_version.parent, base)  # the session's model is shared: export a copy
    version = base / tiny_version.name
    (version / "model.onnx").unlink()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "inpaint.export.cli", str(base)]

    log, child, started = tmp_path / "killed-export.log", None, ""
    with log.open("w") as output:
        exporter = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        found = wait_for(lambda: _tf2onnx_child(exporter.pid) or exporter.poll() is not None, 240,
                         "the exporter to start tf2onnx")
        assert exporter.poll() is None, f"the exporter exited first: {log.read_text()[-3000:]}"
        child, started = found
        # Freeze tf2onnx first: it must not end on its own (a write to the dead exporter's pipe would end it,
        # a quiet phase would not). A stopped process ends only by SIGKILL, which PR_SET_PDEATHSIG sends.
        os.kill(child, signal.SIGSTOP)
        wait_for(lambda: (_process(child) or ("gone",))[0] == "T", 10, "tf2onnx to stop")
        exporter.send_signal(signal.SIGKILL)
        exporter.wait(timeout=30)
        wait_for(lambda: not _same_process(child, started), 10, f"tf2onnx (pid {child}) to die with the exporter")
    finally:
        if exporter.poll() is None:
            exporter.kill()
            exporter.wait()
        if child is not None and _same_process(child, started):
            os.kill(child, signal.SIGKILL)  # never leave it behind (stopped, even) when an assertion fails
    stale = sorted(version.glob(".model.onnx.*.tmp"))
    assert len(stale) == 1, f"the killed export's temporary: {stale}"
    assert not (version / "model.onnx").exists(), "nothing half-written was published"

    finished = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert f"removed {stale[0]}, left by an export that did not finish" in finished.stderr, finished.stderr[-3000:]
    assert not stale[0].exists() and not list(version.glob(".model.onnx.*.tmp"))
    assert (version / "model.onnx").is_file() and f"wrote {version / 'model.onnx'}" in finished.stdout


# -- make -n demo ---------------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_dry_run_demo_only_prints(tmp_path, free_port):
    rest_port = another_free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # a plain make
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run(["make", "-n", "demo", f"REPORTS={work}/reports", f"MODEL_BASE={work}/models",
                             f"PORT={free_port}", f"REST_PORT={rest_port}"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    # No trained version under MODEL_BASE: the demo serves the shipped model, with no training step.
    assert f"inpaint-serve --model-base-path models/pretrained/inpaint --port {free_port}" in result.stdout, \
        result.stdout
    assert "inpaint-train" not in result.stdout and "loadtest" in result.stdout, result.stdout
    assert list(work.iterdir()) == [], "a dry run creates nothing (no reports/demo, no models)"
    assert health_status(f"127.0.0.1:{free_port}") is None, "and starts no server"
    servers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_has(p, str(work).encode())]
    assert servers == [], "no process runs on the demo's paths"


def _cmdline_has(proc: Path, text: bytes) -> bool:
    try:
        return text in (proc / "cmdline").read_bytes()
    except OSError:
        return False
