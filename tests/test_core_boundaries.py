"""The privacy core is a closed library: it imports no Dagster, reads no environment, writes none.

`make test` also runs the import-linter contract of pyproject.toml (lint-imports); these tests check the same
boundary at run time and the environment reads import-linter cannot see.
"""

from __future__ import annotations

import ast
import subprocess
import sys

from pipelines.orchestration.settings import PROJECT_ROOT
from tests.conftest import parse_source

CORE_EXCLUDED = ("orchestration", "demo", "bench", "crash")
CORE = sorted(
    path for path in (PROJECT_ROOT / "pipelines").rglob("*.py")
    if path.relative_to(PROJECT_ROOT / "pipelines").parts[0] not in CORE_EXCLUDED and path.name != "definitions.py"
)


def _module(path) -> str:
    return ".".join(path.relative_to(PROJECT_ROOT).with_suffix("").parts).removesuffix(".__init__")


def test_importing_the_whole_core_loads_no_dagster_and_leaves_the_environment_alone():
    modules = [_module(p) for p in CORE]
    script = (
        "import importlib, os, sys\n"
        "before = dict(os.environ)\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "assert not [m for m in sys.modules if m == 'dagster' or m.startswith('dagster.')], 'dagster imported'\n"
        "assert not [m for m in sys.modules if m.startswith('pipelines.orchestration')], 'orchestration imported'\n"
        "assert dict(os.environ) == before, 'the environment was written'\n"
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


def test_no_core_module_reads_the_environment():
    readers = []
    for path in CORE:
        for node in ast.walk(parse_source(path)):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv"):
                readers.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}")
    assert readers == []
