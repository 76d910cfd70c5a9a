"""The multi-worker training Job (k8s/training) checked with the real tools and its own entrypoint.

kustomize renders it and every document is validated offline (strict, Kubernetes 1.30); the Job, its
headless Service and the volumes are cross-checked; and the container's own command and args run here,
once per completion index, with a fake ``inpaint-train`` first on PATH that records the TF_CONFIG and
the arguments it was started with.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_deploy import (
    KUBECTL,
    KUBERNETES_VERSION,
    ROOT,
    by_kind,
    flag,
    needs_kubectl,
    render,
)

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"  # set on every pod of a Job by the Job controller


def training_docs(path: str = "training") -> tuple[dict, dict, list[dict]]:
    docs = render(path)
    return by_kind(docs, "Job"), by_kind(docs, "Service"), docs


def worker(job: dict) -> dict:
    [container] = job["spec"]["template"]["spec"]["containers"]
    return container


def pod_env(job: dict, index: int) -> dict[str, str]:
    """The container's env as the kubelet would give it to pod ``index``: downward API resolved."""
    env = {}
    for entry in worker(job).get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            field = entry["valueFrom"]["fieldRef"]["fieldPath"]
            assert field == f"metadata.labels['{JOB_NAME_LABEL}']", f"cannot emulate {field}"
            env[entry["name"]] = job["metadata"]["name"]
    env["JOB_COMPLETION_INDEX"] = str(index)  # the Job controller sets it in an Indexed Job
    return env


FAKE_TRAIN = """#!{python}
import json, os, sys
with open(os.environ["FAKE_TRAIN_OUT"], "w") as out:
    json.dump({{"pid": os.getpid(), "argv": sys.argv[1:], "TF_CONFIG": os.environ.get("TF_CONFIG")}}, out)
"""


