"""``benchmarks/gpu.py``: its CPU dry run writes the report, with every CUDA part skipped and why, and numbers
from the CPU plumbing; its parsers and goals read right.

Only that it works: its timings are benchmarks, never test assertions.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"
HAS_TENSORFLOW = importlib.util.find_spec("tensorflow") is not None
CUDA_WORDS = ("CUDA", "GPU", "--dry-run")  # what a reason names: the missing provider, device or the flag


def load_benchmark():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One ``--dry-run`` of every section (CUDA skipped even on a machine that has it)."""
    out = tmp_path_factory.mktemp("gpu")
    run = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads((out / "gpu.json").read_text()), (out / "gpu.md").read_text(), run.stdout


def _section(report: dict, name: str) -> dict:
    return next(section for section in report["sections"] if section["name"] == name)


def test_the_report_names_the_device_and_why_cuda_did_not_run(dry_run):
    report, table, printed = dry_run
    device = report["device"]
    assert report["mode"] == "cpu" and report["dry_run"]
    assert device["cuda_reason"] and device["name"]
    assert [section["name"] for section in report["sections"]] == [
        "server_device", "load_sweep", "in_process_ort", "large_photos", "tensorflow", "training"]
    assert table.startswith(f"# GPU benchmark: {device['name']}") and f"CPU dry run: {device['cuda_reason']}" in table
    assert printed.strip() == table.strip()
    assert report["seconds"] < report["budget_s"]


def test_every_cuda_part_is_skipped_with_its_reason(dry_run):
    report, table, _ = dry_run
    for section in report["sections"]:
        assert section["status"] in ("ok", "skipped"), (section["name"], section.get("error"))
        cuda = [s for s in section["skipped"] if "GPU" in s["part"] or "CUDA" in s["part"] or "cuda" in s["part"]]
        if section["name"] in ("tensorflow", "training") and not HAS_TENSORFLOW:
            assert any("tensorflow is not installed" in s["reason"] for s in section["skipped"])
            continue
        assert cuda, section
        for skipped in cuda:
            assert any(word in skipped["reason"] for word in CUDA_WORDS), skipped
            assert f"- skipped: {skipped['part']}: {skipped['reason']}" in table


def test_the_cpu_plumbing_has_numbers(dry_run):
    report, table, _ = dry_run
    rows = {section["name"]: section["rows"] for section in report["sections"]}
    (device,) = rows["server_device"]
    assert device["provider"] == device["expected"] == "CPUExecutionProvider"
    assert device["first_request_ms"] > 0
    sweep = {(row["mode"], row["clients"]) for row in rows["load_sweep"]}
    assert sweep == {(mode, clients) for mode in ("server", "server_batching") for clients in (1, 8)}
    assert len(rows["in_process_ort"]) == 2
    for row in rows["load_sweep"] + rows["in_process_ort"]:
        assert row["device"] == "cpu" and row["size"] == 64
        assert row["images_per_s"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
        assert row["gpu_mem_peak_mib"] is None
    assert all(row["errors"] == 0 for row in rows["load_sweep"])
    assert _section(report, "in_process_ort")["info"]["placement"]["nodes"]["CPUExecutionProvider"] > 0
    photos = {(row["holes"], row["mode"]) for row in rows["large_photos"]}
    assert photos == {(holes, mode) for holes in ("scratch", "strokes20")
                      for mode in ("windows", "whole_server_tiles", "whole_one_run")}
    for row in rows["large_photos"]:
        assert row["cli_s"] > 0 and row["library_s"] > 0 and row["provider"] == "CPUExecutionProvider"
    if HAS_TENSORFLOW:
        assert [(row["batch"], row["device"]) for row in rows["tensorflow"]] == [(1, "cpu"), (8, "cpu")]
        assert all(row["images_per_s"] > 0 for row in rows["tensorflow"])
        (burst,) = rows["training"]
        assert burst["epochs_done"] == 2 and burst["step_ms"] > 0 and burst["global_batch"] == 2
        assert burst["precision"] == "bfloat16" and burst["devices"] and "CPU" in burst["devices"][0]
    assert "| server_batching | 64 | 8 |" in table and "| 172x115 | scratch | windows |" in table
    names = [target["name"] for target in report["targets"]]
    assert "64 px, 8 clients: batching over the unbatched server" in names
    assert any(name.startswith("64 px: batching server (8 clients") for name in names)


def test_training_log_and_pipeline_table_are_parsed():
    bench = load_benchmark()
    log = ("INFO tensorflow: Using MirroredStrategy with devices ('/job:localhost/replica:0/task:0/device:GPU:0',)\n"
           "Epoch 1/3\n20/20 - 9s - 450ms/step - loss: 0.1\nEpoch 2/3\n20/20 - 1s - 52ms/step - loss: 0.09\n"
           "Epoch 3/3\n20/20 - 0s - 900us/step - loss: 0.08\n")
    assert bench.parse_training_log(log) == {"epochs_done": 3, "step_ms_by_epoch": [450.0, 52.0, 0.9],
                                             "devices": ["/job:localhost/replica:0/task:0/device:GPU:0"]}
    table = ("| what | examples/s |\n|---|---:|\n| input pipeline alone (tf.data stream, AUTOTUNE) | 1,250.5 |\n"
             "| train step alone (3,033,063 parameters, batches in memory) | 640.0 |\n")
    assert bench.parse_pipeline_table(table) == {"input pipeline alone (tf.data stream, AUTOTUNE)": 1250.5,
                                                 "train step alone (3,033,063 parameters, batches in memory)": 640.0}


def test_goals_from_rows():
    bench = load_benchmark()

    def cell(mode, size, clients, images_per_s, **extra):
        return {"mode": mode, "size": size, "batch": extra.pop("batch", 1), "clients": clients,
                "images_per_s": images_per_s, "device": "cuda", **extra}

    sections = [
        {"name": "load_sweep", "rows": [cell("server", 64, 128, 1000.0), cell("server_batching", 64, 128, 4000.0,
                                                                              server_batch_size=31.5)]},
        {"name": "in_process_ort", "rows": [cell("in_process", 64, 1, 2000.0, batch=8),
                                            cell("in_process", 64, 1, 6000.0, batch=32)]},
        {"name": "large_photos", "rows": [{"mode": "windows", "holes": "scratch", "megapixels": 12.0, "cli_s": 1.4,
                                           "library_s": 0.6, "device": "cuda"},
                                          {"mode": "windows", "holes": "strokes20", "megapixels": 12.0,
                                           "cli_s": 3.0, "library_s": 2.0, "device": "cuda"}]},
    ]
    goals = {goal["name"]: (round(goal["value"], 3), goal["met"]) for goal in bench.targets(sections)}
    assert goals == {
        "64 px, 128 clients: batching over the unbatched server": (4.0, True),
        "64 px: batching server (128 clients, mean batch 31.5) over in-process ORT at batch 32": (0.667, False),
        "12 MP scratch, windows: inpaint-client predict, s": (1.4, False),
        "12 MP scratch, windows: client library round trip, s": (0.6, True),
    }
