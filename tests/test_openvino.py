"""``inpaint-serve --runtime openvino``: the server runs a version's graph with OpenVINO on the CPU, answers as
the library does, its runs cost no more than the admission's charge for them and give their memory back, and
a runtime it cannot start is refused in one line that names the fix."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from grpc_helpers import Stubs, predict_request

pytest.importorskip("openvino", reason="inpaint-serve --runtime openvino: pip install 'inpaint[openvino]'")

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "pretrained" / "inpaint"


def test_the_server_answers_as_the_library_runs_the_versions_int8_graph_with_openvino(start_server):
    """With the default flags, on a CPU: --runtime auto is OpenVINO, --precision auto the int8 graph."""
    from inpaint.core.detail import finish_fills
    from inpaint.core.openvino_model import OpenVinoModel
    from inpaint.core.repository import INT8_FILENAME
    from inpaint.serving.runtime import cuda_device_present

    if cuda_device_present():
        pytest.skip("a GPU is here: --runtime auto runs ONNX Runtime with CUDA")
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (2, 72, 96, 3), dtype=np.uint8)
    mask = np.zeros((2, 72, 96, 1), np.uint8)
    mask[:, 20:50, 30:70] = 1
    server = start_server(SHIPPED)
    assert server.server.loader.runtime == "openvino"
    answer = Stubs(server.grpc_target).predict(predict_request(image, mask))

    model = OpenVinoModel(SHIPPED / "1" / INT8_FILENAME)
    expected = model.inpaint(image, mask)
    finish_fills(expected, mask, model.detail, tiled=False)
    np.testing.assert_array_equal(answer, expected)
    known = mask[..., 0] == 0
    np.testing.assert_array_equal(answer[known], image[known])
    assert not np.array_equal(answer[~known], image[~known])  # the holes were filled


def test_runtime_auto_runs_onnx_runtime_where_openvino_is_missing_or_runs_go_to_cuda(monkeypatch):
    """Without OpenVINO (its import fails), auto falls back to ONNX Runtime, whose int8 runs are charged as
    measured; with --device cuda, auto is ONNX Runtime; --runtime openvino is refused there."""
    from inpaint.core.onnx_model import OnnxModel
    from inpaint.serving.admission import ONNXRUNTIME_INT8_RUN, ONNXRUNTIME_RUN
    from inpaint.serving.errors import InvalidConfig
    from inpaint.serving.runtime import ModelLoader

    assert ModelLoader("cuda", runtime="auto").runtime == "onnxruntime"
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed: importing it raises ImportError
    loader = ModelLoader("cpu", precision="auto", runtime="auto", openvino_keep_pixels=2**20)
    assert loader.runtime == "onnxruntime"
    assert loader.run_cost(64) == ONNXRUNTIME_INT8_RUN and ONNXRUNTIME_INT8_RUN.held == 0
    model = loader(SHIPPED / "1")
    assert isinstance(model, OnnxModel) and model.path.name == "model.int8.onnx"
    assert ModelLoader("cpu", precision="float32", runtime="auto").run_cost(64) == ONNXRUNTIME_RUN
    with pytest.raises(InvalidConfig, match="not installed: pip install 'inpaint\\[openvino\\]'"):
        ModelLoader("cpu", runtime="openvino")


MEMORY_PROBE = textwrap.dedent("""
    import json, sys
    import numpy as np
    from inpaint.core.openvino_model import OpenVinoModel
    from inpaint.serving.runtime import hand_large_buffers_back_when_freed, return_freed_memory

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    hand_large_buffers_back_when_freed()  # as the server runs
    model = OpenVinoModel(sys.argv[1], keep_pixels=int(sys.argv[2]))
    return_freed_memory()
    loaded = status("VmRSS")
    report = []
    for count, height, width in ((32, 64, 64), (4, 256, 256), (1, 1024, 1024), (1, 64, 64)):
        images = np.random.default_rng(0).integers(0, 256, (count, height, width, 3), dtype=np.uint8)
        masks = np.zeros((count, height, width, 1), np.uint8)
        masks[:, height // 4 : height // 2, width // 4 : width // 2] = 1
        return_freed_memory()
        open("/proc/self/clear_refs", "w").write("5")  # the peak starts again from here
        before = status("VmRSS")
        model.inpaint(images, masks)
        return_freed_memory()
        report.append({"shape": [count, height, width], "peak": status("VmHWM") - before,
                       "after": status("VmRSS") - loaded})
    print(json.dumps(report))
""")


def test_openvino_runs_peak_within_their_charge_and_keep_only_what_was_held_for_them():
    """Runs of up to ``keep_pixels`` keep their buffers (what the server holds from its budget at start,
    ``RunCost.keeping``); a larger run peaks within what its request is charged and gives its buffers back,
    leaving state sized to its shape (``OPENVINO_KEPT_BYTES_PER_PIXEL``) that the next, smaller run lets go."""
    import json

    from inpaint.core.contract import padded_pixels
    from inpaint.core.repository import INT8_FILENAME
    from inpaint.serving.admission import OPENVINO_KEPT_BYTES_PER_PIXEL, OPENVINO_RUN

    keep = 2**19
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(SHIPPED / "1" / INT8_FILENAME), str(keep)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    small_batch, windows, large, small_after = json.loads(result.stdout.splitlines()[-1])
    kept = OPENVINO_RUN.keeping(keep, 32)
    MiB = 2**20
    for run in (small_batch, windows, large, small_after):
        assert run["peak"] <= OPENVINO_RUN.peak(*run["shape"]), f"{run['shape']}: peaked at {run['peak'] // MiB} MiB"
    assert small_batch["peak"] > OPENVINO_RUN.peak(32, 64, 64) // 2  # the charge fits what it measures
    assert large["peak"] > OPENVINO_RUN.peak(1, 1024, 1024) // 2
    for run in (small_batch, windows):  # kept (more than half their peak stays), within what the server holds
        assert kept.of(*run["shape"]) == 0
        assert OPENVINO_RUN.peak(*run["shape"]) // 2 < run["after"] <= kept.held, \
            f"{run['shape']}: {run['after'] // MiB} MiB kept"
    # A larger run grows the kept buffers: what was kept before it and its peak over that fit in the held
    # bytes and its request's charge, its charge only what it holds over them...
    assert windows["after"] + large["peak"] <= kept.held + kept.of(1, 1024, 1024), \
        f"1 MP after 4 x 256²: {(windows['after'] + large['peak']) // MiB} MiB"
    assert kept.of(1, 1024, 1024) == OPENVINO_RUN.peak(1, 1024, 1024) - kept.held
    state = OPENVINO_KEPT_BYTES_PER_PIXEL * padded_pixels(1, 1024, 1024)
    assert large["after"] <= state, f"1 MP: {large['after'] // MiB} MiB kept"  # ...and gives them back
    assert small_after["after"] < 64 * MiB, f"{small_after['after'] // MiB} MiB: the 1 MP run's state stays"


def serve_command(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inpaint.serving.cli", "--model-base-path", str(SHIPPED),
                           "--port", "0", "--rest-port", "-1", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def test_openvino_with_cuda_is_refused_in_one_line_naming_the_fix():
    result = serve_command("--runtime", "openvino", "--device", "cuda")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: --runtime openvino runs on the CPU: use --device cpu or auto, or --runtime onnxruntime for CUDA"]


def test_openvino_not_installed_is_refused_in_one_line_naming_the_install(tmp_path):
    shadow = tmp_path / "openvino"  # first on the path: ``import openvino`` fails as where it is not installed
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('No module named openvino')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    result = serve_command("--runtime", "openvino", env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: --runtime openvino, but OpenVINO is not installed: pip install 'inpaint[openvino]' (or openvino), "
        "or --runtime onnxruntime"]


def test_kept_runs_cost_requests_nothing_and_the_budget_holds_their_buffers_once():
    import asyncio

    from inpaint.core.tiling import TilingOptions
    from inpaint.serving.admission import OPENVINO_RUN, MemoryBudget, array_predict_cost
    from inpaint.serving.errors import RequestTooLarge

    MiB = 2**20
    kept = OPENVINO_RUN.keeping(2**19, 64)
    budget = MemoryBudget(1536 * MiB, share=0.75)
    budget.hold(kept.held, "the kept buffers")
    assert budget.held == budget.standing == 900 * 2**19 + 128 * MiB
    assert budget.per_request == budget.total - budget.standing < int(budget.total * 0.75)

    tiling = TilingOptions()
    assert array_predict_cost(4, 256, 256, 1, tiling, 1, run_cost=kept).runs == 0
    assert array_predict_cost(1, 4000, 6000, 1, tiling, 1, run_cost=kept).runs == 0  # a 24 MP photo: windows
    one_mp = array_predict_cost(1, 1024, 1024, 1, tiling, 1, run_cost=kept)
    assert one_mp.runs == OPENVINO_RUN.peak(1, 1024, 1024) - kept.held  # what it holds over the kept buffers
    assert one_mp.total < budget.per_request  # a whole 1 MP image is admitted (the soak found it refused)

    async def reserve(nbytes):
        await budget.reservation().grow(nbytes, "a request", None)

    with pytest.raises(RequestTooLarge, match="over the .* one request may hold"):
        asyncio.run(reserve(budget.per_request + 1))  # refused at once (413), not left waiting for room never free


def test_keeping_more_than_three_quarters_of_the_budget_is_refused_at_start_naming_the_flags():
    """With the default flags (--runtime auto runs OpenVINO here), as with --runtime openvino and a keep of
    their own."""
    for args, keep, held in ((("--memory-budget-mib", "1300"), 1048576, "1,028"),  # 1,300 MiB: printed "1,300"
                             (("--runtime", "openvino", "--openvino-keep-pixels", "524288", "--memory-budget-mib",
                               "700"), 524288, "578")):
        result = serve_command(*args)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        budget = f"{int(args[-1]):,}"
        runtime = "openvino" if "--runtime" in args else "auto"
        assert len(lines) == 1 and lines[0].startswith(
            f"Error: OpenVINO (--runtime {runtime}) with --openvino-keep-pixels {keep} needs {held} MiB of the "
            f"{budget} MiB memory budget for good"), lines
        assert "raise --memory-budget-mib" in lines[0]
