"""A command prints no third-party noise. Importing Beam warns on the root logger that
its BigQuery client is missing (``apitools not found``); ``vlcurate.pipelines.beam``
imports Beam with that warning filtered, so every other module takes Beam from there."""

import ast
import subprocess
import sys
from pathlib import Path

import vlcurate

PACKAGE = Path(vlcurate.__file__).parent


def test_only_pipelines_beam_imports_beam():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "apache_beam" or n.startswith("apache_beam.") for n in names):
                found.append(path.relative_to(PACKAGE).as_posix())
    assert set(found) == {"pipelines/beam.py"}


def test_the_beam_modules_import_silently():
    """Each module that runs a Beam job, imported first in a fresh process."""
    for module in ("vlcurate.export.training", "vlcurate.pipelines.build"):
        out = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0 and out.stdout == "" and out.stderr == "", (module, out.stderr[-2000:])
