# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The package's layout, as docs and README describe it: its import graph
(read from the source, module- and function-level imports alike), what
``register()`` imports, and what the wheel holds."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "vllm_kimi_tools"
ROOT = "vllm_kimi_tools"

# The vLLM adapters and entry points; every other module is the pure core.
ADAPTERS = {
    f"{ROOT}",
    f"{ROOT}._compat",
    f"{ROOT}.cli",
    f"{ROOT}.chat.hook",
    f"{ROOT}.chat.renderer",
    f"{ROOT}.chat.render_cli",
    f"{ROOT}.parser.tool_parser",
    f"{ROOT}.parser.reasoning_parser",
    f"{ROOT}.enforcer.logits_processor",
    f"{ROOT}.api.middleware",
}
# Modules that may import register() from the package root.
ENTRY_POINTS = {f"{ROOT}.cli", f"{ROOT}.chat.render_cli"}


def _name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(module: str) -> set[str]:
    """Every module ``module`` imports (``from a import b``: ``a.b`` when
    that is a module, else ``a``), top-level packages for third parties."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            subs = {f"{base}.{a.name}" for a in node.names}
            found = subs & MODULES.keys()
            out.update(found)
            if len(found) < len(subs):
                out.add(base)
    return out


GRAPH = {m: _imports(m) for m in MODULES}


def _internal(module: str) -> set[str]:
    return {i for i in GRAPH[module] if i in MODULES and i != module}


def test_the_graph_is_read() -> None:
    assert f"{ROOT}.enforcer.masks" in _internal(f"{ROOT}.enforcer.logits_processor")
    assert "vllm" in {i.split(".")[0] for i in GRAPH[f"{ROOT}._compat"]}


def test_no_import_cycles() -> None:
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = path[path.index(module) :] + [module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for dep in sorted(_internal(module)):
            visit(dep, [*path, module])
        done.add(module)

    for module in MODULES:
        visit(module, [])


def test_vllm_is_imported_only_by_compat() -> None:
    users = {
        m for m, deps in GRAPH.items() if any(d.split(".")[0] == "vllm" for d in deps)
    }
    assert users == {f"{ROOT}._compat"}


def test_the_pure_core_imports_no_adapter() -> None:
    for module in MODULES.keys() - ADAPTERS:
        assert not _internal(module) & ADAPTERS, module


def test_no_upward_imports() -> None:
    """Only the entry points import the package root (for ``register``)."""
    for module in MODULES.keys() - {ROOT}:
        if ROOT in GRAPH[module]:
            assert module in ENTRY_POINTS, module


def test_components_keep_to_their_rooms() -> None:
    """The parser's and the chat hook's cores know nothing of the Enforcer;
    the Enforcer's core takes only the id format from the parser."""
    for module in MODULES.keys() - ADAPTERS:
        deps = _internal(module)
        if module.startswith((f"{ROOT}.parser.", f"{ROOT}.chat.")):
            assert not {d for d in deps if d.startswith(f"{ROOT}.enforcer")}, module
        if module.startswith(f"{ROOT}.enforcer."):
            assert {d for d in deps if d.startswith(f"{ROOT}.parser.")} <= {
                f"{ROOT}.parser.tool_ids"
            }, module


def test_register_imports_what_usage_md_says() -> None:
    pytest.importorskip("vllm")
    code = (
        "import sys, vllm_kimi_tools as v; v.register(); "
        f"print(' '.join(sorted(m for m in sys.modules if m.startswith('{ROOT}'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert set(out) == {
        ROOT,
        f"{ROOT}._compat",
        f"{ROOT}.chat",
        f"{ROOT}.chat.hook",
        f"{ROOT}.envs",
        f"{ROOT}.names",
    }


def test_the_wheel_holds_the_package_and_nothing_else(tmp_path) -> None:
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(PACKAGE, src / ROOT, ignore=shutil.ignore_patterns("__pycache__"))
    build = (
        "import sys; from setuptools import build_meta; "
        "build_meta.build_wheel(sys.argv[1])"
    )
    subprocess.run(
        [sys.executable, "-c", build, str(tmp_path)],
        cwd=src,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    files = {n for n in zipfile.ZipFile(wheel).namelist() if ".dist-info/" not in n}
    expected = {str(p.relative_to(REPO)) for p in MODULES.values()}
    assert files == expected | {f"{ROOT}/py.typed"}
    archive = zipfile.ZipFile(wheel)
    (meta,) = (n for n in archive.namelist() if n.endswith("entry_points.txt"))
    entry_points = archive.read(meta).decode()
    for target in (
        f"{ROOT}:register",
        f"{ROOT}.enforcer.logits_processor:KimiToolEnforcer",
        f"{ROOT}.cli:main",
    ):
        assert target in entry_points
