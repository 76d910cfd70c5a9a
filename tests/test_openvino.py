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
    from inpaint.core.detail import finish_fills
    from inpaint.core.openvino_model import OpenVinoModel
    from inpaint.core.repository import INT8_FILENAME

    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (2, 72, 96, 3), dtype=np.uint8)
    mask = np.zeros((2, 72, 96, 1), np.uint8)
    mask[:, 20:50, 30:70] = 1
    server = start_server(SHIPPED, runtime="openvino", precision="auto")
    answer = Stubs(server.grpc_target).predict(predict_request(image, mask))

    model = OpenVinoModel(SHIPPED / "1" / INT8_FILENAME)
    expected = model.inpaint(image, mask)
    finish_fills(expected, mask, model.detail, tiled=False)
    np.testing.assert_array_equal(answer, expected)
    known = mask[..., 0] == 0
    np.testing.assert_array_equal(answer[known], image[known])
    assert not np.array_equal(answer[~known], image[~known])  # the holes were filled


MEMORY_PROBE = textwrap.dedent("""
    import json, sys
    import numpy as np
    from inpaint.core.openvino_model import OpenVinoModel
    from inpaint.core.contract import padded_pixels
    from inpaint.serving.admission import OPENVINO_KEPT_BYTES_PER_PIXEL, OPENVINO_RUN
    from inpaint.serving.runtime import hand_large_buffers_back_when_freed, return_freed_memory

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    hand_large_buffers_back_when_freed()  # as the server runs
    model = OpenVinoModel(sys.argv[1])
    report = []
    for count, height, width in ((32, 64, 64), (1, 1024, 1024), (1, 64, 64)):
        images = np.random.default_rng(0).integers(0, 256, (count, height, width, 3), dtype=np.uint8)
        masks = np.zeros((count, height, width, 1), np.uint8)
        masks[:, height // 4 : height // 2, width // 4 : width // 2] = 1
        return_freed_memory()
        open("/proc/self/clear_refs", "w").write("5")  # the peak starts again from here
        before = status("VmRSS")
        model.inpaint(images, masks)
        return_freed_memory()
        report.append({"shape": [count, height, width], "peak": status("VmHWM") - before,
                       "kept": status("VmRSS") - before, "charged": OPENVINO_RUN.of(count, height, width),
                       "may_keep": OPENVINO_KEPT_BYTES_PER_PIXEL * padded_pixels(count, height, width)})
    print(json.dumps(report))
""")


def test_an_openvino_run_peaks_within_what_admission_charges_and_gives_its_memory_back():
    """Each run's peak over the memory before it, against ``OPENVINO_RUN``; what stays after it (state sized to
    the last run's shape), against ``OPENVINO_KEPT_BYTES_PER_PIXEL``, and let go by the next, smaller run."""
    import json

    from inpaint.core.repository import INT8_FILENAME

    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(SHIPPED / "1" / INT8_FILENAME)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    *runs, after_large = json.loads(result.stdout.splitlines()[-1])
    for run in runs:
        assert run["peak"] <= run["charged"], f"{run['shape']}: peaked at {run['peak'] >> 20} MiB, charged " \
                                              f"{run['charged'] >> 20} MiB"
        assert run["peak"] > run["charged"] // 2, f"{run['shape']}: charged {run['charged'] >> 20} MiB for a " \
                                                  f"peak of {run['peak'] >> 20} MiB: the model is stale"
        assert run["kept"] <= run["may_keep"], f"{run['shape']}: {run['kept'] >> 20} MiB kept after the run"
    # 1 x 64² after 1 x 1024²: it runs in what the large one kept, and lets that go.
    assert after_large["peak"] <= after_large["charged"]
    assert after_large["kept"] < -runs[-1]["kept"] // 2, f"{after_large['kept'] >> 20} MiB: the 1 MP run's state stays"


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
