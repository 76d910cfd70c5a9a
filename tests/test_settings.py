"""One home for each setting (issue 24, item 3).

Every CLI's options read one prefix of environment variables, derived from the flag by one rule, and the
names read before are refused with the new one. The manifests' args and env are parsed by inpaint-serve's
own command (no server starts), their repeated limits agree with each other and with the memory limit, and
the Dockerfiles install pyproject.toml's extras rather than lists of their own.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from inpaint.client.cli import main as client_main
from inpaint.export.cli import main as export_main
from inpaint.export.evaluate import main as eval_main
from inpaint.serving.cli import main as serve_main
from inpaint.trainer.train import main as train_main

# each command, its prefix, and the prefix of its subcommands' options (client: INPAINT_CLIENT_<SUBCOMMAND>_)
TOOLS = {"inpaint-serve": (serve_main, "INPAINT_SERVE_"), "inpaint-client": (client_main, "INPAINT_CLIENT_"),
         "inpaint-export": (export_main, "INPAINT_EXPORT_"), "inpaint-eval": (eval_main, "INPAINT_EVAL_"),
         "inpaint-train": (train_main, "INPAINT_TRAIN_")}


def commands(command: click.Command, prefix: str):
    """(command, the prefix its parameters' variables carry), subcommands included."""
    yield command, prefix
    for name, sub in getattr(command, "commands", {}).items():
        yield from commands(sub, f"{prefix}{name.upper()}_")


def rule(prefix: str, param: click.Parameter) -> str:
    flag = next((name for name in param.opts if name.startswith("--")), "--" + param.name.replace("_", "-"))
    return prefix + flag.lstrip("-").replace("-", "_").upper()


@pytest.mark.parametrize("tool", TOOLS)
def test_every_option_reads_its_tools_prefixed_variable(tool):
    """--help names it (show_envvar); arguments that read one follow the same rule."""
    main, prefix = TOOLS[tool]
    for command, command_prefix in commands(main, prefix):
        for param in command.params:
            if isinstance(param, click.Option) and param.hidden and param.name.startswith("renamed_"):
                assert param.envvar is None, "an old flag kept as an alias reads no variable: its old one is refused"
            elif isinstance(param, click.Option):
                assert param.envvar == rule(command_prefix, param), (tool, param.name)
                assert param.show_envvar and param.help, (tool, param.name)
            elif param.envvar is not None:
                assert param.envvar == rule(command_prefix, param), (tool, param.name)


def test_no_two_tools_read_one_variable():
    read = {}
    for tool, (main, prefix) in TOOLS.items():
        for command, _ in commands(main, prefix):
            for param in command.params:
                if param.envvar:
                    assert read.setdefault(param.envvar, tool) == tool, param.envvar


@pytest.mark.parametrize("tool, old, new", [
    ("inpaint-serve", "INPAINT_DEVICE", "INPAINT_SERVE_DEVICE"),
    ("inpaint-serve", "MODEL_BASE_PATH", "INPAINT_SERVE_MODEL_BASE_PATH"),
    ("inpaint-serve", "MODEL_NAME", "INPAINT_SERVE_MODEL_NAME"),
    ("inpaint-serve", "INPAINT_POLL_SECONDS", "INPAINT_SERVE_FILE_SYSTEM_POLL_WAIT_SECONDS"),
    ("inpaint-client", "INPAINT_TARGET", "INPAINT_CLIENT_TARGET"),
    ("inpaint-client", "INPAINT_BATCH_SIZE",
     "INPAINT_CLIENT_PREDICT_BATCH_SIZE or INPAINT_CLIENT_LOADTEST_BATCH_SIZE"),
    ("inpaint-client", "INPAINT_HEALTH_WAIT", "INPAINT_CLIENT_HEALTH_WAIT"),
    ("inpaint-export", "INPAINT_OPSET", "INPAINT_EXPORT_OPSET"),
    ("inpaint-eval", "INPAINT_REPORT", "INPAINT_EVAL_REPORT"),
    ("inpaint-train", "INPAINT_SEED", "INPAINT_TRAIN_SEED"),
])
def test_an_old_name_is_refused_with_the_new_one(tool, old, new):
    """Before any option is read: a required option's old variable is named, not reported missing."""
    main, _ = TOOLS[tool]
    result = CliRunner().invoke(main, ["status"] if tool == "inpaint-client" else [], env={old: "4"})
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"Error: {old} is no longer read by {tool}: set {new} instead"


def test_every_old_name_maps_to_a_variable_its_tool_reads():
    from inpaint.client.cli import CLIENT
    from inpaint.export.cli import VARIABLES as EXPORT
    from inpaint.export.evaluate import VARIABLES as EVAL
    from inpaint.serving.cli import VARIABLES as SERVE
    from inpaint.trainer.train import VARIABLES as TRAIN

    for tool, variables in {"inpaint-serve": SERVE, "inpaint-client": CLIENT, "inpaint-export": EXPORT,
                            "inpaint-eval": EVAL, "inpaint-train": TRAIN}.items():
        main, prefix = TOOLS[tool]
        read = {param.envvar for command, _ in commands(main, prefix) for param in command.params}
        assert variables.renamed, tool
        for old, new in variables.renamed.items():
            assert old not in read, (tool, old)
            assert set(new.split(" or ")) <= read, (tool, old, new)


def test_evals_old_threshold_flag_still_works_with_a_warning(caplog):
    """One name for the size up to which an image runs whole: --tile-above-pixels, in every CLI."""
    for main in (serve_main, eval_main):
        assert "--tile-above-pixels" in {opt for param in main.params for opt in param.opts}
    assert "--tile-above-pixels" in {opt for param in client_main.commands["predict"].params for opt in param.opts}
    from inpaint.export.evaluate import renamed_flag

    with eval_main.make_context("inpaint-eval", ["m", "--whole-max-pixels", "5000"]) as context:
        assert context.params["renamed_whole_max_pixels"] == 5000
        assert renamed_flag(context.params["tile_above_pixels"], 5000) == 5000
    assert "--whole-max-pixels is now --tile-above-pixels" in caplog.text
    with eval_main.make_context("inpaint-eval", ["m", "--whole-max-pixels", "5000", "--tile-above-pixels", "6000"]):
        with pytest.raises(click.UsageError, match="not its old name"):
            renamed_flag(6000, 5000)
    assert "--whole-max-pixels" not in CliRunner().invoke(eval_main, ["--help"]).output


def test_the_bytes_signatures_old_client_names_still_work_with_a_warning(monkeypatch):
    """One name for the serving_bytes signature: inpaint_bytes, takes_bytes, --send bytes."""
    from inpaint.client import InpaintClient
    from inpaint.client.cli import SEND_MODES, SendMode

    with InpaintClient("127.0.0.1:1") as client:  # the channel connects on the first call: none is made
        monkeypatch.setattr(client, "takes_bytes", lambda timeout=None: True)
        monkeypatch.setattr(client, "inpaint_bytes", lambda images, masks, timeout=None: [b"png"])
        with pytest.warns(DeprecationWarning, match="takes_files is now takes_bytes"):
            assert client.takes_files()
        with pytest.warns(DeprecationWarning, match="inpaint_files is now inpaint_bytes"):
            assert client.inpaint_files([b"a"], [b"b"]) == [b"png"]
    assert SEND_MODES == ("auto", "bytes", "pixels")
    assert SendMode(SEND_MODES).convert("files", None, None) == "bytes"


def test_a_flag_wins_over_its_variable(monkeypatch):
    monkeypatch.setenv("INPAINT_SERVE_MODEL_BASE_PATH", "/models/inpaint")
    monkeypatch.setenv("INPAINT_SERVE_TILING", "off")
    monkeypatch.setenv("INPAINT_SERVE_PORT", "9000")
    params = serve_main.make_context("inpaint-serve", ["--port", "9100"]).params
    assert (str(params["model_base_path"]), params["tiling"], params["port"]) == ("/models/inpaint", "off", 9100)


# -- the manifests' args are inpaint-serve's own options, and their limits agree -----------------------------

ROOT = Path(__file__).resolve().parent.parent
KUBECTL = shutil.which("kubectl")
# What runs inpaint-serve: every Deployment overlay but tfserving (TF Serving's own binary), the model-image
# example and the KServe runtime. Without kubectl, the files the overlays start from.
RENDERED = ("overlays/onnx-cpu", "overlays/onnx-gpu", "examples/model-from-image", "kserve")
UNRENDERED = ("base/deployment.yaml", "kserve/servingruntime.yaml")


@functools.cache
def documents(path: str) -> tuple[dict, ...]:
    if path.endswith(".yaml"):
        text = (ROOT / "k8s" / path).read_text()
    else:
        text = subprocess.run([KUBECTL, "kustomize", str(ROOT / "k8s" / path)], capture_output=True, text=True,
                              check=True).stdout
    return tuple(doc for doc in yaml.safe_load_all(text) if doc)


def containers(path: str, image: str, command: list[str] | None = None) -> list[dict]:
    found = []
    for doc in documents(path):
        spec = doc.get("spec", {})
        pod = spec.get("template", {}).get("spec") or spec  # a ServingRuntime's spec holds its containers
        found += [c for c in pod.get("containers", []) if c.get("image", "").startswith(image)
                  and c.get("command") == command]
    return found


def server_containers() -> list[tuple[str, dict]]:
    paths = RENDERED if KUBECTL else UNRENDERED
    found = [(path, container) for path in paths for container in containers(path, "inpaint-serving")]
    assert len(found) >= len(paths), "every manifest runs the server"
    return found


def parse_serve_args(container: dict, monkeypatch) -> dict:
    """inpaint-serve's own command parses the container's args under its env: an unknown or misspelled flag,
    a bad value or an old variable name fails here, and no server starts."""
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    from inpaint.serving.cli import VARIABLES

    VARIABLES.refuse_old(env)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return serve_main.make_context("inpaint-serve", list(container["args"])).params


def test_the_servers_args_and_env_in_every_manifest_are_inpaint_serves_options(monkeypatch):
    for path, container in server_containers():
        params = parse_serve_args(container, monkeypatch)
        assert params["memory_budget_mib"] and params["model_name"], path
        for name in container.get("env", []):
            assert name["name"].startswith("INPAINT_SERVE_"), (path, name)


def test_a_misspelled_flag_in_a_manifest_fails(monkeypatch):
    [(_, container), *_] = server_containers()
    bad = {**container, "args": [*container["args"], "--memory-budget-mb=1536"]}
    with pytest.raises(click.NoSuchOption):
        parse_serve_args(bad, monkeypatch)
    bad = {**container, "env": [{"name": "INPAINT_DEVICE", "value": "cpu"}]}
    with pytest.raises(click.ClickException, match="set INPAINT_SERVE_DEVICE instead"):
        parse_serve_args(bad, monkeypatch)


def test_the_load_test_jobs_args_are_inpaint_clients_options():
    if not KUBECTL:
        pytest.skip("kubectl is not installed: the Job is only rendered by kustomize")
    [container] = containers("jobs", "inpaint-serving", ["inpaint-client"])
    context = client_main.make_context("inpaint-client", list(container["args"]))
    name, command, rest = client_main.resolve_command(context, [*context.protected_args, *context.args])
    assert name == "loadtest"
    assert command.make_context(name, rest, parent=context).params["concurrency"] == (1, 8, 32, 64)


LIMITS = ("max_pixels", "max_request_pixels", "memory_budget_mib", "memory_share", "tile_above_pixels",
          "max_request_bytes")


def mebibytes(quantity: str) -> int:
    units = {"Mi": 1, "Gi": 1024}
    return int(quantity[:-2]) * units[quantity[-2:]]


def test_the_limits_every_manifest_repeats_agree(monkeypatch):
    """The KServe runtime serves what the Deployment was sized for: the same limits, the same memory."""
    servers = [(path, parse_serve_args(container, monkeypatch), container) for path, container in server_containers()]
    _, reference, reference_container = servers[0]
    for path, params, container in servers[1:]:
        assert {k: params[k] for k in LIMITS} == {k: reference[k] for k in LIMITS}, path
        if "gpu" not in path:
            assert container["resources"]["limits"]["memory"] == reference_container["resources"]["limits"]["memory"]


def test_every_manifests_memory_limit_holds_its_budget(monkeypatch):
    """serving/admission.py's arithmetic: idle processes + ORT's small-run arena + --memory-budget-mib, and about
    a quarter of the limit left for what is not admitted, at least half of it free of the small methods' one
    message arriving; and the budget admits what ``assert_budget_admits_the_largest_photo`` says."""
    from inpaint.serving.admission import SMALL_ARRIVAL_COPIES, UNADMITTED_SHARE, unadmitted_mib
    from inpaint.serving.grpc_transport import SMALL_ARRIVALS
    from inpaint.serving.server import request_bytes_for

    for path, container in server_containers():
        params = parse_serve_args(container, monkeypatch)
        limit = mebibytes(container["resources"]["limits"]["memory"])
        assert unadmitted_mib(limit, params["memory_budget_mib"]) >= UNADMITTED_SHARE * limit, path
        grpc_bytes, _, _ = request_bytes_for(params["max_request_pixels"], params["tile_above_pixels"])
        # the other methods' messages, arriving outside the budget, fit in what is left for the unadmitted
        unadmitted = unadmitted_mib(limit, params["memory_budget_mib"]) * 2**20
        assert SMALL_ARRIVALS * SMALL_ARRIVAL_COPIES * grpc_bytes <= unadmitted / 2, path
        batching = "--enable-batching" in container["args"]
        max_images = (min(params["max_images_per_request"], params["max_batch_size"]) if batching
                      else params["max_images_per_request"])
        assert_budget_admits_the_largest_photo(path, params, max_images)


def test_the_default_budget_admits_a_24_mp_photo_beside_a_small_request():
    import dataclasses

    from inpaint.serving.server import ServerConfig

    params = {field.name: getattr(ServerConfig(), field.name) for field in dataclasses.fields(ServerConfig)}
    assert_budget_admits_the_largest_photo("defaults", dict(params, max_pixels=24_000_000),
                                           params["max_images_per_request"])


def assert_budget_admits_the_largest_photo(what: str, params: dict, max_images: int) -> None:
    """Of the budget, OpenVINO's kept buffers (--runtime auto on a CPU) are held at start. What is left for one
    request holds a gRPC predict's message while it arrives (twice the cap), so the server need not cut the cap
    the args imply, and the largest photo the args admit (3:2, thin holes, uint8); and while that photo
    runs, a small predict's message may still arrive."""
    import math

    from inpaint.core.tiling import TilingOptions
    from inpaint.serving.admission import OPENVINO_RUN, array_predict_cost
    from inpaint.serving.grpc_transport import ARRIVAL_COPIES, REPLY_BYTES_PER_VALUE
    from inpaint.serving.server import request_bytes_for

    grpc_bytes, _, _ = request_bytes_for(params["max_request_pixels"], params["tile_above_pixels"])
    budget = params["memory_budget_mib"] * 2**20
    run_cost = OPENVINO_RUN.keeping(params["openvino_keep_pixels"], max_images)
    per_request = min(budget * params["memory_share"], budget - run_cost.held)
    assert ARRIVAL_COPIES * grpc_bytes <= per_request, what
    height = math.isqrt(params["max_pixels"] * 2 // 3)
    width = params["max_pixels"] // height
    tiling = TilingOptions(tile_above_pixels=params["tile_above_pixels"])
    photo = array_predict_cost(1, height, width, 1, tiling, REPLY_BYTES_PER_VALUE, run_cost=run_cost)
    photo_total = photo.total + 2 * 4 * height * width  # its message: the bytes and their parsed copy
    assert photo_total <= per_request, (what, photo.describe())
    assert run_cost.held + photo_total + ARRIVAL_COPIES * grpc_bytes <= budget, what


def test_the_deployments_drain_fits_its_grace_period(monkeypatch):
    for path, container in server_containers():
        if path.startswith("kserve"):
            continue  # KServe's pods take their grace period from KServe
        pod = next(doc for doc in documents(path) if doc["kind"] == "Deployment")["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] > parse_serve_args(container, monkeypatch)["drain_seconds"]


# -- the images install pyproject.toml's extras, not lists of their own ---------------------------------------

DOCKERFILES = {"serving/Dockerfile": "SERVE_EXTRA", "trainer/Dockerfile": None}


def pip_requirements(dockerfile: str) -> list[str]:
    """What the Dockerfile's ``pip wheel`` builds, its ARGs' defaults filled in."""
    text = (ROOT / dockerfile).read_text().replace("\\\n", " ")
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    [command] = [line for line in text.splitlines() if line.startswith("RUN pip wheel")]
    command = re.split(r"\s(?:&&|;|\|\|)\s", command)[0]  # the pip command alone, not what follows it
    words = [word for word in shlex.split(command)[3:] if not word.startswith("-")]
    words = words[words.index("/wheels") + 1:] if "/wheels" in words else words
    return [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], word) for word in words]


def test_the_images_install_the_projects_extras():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for dockerfile in DOCKERFILES:
        requirements = pip_requirements(dockerfile)
        assert requirements and all(re.fullmatch(r"\.(\[[\w,-]+\])?", r) for r in requirements), \
            f"{dockerfile} installs {requirements}: only the project and its extras, pinned in pyproject.toml"
        for requirement in requirements:
            for extra in re.findall(r"[\w-]+", requirement):
                assert extra in extras, (dockerfile, extra)
    assert pip_requirements("trainer/Dockerfile") == [".[train]"]
    serving = pip_requirements("serving/Dockerfile")
    assert serving == [".[serve-cpu]"], "the CPU image by default"


def test_the_serving_extras_are_serve_base_and_one_onnx_runtime():
    """serve, serve-cpu and serve-gpu differ only in their ONNX Runtime package and whether they carry OpenVINO
    (what --runtime auto runs on CPUs: serve and serve-cpu do, the CUDA image does not), and none holds
    TensorFlow."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name, base in (("serve", "inpaint[serve-base,openvino]"), ("serve-cpu", "inpaint[serve-base,openvino]"),
                       ("serve-gpu", "inpaint[serve-base]")):
        rest = [r for r in extras[name] if not r.startswith("onnxruntime")]
        assert rest == [base], name
        assert not any("tensorflow" in r for r in extras["serve-base"] + extras["openvino"] + extras[name]), name
    assert [r.split(";")[0] for r in extras["openvino"]] == ["openvino>=2024.3"]
    assert re.search(r"^ARG SERVE_EXTRA=serve-cpu$", (ROOT / "serving/Dockerfile").read_text(), re.M)
    assert "SERVE_EXTRA" in (ROOT / "images/build.sh").read_text()


# -- inpaint-serve's options are ServerConfig's fields ----------------------------------------------------------

CLI_ONLY = {"rest_api_port", "rest_timeout_ms", "batching_parameters_file", "max_inflight_pixels", "log_level"}


def test_every_server_option_is_a_config_field_written_once():
    """Each option's name, type and default are its field's, its flags, help and bounds its Setting's: only the
    few CLI-only options (TF Serving's --rest_api_* whose units differ, the batching file, the log level) are
    declared in serving/cli.py."""
    from inpaint.serving.batching import BatchingOptions
    from inpaint.serving.cli import setting_fields
    from inpaint.serving.server import ServerConfig

    fields = {field.name: field for field, _ in setting_fields(ServerConfig)}
    options = {param.name: param for param in serve_main.params}
    assert set(options) - set(fields) == CLI_ONLY
    for name, field in fields.items():
        param, spec = options[name], field.metadata["setting"]
        assert param.default == field.default and param.help == spec.help, name
        assert spec.flags(name)[0] in param.opts, name
    unset = {field.name for field in dataclasses.fields(ServerConfig)} - set(fields)
    assert unset == {"batching", "rest_timeout_seconds"}, "a field without a flag is one the CLI derives"
    assert {field.name for field in dataclasses.fields(BatchingOptions)} - set(fields) == {"allowed_batch_sizes"}


def test_tf_servings_spellings_and_the_dashed_ones_set_the_same_fields(tmp_path):
    config = tmp_path / "batching.txt"
    config.write_text("max_batch_size { value: 4 }\n")
    tf_serving = ["--model_base_path", str(tmp_path), "--model_name", "m", "--rest_api_port", "0",
                  "--rest_api_timeout_in_ms", "250", "--file_system_poll_wait_seconds", "1",
                  "--batching_parameters_file", str(config), "--model_config_file_poll_wait_seconds", "3",
                  "--allow_version_labels_for_unavailable_models=true"]
    dashed = ["--model-base-path", str(tmp_path), "--model-name", "m", "--file-system-poll-wait-seconds", "1",
              "--model-config-file-poll-wait-seconds", "3", "--allow-version-labels-for-unavailable-models"]
    for args in (tf_serving, dashed):
        params = serve_main.make_context("inpaint-serve", list(args)).params
        assert (str(params["model_base_path"]), params["model_name"]) == (str(tmp_path), "m")
        assert params["poll_seconds"] == 1
        assert params["config_poll_seconds"] == 3 and params["allow_unavailable_labels"] is True
    params = serve_main.make_context("inpaint-serve", list(tf_serving)).params
    assert (params["rest_api_port"], params["rest_timeout_ms"], params["batching_parameters_file"]) == (0, 250, config)
    for bad in (["--port", "70000"], ["--model-version-policy", "newest"], ["--cors-origin", "ftp://x/y"],
                ["--memory-share", "2"], ["--tiling", "sometimes"]):
        with pytest.raises(click.BadParameter):
            serve_main.make_context("inpaint-serve", ["--model-base-path", str(tmp_path), *bad])
