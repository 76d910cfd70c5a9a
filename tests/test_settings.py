"""One home for each setting (issue 24, item 3).

Every CLI's options read one prefix of environment variables, derived from the flag by one rule, and the
names read before are refused with the new one.
"""

from __future__ import annotations

import click
import pytest
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
            if isinstance(param, click.Option):
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
    ("inpaint-client", "INPAINT_BATCH_SIZE", "INPAINT_CLIENT_PREDICT_BATCH_SIZE or INPAINT_CLIENT_LOADTEST_BATCH_SIZE"),
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


def test_a_flag_wins_over_its_variable(monkeypatch):
    monkeypatch.setenv("INPAINT_SERVE_MODEL_BASE_PATH", "/models/inpaint")
    monkeypatch.setenv("INPAINT_SERVE_TILING", "off")
    monkeypatch.setenv("INPAINT_SERVE_PORT", "9000")
    params = serve_main.make_context("inpaint-serve", ["--port", "9100"]).params
    assert (str(params["model_base_path"]), params["tiling"], params["port"]) == ("/models/inpaint", "off", 9100)
