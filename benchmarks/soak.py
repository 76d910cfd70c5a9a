"""A mixed soak under the pod's memory cap, with a burst of the worst admitted requests every minute.

    python benchmarks/soak.py [--minutes 10] [--model models/pretrained/inpaint] [--limit-mib 3072]
                              [--server-args "--runtime onnxruntime"]

Starts ``inpaint-serve`` with the Deployment's args (``k8s/base/deployment.yaml``, as ``memory.py`` does) in a
cgroup v1 memory cgroup capped at the Deployment's memory limit, every process of it, as in its pod (run as
root; see tests/helpers.py's MemoryCgroup). Two clients keep sending a mix, 64 px to 12 MP, over TF Serving's
gRPC and REST APIs and the Open Inference Protocol's gRPC; once a minute a burst of the worst requests the
limits admit arrives at once (as tests/test_memory_admission.py's burst): 24 MP uint8 photos over gRPC, 24
and 12 MP FP32, gzip bodies inflating past the byte cap, 1 x 262,144 strips, progressive JPEGs of 2,000
scans. After each burst the mix pauses, its requests in flight finish, and the cgroup's memory is read once
the server is idle again, with each process's resident set.

Reports OOM kills (the cgroup's oom_control), failures by status, and the memory after each burst against
idle (measured after a warm-up): the cgroup's usage (what the pod's limit counts, page cache included), its
RSS (memory.stat's total_rss: the processes' resident memory, shared pages once) and its charge by kind. The
criterion: zero OOM kills, zero failures other than RESOURCE_EXHAUSTED (and the refusals the burst's hostile
requests must get), memory back within 20 % of idle after each burst.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import logging
import random
import shlex
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import grpc
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import MemoryCgroup, cgroup_unavailable_reason, free_port, settled_usage, wait_serving  # noqa: E402
from inpaint.core.protos import grpc_predict_v2_pb2_grpc, prediction_service_pb2_grpc  # noqa: E402
from inpaint.core.tensors import infer_request, predict_bytes_request, predict_request  # noqa: E402

logger = logging.getLogger("soak")
MiB = 2**20
DEPLOYMENT = ROOT / "k8s" / "base" / "deployment.yaml"
OWN_FLAGS = ("--model-base-path", "--port", "--rest-port", "--host")
SIZES = [(64, 64), (256, 256), (512, 512), (1024, 1024), (1500, 2000), (3000, 4000)]
WEIGHTS = [30, 25, 15, 10, 6, 2]
BACK_WITHIN = 0.2
HOSTILE = {"gzip", "jpeg"}  # burst requests that must be refused: their 4xx are expected, not failures


def deployment() -> tuple[list[str], int]:
    document = next(yaml.safe_load_all(DEPLOYMENT.read_text()))
    [container] = [c for c in document["spec"]["template"]["spec"]["containers"] if c["name"] == "server"]
    limit = container["resources"]["limits"]["memory"]
    return [a for a in container["args"] if not a.startswith(OWN_FLAGS)], int(limit.removesuffix("Mi")) * MiB


def photo(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = cv2.resize(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), (width, height))
    mask = np.zeros((height, width), np.uint8)
    cv2.line(mask, (0, height // 3), (width - 1, height // 2), 1, max(3, min(height, width) // 60))
    return image, mask


class Soak:
    def __init__(self, model: Path, limit: int | None, extra_args: tuple[str, ...] = ()):
        args, pod_limit = deployment()
        args = [*args, *extra_args]  # given again, a flag's last value wins
        self.limit = limit or pod_limit
        self.cgroup = MemoryCgroup(self.limit)
        self.port, self.rest_port = free_port(), free_port()
        command = [sys.executable, "-m", "inpaint.serving.cli", "--model-base-path", str(model), "--host",
                   "127.0.0.1", "--port", str(self.port), "--rest-port", str(self.rest_port), "--log-level",
                   "WARNING", *args]
        logger.info("server args: %s; memory cap %d MiB", " ".join(args), self.limit // MiB)
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        preexec_fn=self.cgroup.preexec)
        target = f"127.0.0.1:{self.port}"
        wait_serving(target, self.process, timeout=180)
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        self.channel = grpc.insecure_channel(target, options=options)
        self.tf = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.v2 = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.outcomes: collections.Counter = collections.Counter()
        self.lock = threading.Lock()
        self.paused = threading.Event()
        self.stopping = threading.Event()
        self.mixing = 0  # the mix's requests in flight

    def record(self, kind: str, status: str) -> None:
        with self.lock:
            self.outcomes[(kind, status)] += 1

    def grpc_call(self, kind: str, call, request, timeout: float = 300) -> None:
        try:
            call(request, timeout=timeout)
            self.record(kind, "OK")
        except grpc.RpcError as error:
            self.record(kind, error.code().name)

    def rest_call(self, kind: str, body: bytes, headers: dict | None = None) -> None:
        request = urllib.request.Request(f"http://127.0.0.1:{self.rest_port}/v1/models/inpaint:predict", data=body,
                                         method="POST", headers={"Content-Type": "application/json",
                                                                 **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                response.read()
                self.record(kind, str(response.status))
        except urllib.error.HTTPError as error:
            self.record(kind, str(error.code))
        except OSError as error:
            self.record(kind, type(error).__name__)

    def mixed_request(self, rng: random.Random) -> None:
        height, width = rng.choices(SIZES, WEIGHTS)[0]
        image, mask = photo(height, width, rng.randrange(1000))
        way = rng.choice(["grpc", "v2", "rest"])
        kind = f"mix {way} {width}x{height}"
        if way == "grpc":
            self.grpc_call(kind, self.tf.Predict, predict_request(image[None], mask[None], "inpaint"))
        elif way == "v2":
            self.grpc_call(kind, self.v2.ModelInfer, infer_request(image[None], mask[None], "inpaint"))
        elif height * width <= 256 * 256:
            body = json.dumps({"inputs": {"image": image[None].tolist(), "mask": mask[None, ..., None].tolist()}})
            self.rest_call(kind, body.encode())
        else:
            import base64
            files = {name: {"b64": base64.b64encode(cv2.imencode(".png", array)[1].tobytes()).decode()}
                     for name, array in (("image_bytes", image[..., ::-1]), ("mask_bytes", mask * 255))}
            self.rest_call(kind, json.dumps({"signature_name": "serving_bytes", "inputs": files}).encode())

    def mix_forever(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stopping.is_set():
            with self.lock:
                paused = self.paused.is_set()
                self.mixing += not paused
            if paused:
                time.sleep(0.1)
                continue
            try:
                self.mixed_request(rng)
            finally:
                with self.lock:
                    self.mixing -= 1

    def pause_mix(self, timeout: float = 600) -> None:
        """Stop the mix and wait for its requests in flight (a 12 MP one takes a minute on a busy machine)."""
        with self.lock:  # a mixer counts itself in under the lock, so none starts unseen after this
            self.paused.set()
        deadline = time.monotonic() + timeout
        while self.mixing and time.monotonic() < deadline:
            time.sleep(0.2)

    def breakdown(self) -> dict[str, int]:
        """The cgroup's charge by kind, MiB (MemoryCgroup.charges)."""
        return {kind: value // MiB for kind, value in self.cgroup.charges().items()}

    def resident_sets(self) -> dict[str, int]:
        """MiB resident per process of the cgroup (the server, its REST codec worker, the fork server...)."""
        sets = {}
        for pid in self.cgroup.processes():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    words = handle.read().decode(errors="replace").split("\0")
                with open(f"/proc/{pid}/status") as handle:
                    rss = next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))
            except (OSError, StopIteration):
                continue
            name = "server" if "inpaint.serving.cli" in words else " ".join(words[-2:])[:60]
            sets[f"{pid} {name}"] = rss // 1024
        return sets

    def burst(self) -> None:
        """The worst admitted requests, all at once."""
        big_image, big_mask = photo(4000, 6000, 7)
        big = predict_request(big_image[None], big_mask[None], "inpaint")
        as_float = predict_request(big_image[None, :3000, :4000].astype(np.float32) / 255,
                                   big_mask[None, :3000, :4000].astype(np.float32), "inpaint")
        big_float = predict_request(big_image[None].astype(np.float32) / 255, big_mask[None].astype(np.float32),
                                    "inpaint")
        strip = predict_request(np.zeros((1, 1, 262_144, 3), np.uint8), np.ones((1, 1, 262_144, 1), np.uint8), "inpaint")
        bomb = gzip.compress(b" " * (400 * MiB))
        jpeg = many_scans_jpeg()
        jpeg_request = predict_bytes_request([jpeg], [cv2.imencode(".png", np.zeros(BOMB_SHAPE, np.uint8))[1]
                                                      .tobytes()], "inpaint")
        calls = ([lambda: self.grpc_call("burst 24 MP uint8", self.tf.Predict, big)] * 4
                 + [lambda: self.grpc_call("burst 12 MP float32", self.tf.Predict, as_float)] * 2
                 + [lambda: self.grpc_call("burst 24 MP float32", self.tf.Predict, big_float)] * 2
                 + [lambda: self.grpc_call("burst strip 1x262144", self.tf.Predict, strip)] * 2
                 + [lambda: self.rest_call("burst gzip", bomb, {"Content-Encoding": "gzip"})] * 4
                 + [lambda: self.grpc_call("burst jpeg 2000 scans", self.tf.Predict, jpeg_request)] * 2)
        with ThreadPoolExecutor(len(calls)) as pool:
            list(pool.map(lambda call: call(), calls))

    def settled(self) -> int:
        return settled_usage(self.cgroup, self.rest_port)

    def run(self, minutes: float) -> dict:
        warm = random.Random(0)
        for _ in range(12):
            self.mixed_request(warm)
        self.burst()  # the first burst warms what stays (ORT's arena for small runs, gRPC's buffers)
        idle = self.settled()
        idle_breakdown = self.breakdown()
        idle_rss = idle_breakdown["rss"] * MiB
        idle_resident = self.resident_sets()
        self.cgroup.reset_peak()
        logger.info("idle after warm-up: %d MiB; resident MiB %s", idle // MiB, idle_resident)
        mixers = [threading.Thread(target=self.mix_forever, args=(seed,), daemon=True) for seed in (1, 2)]
        for mixer in mixers:
            mixer.start()
        started, bursts, rss, resident, breakdowns = time.monotonic(), [], [], [], []
        while time.monotonic() - started < minutes * 60:
            next_burst = started + 60 * (len(bursts) + 1)
            while time.monotonic() < min(next_burst, started + minutes * 60):
                time.sleep(1)
                if self.process.poll() is not None:
                    break
            if self.process.poll() is not None:
                break
            self.burst()
            self.pause_mix()
            after = self.settled()
            breakdowns.append(self.breakdown())
            rss.append(breakdowns[-1]["rss"] * MiB)
            resident.append(self.resident_sets())
            self.paused.clear()
            bursts.append(after)
            logger.info("burst %d: %d MiB after (idle %d MiB), rss %d MiB (idle %d MiB), peak so far %d MiB; "
                        "resident MiB %s", len(bursts), after // MiB, idle // MiB, rss[-1] // MiB, idle_rss // MiB,
                        self.cgroup.peak // MiB, resident[-1])
        self.stopping.set()
        for mixer in mixers:
            mixer.join(timeout=600)
        failures = {f"{kind}: {status}": count for (kind, status), count in sorted(self.outcomes.items())
                    if status not in ("OK", "200", "RESOURCE_EXHAUSTED", "429")
                    and not (kind.split()[1] in HOSTILE and status in ("400", "413", "INVALID_ARGUMENT"))}
        return {
            "minutes": minutes, "memory_limit_mib": self.limit // MiB, "alive": self.process.poll() is None,
            "oom_kills": self.cgroup.oom_kills, "peak_mib": self.cgroup.peak // MiB, "idle_mib": idle // MiB,
            "after_each_burst_mib": [after // MiB for after in bursts],
            "rss_idle_mib": idle_rss // MiB, "rss_after_each_burst_mib": [value // MiB for value in rss],
            "rss_within_20_percent_of_idle": all(value <= (1 + BACK_WITHIN) * idle_rss for value in rss),
            "breakdown_mib_idle": idle_breakdown, "breakdown_mib_after_each_burst": breakdowns,
            "resident_mib_idle": idle_resident, "resident_mib_after_each_burst": resident,
            "within_20_percent_of_idle": all(after <= (1 + BACK_WITHIN) * idle for after in bursts),
            "requests": sum(self.outcomes.values()),
            "by_status": {status: sum(c for (_, s), c in self.outcomes.items() if s == status)
                          for status in sorted({s for _, s in self.outcomes})},
            "failures": failures,
            "outcomes": {f"{kind}: {status}": count for (kind, status), count in sorted(self.outcomes.items())},
        }

    def stop(self) -> None:
        self.channel.close()
        self.process.terminate()
        try:
            self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
        self.cgroup.remove()


BOMB_SHAPE = (3000, 4000)


def many_scans_jpeg(scans: int = 2000) -> bytes:
    """A 12 MP progressive JPEG of ``scans`` scans in ~100 KB (a flat photo's scans take bytes)."""
    photo_pixels = np.full((*BOMB_SHAPE, 3), 128, np.uint8)
    data = cv2.imencode(".jpg", photo_pixels, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    tail = data[data.rindex(b"\xff\xda") : -2]
    return data[:-2] + tail * (scans - data.count(b"\xff\xda")) + b"\xff\xd9"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the mix runs (a burst a minute)")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "pretrained" / "inpaint")
    parser.add_argument("--limit-mib", type=int, default=None, help="memory cap [default: the Deployment's]")
    parser.add_argument("--server-args", default="",
                        help="inpaint-serve flags after the Deployment's, one string (e.g. '--runtime openvino')")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    reason = cgroup_unavailable_reason()
    if reason:
        logger.error("cannot soak under a memory cap: %s", reason)
        return 2
    soak = Soak(args.model, args.limit_mib * MiB if args.limit_mib else None, tuple(shlex.split(args.server_args)))
    try:
        report = soak.run(args.minutes)
    finally:
        soak.stop()
    print(json.dumps(report, indent=2))
    ok = report["alive"] and not report["oom_kills"] and not report["failures"] and report["within_20_percent_of_idle"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
