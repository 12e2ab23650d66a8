from dataclasses import dataclass, field

import pytest

from vlcurate.typed import ConfigError, from_dict, to_dict


@dataclass(frozen=True)
class Inner:
    size: int = 3
    ratio: float = float("inf")


@dataclass(frozen=True)
class Outer:
    name: str
    tags: tuple[str, ...] = ()
    inner: Inner = field(default_factory=Inner)
    mode: str | None = None


def test_builds_nested_and_fills_defaults():
    cfg = from_dict(Outer, {"name": "x", "tags": ["a", "b"], "inner": {"size": 5}})
    assert cfg == Outer("x", ("a", "b"), Inner(5))
    assert from_dict(Outer, to_dict(cfg)) == cfg  # inf survives the JSON form


@pytest.mark.parametrize(
    "data, message",
    [
        ({"name": "x", "colour": 1}, "cfg.colour: unknown key"),
        ({"name": 3}, "cfg.name: expected str, got int 3"),
        ({"name": "x", "inner": {"size": "big"}}, "cfg.inner.size: expected int, got str 'big'"),
        ({"name": "x", "inner": {"size": True}}, "cfg.inner.size: expected int, got bool True"),
        ({"name": "x", "tags": "a"}, "cfg.tags: expected a list"),
        ({}, "cfg.name: required key is missing"),
    ],
)
def test_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        from_dict(Outer, data, "cfg")
