"""The package layout: no import cycles between packages or between the modules of one, and a light client
that loads nothing heavy."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "keras", "onnxruntime", "onnx", "aiohttp", "inpaint.trainer", "inpaint.export",
         "inpaint.serving", "tf2onnx")


def package_dirs() -> dict[str, Path]:
    """``inpaint.X`` -> its folder, from pyproject's package-dir table (as the build sees it)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping = config["tool"]["setuptools"]["package-dir"]
    return {name: ROOT / folder for name, folder in mapping.items() if name.count(".") == 1}


def imported_packages(package: str, folder: Path) -> dict[str, set[str]]:
    """Which other top-level ``inpaint.*`` packages each module of ``package`` imports (at any depth)."""
    edges: dict[str, set[str]] = {}
    for path in folder.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                match = re.match(r"inpaint\.(\w+)", name)
                if match and f"inpaint.{match.group(1)}" != package:
                    edges.setdefault(f"inpaint.{match.group(1)}", set()).add(str(path.relative_to(ROOT)))
    return edges


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    visiting, done = set(), set()

    def visit(node, path):
        if node in visiting:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        visiting.add(node)
        for target in sorted(graph.get(node, ())):
            if cycle := visit(target, path + [node]):
                return cycle
        visiting.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if cycle := visit(start, []):
            return cycle
    return None


def test_no_import_cycle_between_packages():
    graph = {package: set(imported_packages(package, folder)) for package, folder in package_dirs().items()}
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"
    assert graph["inpaint.core"] == set(), "the core imports no other inpaint package"
    assert graph["inpaint.client"] <= {"inpaint.core"} and graph["inpaint.serving"] <= {"inpaint.core"}
    assert "inpaint.export" not in graph["inpaint.trainer"]


def module_name(path: Path, folder: Path) -> str:
    """``trainer/photos/load.py`` -> ``photos.load``; a package's ``__init__.py`` is the package itself."""
    return ".".join(part for part in path.relative_to(folder).with_suffix("").parts if part != "__init__")


def imported_modules(folder: Path) -> dict[str, set[str]]:
    """Which modules of the package in ``folder`` each of its modules imports: relative or absolute,
    at module level or inside a function (a deferred import still ties the two modules together)."""
    package = f"inpaint.{folder.name}"
    files = [path for path in folder.rglob("*.py") if not path.name.endswith(("_pb2.py", "_pb2_grpc.py"))]
    known = {module_name(path, folder) for path in files}
    edges: dict[str, set[str]] = {}
    for path in files:
        here = module_name(path, folder)
        parts = here.split(".") if path.name == "__init__.py" else here.split(".")[:-1]
        parent = [part for part in parts if part]
        targets = edges.setdefault(here, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = ".".join(parent[:len(parent) - node.level + 1] + ([node.module] if node.module else []))
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(package):
                base = node.module[len(package):].lstrip(".")
            elif isinstance(node, ast.Import):
                targets |= {alias.name[len(package) + 1:] for alias in node.names
                            if alias.name.startswith(f"{package}.")} & known - {here}
                continue
            else:
                continue
            named = {f"{base}.{alias.name}".strip(".") for alias in node.names}
            targets |= ({base} | named) & known - {here, ""}
    return edges


def test_no_import_cycle_between_the_modules_of_a_package():
    """Inside each package, modules import one another one way only (issue 24: trainer's data -> stream -> data)."""
    for package, folder in package_dirs().items():
        cycle = find_cycle(imported_modules(folder))
        assert cycle is None, f"import cycle in {package}: {' -> '.join(cycle)}"


def test_the_module_graph_sees_imports_inside_functions(tmp_path):
    folder = tmp_path / "trainer"
    (folder / "photos").mkdir(parents=True)
    (folder / "data.py").write_text("def load():\n    from .stream import files\n")
    (folder / "stream.py").write_text("from .data import split\nfrom inpaint.trainer.photos import load\n")
    (folder / "photos" / "__init__.py").write_text("")
    (folder / "photos" / "load.py").write_text("from ..data import split\nfrom . import catalogue\n")
    (folder / "photos" / "catalogue.py").write_text("import inpaint.trainer.photos.load\n")
    graph = imported_modules(folder)
    assert graph["data"] == {"stream"} and graph["stream"] == {"data", "photos", "photos.load"}
    assert graph["photos.load"] == {"data", "photos", "photos.catalogue"}
    assert find_cycle(graph) == ["data", "stream", "data"]
    assert find_cycle({name: targets - {"data"} for name, targets in graph.items()}) == \
        ["photos.load", "photos.catalogue", "photos.load"]


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_shared_import_graph_tool_agrees():
    tool = ROOT.parent / "shared" / "tools" / "import_graph.py"
    if not tool.is_file():
        pytest.skip("../shared/tools/import_graph.py is not beside this checkout")
    result = subprocess.run([sys.executable, str(tool)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and "0 cycle(s)" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("module", ["inpaint.client", "inpaint.client.cli", "inpaint.client.loadtest",
                                    "inpaint.core.contract", "inpaint.core.tensors", "inpaint.core.images",
                                    "inpaint.core.masks", "inpaint.core.repository", "inpaint.core.onnx_model"])
def test_light_modules_load_nothing_heavy(module):
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                       check=True).stdout)
    heavy = sorted(name for name in loaded if name.split(".")[0] in HEAVY or name.startswith(HEAVY))
    assert not heavy, f"importing {module} loaded {heavy[:8]}"


def test_each_contract_constant_is_defined_once():
    """The names of the serving contract are spelled in inpaint.core.contract and nowhere else."""
    spelled = re.compile(r"""^\s*[A-Z_]+\s*=\s*["'](serving_default|inpainted|tensorflow/serving/predict)["']""")
    offenders = [f"{path.relative_to(ROOT)}:{number}"
                 for folder in package_dirs().values() for path in folder.rglob("*.py")
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if spelled.match(line) and path.name != "contract.py"]
    assert not offenders, offenders


def test_ci_fails_a_skipped_browser_cluster_or_protocol_test_and_only_those(tmp_path):
    """Under CI=true a skip in a required tier is a failure (CI must install what it needs); elsewhere a skip."""
    import shutil

    shutil.copy(Path(__file__).parent / "conftest.py", tmp_path / "conftest.py")
    body = "import pytest\n\ndef test_needs_something():\n    pytest.skip('chromium is missing')\n"
    (tmp_path / "test_web.py").write_text(body)       # the browser tier
    (tmp_path / "test_masks.py").write_text(body)     # no required tier

    def run(ci: str):
        env = {**os.environ, "CI": ci}
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", str(tmp_path)],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)

    in_ci = run("true")
    assert in_ci.returncode == 1, in_ci.stdout
    assert "1 failed, 1 skipped" in in_ci.stdout and "make test-deps" in in_ci.stdout
    assert "chromium is missing" in in_ci.stdout
    outside = run("")
    assert outside.returncode == 0 and "2 skipped" in outside.stdout, outside.stdout