def run_entrypoint(job: dict, env: dict[str, str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, dict | None]:
    """Run the container's command + args here, a fake inpaint-train first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "inpaint-train"
    fake.write_text(FAKE_TRAIN.format(python=sys.executable))
    fake.chmod(0o755)
    out = tmp_path / "inpaint-train.json"
    out.unlink(missing_ok=True)
    container = worker(job)
    process = subprocess.Popen([*container["command"], *container["args"]],
                               env={**env, "PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_TRAIN_OUT": str(out)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = process.communicate(timeout=30)
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    if not out.exists():
        return result, None
    record = json.loads(out.read_text())
    assert record.pop("pid") == process.pid, "the entrypoint execs inpaint-train (signals reach it)"
    return result, record


def mounts(job: dict) -> dict[str, dict]:
    """Volume name -> {"mountPath", "readOnly", "volume"} for the worker container."""
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    return {m["name"]: {"mountPath": m["mountPath"], "readOnly": m.get("readOnly", False), "volume": volumes[m["name"]]}
            for m in worker(job)["volumeMounts"]}


@needs_kubectl
def test_every_document_validates_offline():
    import kubernetes_validate

    docs = training_docs()[2]
    assert sorted(d["kind"] for d in docs) == ["Job", "PersistentVolumeClaim", "Service"]
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@needs_kubectl
def test_job_and_service_agree():
    job, service, docs = training_docs()
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    container = worker(job)
    env = pod_env(job, 0)
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(env["WORKERS"]) == 2

    # Headless, selecting exactly the Job's pods, and their DNS subdomain.
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] and all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    assert pod["subdomain"] == service["metadata"]["name"] == env["SERVICE_NAME"]
    [port] = service["spec"]["ports"]
    [container_port] = container["ports"]
    assert port["targetPort"] == container_port["name"]
    assert port["port"] == container_port["containerPort"] == int(env["PORT"])

    # Resumable: failed pods are replaced under their index; usage errors fail the Job; disruptions are free.
    assert pod["restartPolicy"] == "Never" and spec["backoffLimit"] >= 2 * spec["completions"]
    assert spec["podReplacementPolicy"] == "Failed"
    rules = spec["podFailurePolicy"]["rules"]
    fail_job = next(r for r in rules if r["action"] == "FailJob")
    assert fail_job["onExitCodes"] == {"containerName": container["name"], "operator": "In", "values": [2]}
    assert any(r["action"] == "Ignore" and r["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}] for r in rules)

    # Like the other manifests: non-root, read-only root filesystem, no capabilities; the trainer image.
    assert container["image"].split(":")[0] == "inpaint-trainer"
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and security["capabilities"]["drop"] == ["ALL"]
    assert not security["allowPrivilegeEscalation"]
    assert "/tmp" in {m["mountPath"] for m in mounts(job).values()}
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]

    # Volumes: the servers' model claim, writable here; the shared training claim, ReadWriteMany.
    volumes = mounts(job)
    assert volumes["models"]["volume"]["persistentVolumeClaim"]["claimName"] == \
        by_kind(render("overlays/onnx-cpu"), "PersistentVolumeClaim")["metadata"]["name"]
    assert not volumes["models"]["readOnly"] and not volumes["models"]["volume"]["persistentVolumeClaim"].get("readOnly")
    shared = by_kind(docs, "PersistentVolumeClaim")
    assert volumes["training"]["volume"]["persistentVolumeClaim"]["claimName"] == shared["metadata"]["name"]
    assert shared["spec"]["accessModes"] == ["ReadWriteMany"] and not volumes["training"]["readOnly"]


@needs_kubectl
@pytest.mark.parametrize("index", [0, 1])
def test_entrypoint_builds_tf_config_from_the_completion_index(index, tmp_path):
    job, service, _ = training_docs()
    workers = job["spec"]["completions"]
    assert index < workers
    result, record = run_entrypoint(job, pod_env(job, index), tmp_path)
    assert result.returncode == 0, result.stderr
    assert record is not None, "inpaint-train was not started"

    config = json.loads(record["TF_CONFIG"])
    name, port = job["metadata"]["name"], service["spec"]["ports"][0]["port"]
    assert config == {
        "cluster": {"worker": [f"{name}-{i}.{service['metadata']['name']}:{port}" for i in range(workers)]},
        "task": {"type": "worker", "index": index},
    }
    assert config["cluster"]["worker"][:2] == ["inpaint-train-0.inpaint-train:2222", "inpaint-train-1.inpaint-train:2222"]
    assert f"TF_CONFIG={record['TF_CONFIG']}" in result.stdout  # logged for kubectl logs
    from inpaint.trainer.distribute import cluster_tasks, is_chief_task

    # ...and the trainer reads it as N workers, worker 0 the chief.
    assert cluster_tasks(config) == workers and is_chief_task(config) == (index == 0)

    args = record["argv"]
    assert args == worker(job)["args"], "the Job's args reach inpaint-train unchanged"
    volumes = mounts(job)
    assert flag(args, "--strategy") == "multi-worker"
    for name in ("--backup-dir", "--logdir"):
        assert flag(args, name).startswith(volumes["training"]["mountPath"] + "/"), name
    assert flag(args, "--backup-dir") != flag(args, "--logdir")
    assert flag(args, "--model-base-path").startswith(volumes["models"]["mountPath"] + "/")
    assert flag(args, "--model-name") == "inpaint"


@needs_kubectl
@pytest.mark.parametrize("change", ["no index", "index past the last worker", "no service name"])
def test_entrypoint_refuses_a_bad_environment_with_the_exit_code_that_fails_the_job(change, tmp_path):
    job, _, _ = training_docs()
    env = pod_env(job, 0)
    if change == "no index":
        del env["JOB_COMPLETION_INDEX"]
    elif change == "index past the last worker":
        env["JOB_COMPLETION_INDEX"] = env["WORKERS"]
    else:
        del env["SERVICE_NAME"]
    result, record = run_entrypoint(job, env, tmp_path)
    assert record is None, "inpaint-train must not start"
    fail_job = next(r for r in job["spec"]["podFailurePolicy"]["rules"] if r["action"] == "FailJob")
    assert result.returncode in fail_job["onExitCodes"]["values"], result.stderr
    assert "train-worker:" in result.stderr


@needs_kubectl
def test_worker_count_is_changed_in_one_place(tmp_path):
    """completions is the only number to edit: kustomize copies it to parallelism and WORKERS."""
    copy = tmp_path / "k8s" / "training"
    shutil.copytree(ROOT / "k8s" / "training", copy)
    manifest = copy / "job.yaml"
    text = manifest.read_text()
    assert text.count("\n  completions: 2\n") == 1
    manifest.write_text(text.replace("\n  completions: 2\n", "\n  completions: 3\n"))
    result = subprocess.run([KUBECTL, "kustomize", str(copy)], capture_output=True, text=True, check=True)
    job = next(d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "Job")
    assert job["spec"]["parallelism"] == 3
    result, record = run_entrypoint(job, pod_env(job, 2), tmp_path)
    assert result.returncode == 0, result.stderr
    config = json.loads(record["TF_CONFIG"])
    assert config["cluster"]["worker"] == [f"inpaint-train-{i}.inpaint-train:2222" for i in range(3)]
    assert config["task"] == {"type": "worker", "index": 2}


@needs_kubectl
def test_models_rwx_component_makes_the_serving_claim_writable(tmp_path):
    import kubernetes_validate

    overlay = tmp_path / "overlay"
    overlay.mkdir()
    up = os.path.relpath(ROOT / "k8s", overlay)  # kustomize takes other roots by relative path only
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [f"{up}/overlays/onnx-cpu"], "components": [f"{up}/training/models-rwx"]}))
    result = subprocess.run([KUBECTL, "kustomize", str(overlay)], capture_output=True, text=True, check=True)
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    claim = by_kind(docs, "PersistentVolumeClaim")
    kubernetes_validate.validate(claim, KUBERNETES_VERSION, strict=True)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert by_kind(render("overlays/onnx-cpu"), "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadOnlyMany"]
    job, _, _ = training_docs()
    assert mounts(job)["models"]["volume"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    server = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    assert next(m for m in server["containers"][0]["volumeMounts"] if m["name"] == "models")["readOnly"]


@needs_kubectl
def test_job_args_are_options_of_the_real_trainer():
    """Every flag the Job passes parses with inpaint-train's own click command (nothing is run)."""
    from inpaint.trainer.train import main

    args = worker(training_docs()[0])["args"]
    context = main.make_context("inpaint-train", list(args))  # raises on an unknown flag or a bad value
    assert context.params["strategy"] == "multi-worker"
    assert context.params["max_minutes"] == 0, "no laptop time limit in the cluster"


@needs_kubectl
def test_job_env_sets_only_the_trainers_own_variables():
    """An INPAINT_* variable in the Job is one inpaint-train reads (INPAINT_TRAIN_*), never an old name it refuses."""
    from inpaint.trainer.train import VARIABLES, main

    env = pod_env(training_docs()[0], 0)
    VARIABLES.refuse_old(env)
    read = {param.envvar for param in main.params}
    assert {name for name in env if name.startswith("INPAINT_")} <= read
