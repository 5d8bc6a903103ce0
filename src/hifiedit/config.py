"""Reading configs (trainers, rectifier, edits): a JSON file plus overrides into a dataclass,
with clear errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

from hifiedit.errors import HifieditError

C = TypeVar("C")


def config_from_dict(cls: type[C], values: dict[str, Any]) -> C:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise HifieditError(
            f"Unknown config keys {unknown}; valid keys: {', '.join(sorted(fields))}."
        )
    coerced = {}
    for key, value in values.items():
        default = fields[key].default
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        if isinstance(default, bool) and not isinstance(value, bool):
            raise HifieditError(f"Config key {key!r} must be true or false, got {value!r}.")
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise HifieditError(f"Config key {key!r} must be a number, got {value!r}.")
            if isinstance(default, int) and not isinstance(default, bool) and value != int(value):
                raise HifieditError(f"Config key {key!r} must be an integer, got {value!r}.")
            value = type(default)(value)
        coerced[key] = value
    config = cls(**coerced)
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


def load_config(cls: type[C], path: Path | None, overrides: dict[str, Any] | None = None) -> C:
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = json.loads(Path(path).read_text())
        except FileNotFoundError as e:
            raise HifieditError(f"Config file {path} does not exist.") from e
        except json.JSONDecodeError as e:
            raise HifieditError(f"Config file {path} is not valid JSON: {e}.") from e
        if not isinstance(values, dict):
            raise HifieditError(f"Config file {path} must hold a JSON object.")
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return config_from_dict(cls, values)


def require(condition: bool, message: str) -> None:
    if not condition:
        raise HifieditError(message)
