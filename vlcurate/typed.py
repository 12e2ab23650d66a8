"""Strict conversion of plain dicts (YAML/JSON) into frozen dataclasses.

Unknown keys and wrong types are errors that name the key path, e.g.
``stages[0].download.image_size: expected int, got str 'big'``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


class FieldError(ValueError):
    """A config's own check (``__post_init__``) failed on one field: :func:`from_dict`
    reports it at that field's key path (``...download.image_size: must be >= 1, got -64``)."""

    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        super().__init__(f"{field}: {problem}")


_BOUNDS = "vlcurate.bounds"


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None) -> Any:
    """A numeric dataclass field with a range, checked by :func:`check_bounds`."""
    return dataclasses.field(default=default, metadata={_BOUNDS: (ge, gt, le)})


def check_bounds(obj: Any) -> None:
    """FieldError for the first :func:`bounded` field of ``obj`` out of its range
    (call from ``__post_init__``)."""
    for f in dataclasses.fields(obj):
        if _BOUNDS not in f.metadata:
            continue
        ge, gt, le = f.metadata[_BOUNDS]
        value = getattr(obj, f.name)
        if value is None:
            continue
        for ok, rule in ((ge is None or value >= ge, f">= {ge}"), (gt is None or value > gt, f"> {gt}"),
                         (le is None or value <= le, f"<= {le}")):
            if not ok:
                raise FieldError(f.name, f"must be {rule}, got {value!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def convert(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` to type annotation ``tp`` or raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: expected one of {', '.join(map(repr, args))}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        item = args[0] if args else Any
        items = [convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        kt, vt = args or (Any, Any)
        return {convert(k, kt, where): convert(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if value in ("inf", "infinity"):  # YAML has no literal for infinity
            return float("inf")
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp in (str, bool):
        if isinstance(value, tp):
            return value
    else:
        raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


_LOCAL_PATH = "vlcurate.local_path"


def _any_local(value: str) -> tuple[str, str] | None:
    return None if "://" in value else ("", value)


def local_path(default: Any = dataclasses.MISSING, *,
               split: Callable[[str], tuple[str, str] | None] = _any_local) -> Any:
    """A dataclass field holding a local path (or a list of them): where a config is
    read from a file, a relative one is relative to that file (:func:`relative_to`).
    ``split(value)`` gives ``(prefix, path)`` for a value that is a local path, None
    for one that is not (by default: a URL such as ``gs://...``)."""
    return dataclasses.field(default=default, metadata={_LOCAL_PATH: split})


def relative_to(cls: type, data: Any, base_dir: Path) -> Any:
    """``data`` (the plain mapping :func:`from_dict` will get for ``cls``) with the
    relative paths of its :func:`local_path` fields made absolute under ``base_dir``."""
    if not isinstance(data, dict) or not dataclasses.is_dataclass(cls):
        return data

    def absolute(value: Any, split: Callable[[str], tuple[str, str] | None]) -> Any:
        parts = split(value) if isinstance(value, str) else None
        if parts is None:
            return value
        prefix, path = parts
        return prefix + str((base_dir / Path(path).expanduser()).resolve())  # an absolute path stays itself

    out = dict(data)
    for f in dataclasses.fields(cls):
        split = f.metadata.get(_LOCAL_PATH)
        if split is None or f.name not in out:
            continue
        value = out[f.name]
        out[f.name] = [absolute(v, split) for v in value] if isinstance(value, list) else absolute(value, split)
    return out


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = convert(data[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}.{name}: required key is missing")
    try:
        return cls(**kwargs)
    except FieldError as e:
        raise ConfigError(f"{where}.{e.field}: {e.problem}") from None
    except (TypeError, ValueError) as e:  # __post_init__ checks
        raise ConfigError(f"{where}: {e}") from None


def to_dict(obj: Any) -> Any:
    """The plain, JSON-ready form of a (nested) dataclass, tuples as lists."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, float) and obj == float("inf"):
        return "inf"
    return obj
