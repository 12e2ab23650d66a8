"""The build recipe: YAML -> validated, typed config objects, and its hash.

```yaml
input:   {paths: [urls.parquet], url_col: url, caption_col: caption, extra_cols: [kind]}
output:  {root: ./datasets, name: demo, version: v1}
samples_per_shard: 1000
stages:
  - download: {image_size: 256, allow_networks: []}
  - exact_dedup: {}
runner:  {name: local, workers: 2, options: []}
```

Relative paths (input paths, the output root, and the path settings of stages:
``weights`` files and directories, ``download.reuse``) are relative to the recipe
file (:func:`vlcurate.typed.local_path`). The hash covers everything that
decides the output bytes (input, stages, sharding) and not the runner, so the same
recipe on any runner gives the same version.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vlcurate.io.inputs import InputSpec
from vlcurate.io import storage
from vlcurate.pipelines.stage import stage_class
from vlcurate.typed import ConfigError, bounded, check_bounds, convert, from_dict, local_path, relative_to, to_dict

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class OutputSpec:
    root: str = local_path()
    name: str
    version: str
    parent: str | None = None  # path of the version this one derives from

    def __post_init__(self) -> None:
        for what in ("name", "version"):
            value = getattr(self, what)
            if not _NAME_RE.match(value):
                raise ValueError(f"{what} {value!r} must be letters, digits, '_', '-', '.'")

    @property
    def version_dir(self) -> str:
        return storage.join(self.root, self.name, self.version)


@dataclass(frozen=True)
class RunnerSpec:
    """``local`` = Beam's FnApiRunner on this machine (``workers`` processes); any other
    name is a Beam runner (DataflowRunner, DaskRunner, FlinkRunner, PortableRunner, ...)
    configured by the pass-through ``options`` (``--flag=value`` strings)."""

    name: str = "local"
    workers: int = bounded(1, ge=1)
    options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_bounds(self)


REDACTED = "<redacted>"
# Pass-through option names that carry a secret (--s3_secret_access_key, --..._token).
_SECRET_OPTION = re.compile(r"secret|token|password|passwd|credential|private_key|session_key|access_key", re.I)


def redact_options(options: tuple[str, ...]) -> list[str]:
    """Runner options as written to manifests and logs: a secret's value is replaced by
    ``<redacted>`` (the run itself gets the real value)."""
    out: list[str] = []
    for option in options:
        name, eq, _ = option.partition("=")
        if out and out[-1].startswith("-") and "=" not in out[-1] and _SECRET_OPTION.search(out[-1]) \
                and not option.startswith("-"):
            out.append(REDACTED)  # the value of "--secret_name VALUE"
        else:
            out.append(f"{name}={REDACTED}" if eq and name.startswith("-") and _SECRET_OPTION.search(name)
                       else option)
    return out


@dataclass(frozen=True)
class StageSpec:
    """One stage of a recipe: ``kind`` is the registered stage (``exact_dedup``),
    ``name`` this stage's name in the version (its directory, stats files, manifest
    entry and graph labels), so the same kind can run twice."""

    kind: str
    config: Any
    name: str = ""  # default: the kind

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.kind)

    def resolved(self) -> dict[str, Any]:
        settings = to_dict(self.config)
        if self.name != self.kind:
            settings = {"name": self.name, **settings}
        return {self.kind: settings}


@dataclass(frozen=True)
class Recipe:
    input: InputSpec
    output: OutputSpec
    stages: tuple[StageSpec, ...]
    samples_per_shard: int = 1000
    runner: RunnerSpec = field(default_factory=RunnerSpec)

    def resolved(self) -> dict[str, Any]:
        """Every setting, defaults filled in, as plain JSON-ready data."""
        return {
            "input": to_dict(self.input),
            "output": to_dict(self.output),
            "samples_per_shard": self.samples_per_shard,
            "stages": [s.resolved() for s in self.stages],
            "runner": {**to_dict(self.runner), "options": redact_options(self.runner.options)},
        }

    def hash(self) -> str:
        body = self.resolved()
        body.pop("runner")
        # Where inputs and outputs are stored does not change a version; the inputs'
        # contents are checksummed in the manifest instead.
        body["output"].pop("root")
        body["input"].pop("paths")
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


# A stage name becomes a directory and a stats file prefix ("NAME-00000.json").
_STAGE_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_RESERVED_NAMES = {"samples", "stats"}


def _parse_stages(data: Any, base_dir: Path, where: str) -> tuple[StageSpec, ...]:
    """Stages in order. A kind listed again gets ``KIND_2``, ``KIND_3``, ... unless
    its settings give an explicit ``name:``."""
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{where}: expected a non-empty list of stages")
    specs: list[StageSpec] = []
    seen: dict[str, int] = {}  # name -> index of the stage that has it
    for i, item in enumerate(data):
        if not isinstance(item, dict) or len(item) != 1:
            raise ConfigError(f"{where}[{i}]: expected one mapping 'stage_name: {{settings}}', got {item!r}")
        (kind, settings), = item.items()
        try:
            cls = stage_class(kind)
        except KeyError as e:
            raise ConfigError(f"{where}[{i}]: {e.args[0]}") from None
        settings = dict(settings) if isinstance(settings, dict) else settings
        name = settings.pop("name", None) if isinstance(settings, dict) else None
        if name is None:
            count = sum(s.kind == kind for s in specs) + 1
            name = kind if count == 1 else f"{kind}_{count}"
        elif not isinstance(name, str) or not _STAGE_NAME_RE.match(name) or name in _RESERVED_NAMES:
            raise ConfigError(f"{where}[{i}].{kind}.name: must be a letter then letters, digits or '_' "
                              f"(not {', '.join(sorted(_RESERVED_NAMES))}), got {name!r}")
        if name in seen:
            raise ConfigError(f"{where}[{i}].{kind}: stage name {name!r} is already used by {where}[{seen[name]}]; "
                              f"give one of them another 'name:'")
        seen[name] = i
        config = from_dict(cls.Config, relative_to(cls.Config, settings, base_dir), f"{where}[{i}].{kind}")
        # a setting that names another stage is checked against the stages before it
        check_earlier = getattr(config, "check_earlier_stages", None)
        if check_earlier is not None:
            try:
                check_earlier([(s.name, s.kind) for s in specs])
            except ValueError as e:
                raise ConfigError(f"{where}[{i}].{kind}.{e}") from None
        specs.append(StageSpec(kind, config, name))
    if not getattr(stage_class(specs[0].kind), "reads_input", False):
        raise ConfigError(f"{where}[0]: the first stage must read the input list (download), "
                          f"got {specs[0].kind!r}")
    return tuple(specs)


def recipe_from_dict(data: Any, base_dir: Path, where: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    known = {"input", "output", "samples_per_shard", "stages", "runner"}
    for key in data:
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})")
    for key in ("input", "output", "stages"):
        if key not in data:
            raise ConfigError(f"{where}.{key}: required key is missing")
    inp = from_dict(InputSpec, relative_to(InputSpec, data["input"], base_dir), f"{where}.input")
    out = from_dict(OutputSpec, relative_to(OutputSpec, data["output"], base_dir), f"{where}.output")
    sps = convert(data.get("samples_per_shard", 1000), int, f"{where}.samples_per_shard")
    if sps < 1:
        raise ConfigError(f"{where}.samples_per_shard: must be >= 1, got {sps}")
    runner = from_dict(RunnerSpec, data.get("runner"), f"{where}.runner")
    stages = _parse_stages(data["stages"], base_dir, f"{where}.stages")
    for i, spec in enumerate(stages):  # settings that name input columns (e.g. expected hashes)
        check = getattr(stage_class(spec.kind), "input_problem", None)
        if check is not None and (problem := check(spec.config, inp)):
            raise ConfigError(f"{where}.stages[{i}].{spec.name}.{problem}")
    return Recipe(inp, out, stages, sps, runner)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file; every problem is a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"recipe {path}: not valid YAML{at}: {e.problem or e.context}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"recipe {path}: not valid YAML ({first})") from None
    return recipe_from_dict(data, path.parent.resolve(), where=str(path))
