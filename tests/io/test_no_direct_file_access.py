"""Nothing outside ``vlcurate/io`` touches files by path: every read and write of
version data, inputs, weights and parents goes through the storage layer, so a
version root can be any location the storage layer knows (local disk, an object
store). The few exceptions are listed with their reason."""

import ast
from pathlib import Path

import vlcurate

PACKAGE = Path(vlcurate.__file__).parent

# Calls that reach a file by path.
FORBIDDEN_NAMES = {"open"}
FORBIDDEN_METHODS = {"glob", "rglob", "rename", "exists", "is_file", "is_dir", "unlink", "rmdir",
                     "mkdir", "read_text", "write_text", "read_bytes", "write_bytes", "iterdir", "stat", "chmod",
                     "touch", "walk", "listdir", "remove", "rmtree", "copyfile", "copytree", "move",
                     "read_table", "write_table", "read_schema", "ParquetFile", "ParquetWriter", "read_json",
                     "read_csv", "open_csv"}
OS_FUNCTIONS = {"replace", "rename", "remove", "unlink", "walk", "listdir", "scandir", "rmtree", "copy", "copy2",
                "copyfile", "copytree", "move", "makedirs", "mkdir", "stat", "chmod"}
# Receivers whose methods of those names are not file access.
SAFE_RECEIVERS = {"storage", "Image", "str", "re", "dict", "self", "_DT_RE"}

# file (relative to the package) -> (allowed call names, why)
ALLOWED = {
    "recipe.py": ({"is_file", "read_text"}, "the recipe is a local YAML file named on the command line"),
    "pipelines/progress.py": ({"open", "mkdir"}, "Beam workers' log on the launcher's own disk"),
    "extractors/clip_models.py": ({"glob"}, "lists the package's own model configs"),
    "extractors/clip.py": ({"glob"}, "lists the package's own model configs"),
    "extractors/regions/config.py": ({"open", "is_file", "write_text"},
                                     "region model configs: JSON files of the package or of a user's config"),
}


def _receiver(node: ast.AST) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    if isinstance(node, ast.Call):
        return _receiver(node.func)
    return node.id if isinstance(node, ast.Name) else None


def file_access_calls(source: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in FORBIDDEN_NAMES:
            found.append((node.lineno, func.id))
        elif isinstance(func, ast.Attribute) and func.attr in OS_FUNCTIONS and _receiver(func.value) in {"os", "shutil"}:
            found.append((node.lineno, func.attr))
        elif isinstance(func, ast.Attribute) and func.attr in FORBIDDEN_METHODS | FORBIDDEN_NAMES:
            if func.attr == "open" and _receiver(func.value) not in {"tarfile", "gzip", "io", "os", "builtins"}:
                continue  # Image.open(BytesIO(...)), storage.open_* ...
            if _receiver(func.value) in SAFE_RECEIVERS:
                continue
            found.append((node.lineno, func.attr))
    return found


def test_no_file_access_outside_the_storage_layer():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("io/"):
            continue
        allowed = ALLOWED.get(rel, (set(), ""))[0]
        for line, call in file_access_calls(path.read_text()):
            if call not in allowed:
                problems.append(f"vlcurate/{rel}:{line}: {call}(...) outside vlcurate/io")
    assert not problems, "\n".join(problems)


def test_the_check_catches_direct_access():
    calls = [c for _, c in file_access_calls(
        "import pyarrow.parquet as pq\n"
        "from pathlib import Path\n"
        "t = pq.read_table(p)\n"
        "Path(p).exists()\n"
        "(root / 'stats').glob('*.json')\n"
        "with open(p) as f: pass\n"
        "storage.exists(p)\n"
        "Image.open(io.BytesIO(b))\n")]
    assert calls == ["read_table", "exists", "glob", "open"]
