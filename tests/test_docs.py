"""The docs can't rot: what README.md and docs/*.md name exists.

Every ``make TARGET`` they name is a rule of the Makefile; every ``--flag`` is an option of a project CLI
(the five console scripts, each ``inpaint-client`` subcommand, ``python -m inpaint.trainer.photos``, and the
``--help`` of each ``benchmarks/*.py`` or ``docs/*.py`` script the docs name) or on the short list of other
tools' flags below; every relative link and image resolves, anchors included; README.md stays short.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 300

# Flags of other tools that the docs name on purpose. Never a project flag: those are read from the CLIs.
# (inpaint-serve's spellings of TF Serving's flags, --rest_api_port and the like, are inpaint-serve's own
# options and are checked against it, not listed here.)
OTHER_TOOLS_FLAGS = {
    # tensorflow_model_server flags that inpaint-serve does not take (k8s/overlays/tfserving)
    "--model_config_file", "--enable_batching", "--monitoring_config_file",
    # tritonserver (docs/triton.md)
    "--model-repository", "--model-store", "--model-control-mode", "--repository-poll-secs",
    # docker / podman build and run, Dockerfile RUN and COPY (docs/images.md, docs/deployment.md)
    "--build-arg", "--isolation", "--pull", "--format", "--mount", "--from", "--gpus",
    # debootstrap, chroot (docs/images.md); pip; jq
    "--variant", "--userspec", "--no-index", "--arg",
    # pytest; the shared import-graph tool beside the checkout (../shared/tools/import_graph.py)
    "--strict-markers", "--modules",
    # pytest-xdist (make test-fast, docs/testing.md)
    "--dist",
}

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`([^`]+)`")
FLAG = re.compile(r"(?<![\w-])--([A-Za-z][A-Za-z0-9]*(?:[-_][A-Za-z0-9]+)*)")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_SRC = re.compile(r"""<(?:img|a)\b[^>]*?\b(?:src|href)=["']([^"']+)["']""", re.I)
SCRIPT = re.compile(r"\b((?:benchmarks|docs)/\w+\.py)\b")
# Where a shell command may start or end: a line, a code span, ; && || | $( ( ) or a backtick.
COMMAND_SPLIT = re.compile(r"\n|;|&&|\|\||\||\$\(|\(|\)|`")
SHELL_COMMENT = re.compile(r"(?:^|\s)#.*$", re.M)
MAKE_RULE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*(?:[ \t]+[A-Za-z0-9][A-Za-z0-9_.-]*)*)[ \t]*:(?![=:])", re.M)


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def code_of(text: str) -> list[str]:
    """The fenced blocks' bodies and the inline code spans outside them."""
    fenced = [match.group(0) for match in FENCE.finditer(text)]
    prose = FENCE.sub("", text)
    return fenced + [match.group(1) for match in INLINE_CODE.finditer(prose)]


