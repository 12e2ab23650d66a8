"""A package imports only from packages below it (README, Layout): schemas and io at
the bottom, pipelines above them, the stage packages above pipelines, cli on top.
Stage packages share model code, never each other's stage modules."""

import ast
from pathlib import Path

import vlcurate

PACKAGE = Path(vlcurate.__file__).parent
LEVEL = {"errors": 0, "typed": 0, "schemas": 0, "io": 1, "evalset_store": 2,
         # the core: the stage contract, versions, recipes and the launcher use each other
         "pipelines": 2, "versions": 2, "recipe": 2, "validate": 2, "report": 2,
         # stage packages: none imports another's stage modules
         "download": 3, "extractors": 3, "filters": 3, "interleave": 3, "export": 3,
         "demo": 4, "evalsets": 4, "cli": 5}
CORE = 2
# The one module below the stage packages that names them: the registry of built-in
# stages, imported lazily by the stage contract.
REGISTRY = "pipelines/stages.py"
# Model code a filter (or interleave's MMC4 assignment) may use (not a stage module).
SHARED_MODELS = {"vlcurate.extractors.clip", "vlcurate.extractors.clip_models", "vlcurate.extractors.encoding",
                 "vlcurate.extractors.devices", "vlcurate.extractors.hf_models"}


def top(module: str) -> str:
    return module.split(".")[1] if module.startswith("vlcurate.") else module


def imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vlcurate"):
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("vlcurate")]
    return [m for m in found if m != "vlcurate"]


def test_no_upward_or_sideways_imports():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == REGISTRY or rel == "__init__.py":
            continue
        here = rel.split("/")[0].removesuffix(".py")
        for module in imports(path):
            there = top(module)
            if there == here or there not in LEVEL:
                continue
            if LEVEL[there] > LEVEL[here]:
                problems.append(f"{rel} imports {module} (a higher level)")
            elif LEVEL[there] == LEVEL[here] != CORE and not (here in ("filters", "interleave") and module in SHARED_MODELS):
                problems.append(f"{rel} imports {module} (a package at its own level)")
    assert not problems, "\n".join(problems)