def prose_of(text: str) -> str:
    """The text without its code, where links are."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def make_targets_named(text: str) -> set[str]:
    """Targets of every ``make ...`` command in the code of a page (not the English verb in prose)."""
    targets = set()
    for code in code_of(text):
        for piece in COMMAND_SPLIT.split(SHELL_COMMENT.sub("", code)):
            words = piece.strip().removeprefix("$ ").split()
            if not words or words[0] != "make":
                continue
            for word in words[1:]:
                if word.startswith("#"):
                    break
                if not word.startswith("-") and "=" not in word and re.fullmatch(r"[a-z][a-z0-9-]*", word):
                    targets.add(word)
    return targets


def makefile_targets() -> set[str]:
    text = read(ROOT / "Makefile")
    return {name for match in MAKE_RULE.finditer(text) for name in match.group(1).split()
            if not name.startswith(".")}


def flags_named(text: str) -> dict[str, int]:
    """Every ``--flag`` on the page, with the first line it is on."""
    found: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        for name in FLAG.findall(line):
            found.setdefault(f"--{name}", number)
    return found


def click_options(command) -> set[str]:
    """Every long option of a click command and its subcommands, hidden ones included."""
    options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)
               if opt.startswith("--")}
    for sub in getattr(command, "commands", {}).values():
        options |= click_options(sub)
    return options


def script_options(script: str) -> set[str]:
    """The long options a script's argparse parser adds, read from its source: what its ``--help`` lists,
    without importing what the script imports (TensorFlow takes seconds). Checked against ``--help`` by
    test_script_options_are_what_help_lists."""
    options = set()
    for node in ast.walk(ast.parse(read(ROOT / script))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            keywords = {kw.arg: kw.value for kw in node.keywords}
            if getattr(keywords.get("help"), "attr", None) == "SUPPRESS":  # hidden from --help
                continue
            names = [arg.value for arg in node.args
                     if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("--")]
            options.update(names)
            if getattr(keywords.get("action"), "attr", None) == "BooleanOptionalAction":
                options.update("--no-" + name[2:] for name in names)
    return options


def scripts_named() -> list[str]:
    return sorted({name for page in doc_files() for name in SCRIPT.findall(read(page)) if (ROOT / name).is_file()})


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def anchors_of(text: str) -> set[str]:
    anchors: set[str] = set()
    for match in re.finditer(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", FENCE.sub("", text), re.M):
        base = slug(match.group(1))
        anchor, n = base, 0
        while anchor in anchors:
            n += 1
            anchor = f"{base}-{n}"
        anchors.add(anchor)
    return anchors


def broken_links(page: Path, text: str) -> list[str]:
    broken = []
    prose = prose_of(text)
    for target in [*LINK.findall(prose), *HTML_SRC.findall(prose)]:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        shown = dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest
        if not dest.exists():
            broken.append(f"{target}: {shown} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors_of(read(dest)):
            broken.append(f"{target}: no heading with anchor #{anchor} in {shown}")
    return broken


@pytest.fixture(scope="module")
def project_flags() -> set[str]:
    from inpaint.client.cli import main as client
    from inpaint.export.cli import main as export
    from inpaint.export.evaluate import main as evaluate
    from inpaint.serving.cli import main as serve
    from inpaint.trainer.photos.cli import main as photos
    from inpaint.trainer.train import main as train

    flags = {"--help"}  # every click command and argparse script has it
    for command in (train, serve, export, evaluate, client, photos):
        flags |= click_options(command)
    assert {"--model-base-path", "--epochs", "--rest-port", "--concurrency", "--sizes", "--dest"} <= flags
    for script in scripts_named():
        flags |= script_options(script)
    return flags


def test_readme_fits_on_a_few_screens():
    lines = len(read(ROOT / "README.md").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; keep it at {README_MAX_LINES} or fewer"


def test_every_make_target_named_exists():
    targets = makefile_targets()
    assert {"train", "export", "test", "test-fast"} <= targets
    missing = [f"{page.relative_to(ROOT)}: make {target}" for page in doc_files()
               for target in sorted(make_targets_named(read(page))) if target not in targets]
    assert not missing, "no such Makefile target:\n" + "\n".join(missing)


def test_every_flag_named_exists(project_flags):
    unknown = [f"{page.relative_to(ROOT)}:{line}: {flag}" for page in doc_files()
               for flag, line in flags_named(read(page)).items()
               if flag not in project_flags and flag not in OTHER_TOOLS_FLAGS]
    assert not unknown, ("no project CLI has these options (fix the page, or, for another tool's flag, add it to "
                         "OTHER_TOOLS_FLAGS with a comment):\n" + "\n".join(unknown))


def test_every_relative_link_and_image_resolves():
    broken = [f"{page.relative_to(ROOT)}: {problem}" for page in doc_files()
              for problem in broken_links(page, read(page))]
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_script_options_are_what_help_lists():
    """The source reading above agrees with a real ``--help``, on a script that starts quickly."""
    script = "benchmarks/thin_margin.py"
    shown = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True,
                           timeout=120, check=True).stdout
    assert script_options(script) == {f"--{name}" for name in FLAG.findall(shown)} - {"--help"}


def test_the_checks_catch_what_they_should(tmp_path):
    page = tmp_path / "page.md"
    text = ("# Title\n\nRun `make train nosuch VAR=1` and then make sense of it.\n\n"
            "```bash\n$ make -s print-long-args && make serve   # comment make fake\necho $(make bench)\n```\n\n"
            "Use `benchmarks/memory.py --side 64`. [ok](#title) [gone](#nowhere) [file](missing.md)\n"
            "![pic](images/none.png)\n")
    page.write_text(text)
    assert make_targets_named(text) == {"train", "nosuch", "print-long-args", "serve", "bench"}
    assert "--side" in flags_named(text)
    assert [problem.split(":")[0] for problem in broken_links(page, text)] == [
        "#nowhere", "missing.md", "images/none.png"]
    assert slug("Photos as files: `serving_bytes`") == "photos-as-files-serving_bytes"
    assert slug("Kubernetes (`k8s/`, kustomize)") == "kubernetes-k8s-kustomize"
