"""Small frozen config dataclasses with a strict, JSON-friendly dict round trip."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

T = TypeVar("T", bound="ConfigBase")


def _to_plain(value: Any) -> Any:
    if isinstance(value, ConfigBase):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_to_plain(v) for v in value]
    return value


def _to_frozen(value: Any) -> Any:
    """Lists (from JSON) become tuples so that configs stay hashable and compare equal to the originals."""
    if isinstance(value, list):
        return tuple(_to_frozen(v) for v in value)
    return value


@dataclasses.dataclass(frozen=True)
class ConfigBase:
    """Base of the model configs: ``to_dict`` gives plain JSON types; ``from_dict`` rejects unknown keys.

    Keys missing from the dict take the field defaults (``to_dict`` always writes every key).
    """

    def _freeze(self) -> None:
        """Turn list-valued fields into tuples (call first in ``__post_init__``)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, _to_frozen(value))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {unknown}; known: {sorted(names)}")
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            hint = hints.get(key)
            if isinstance(hint, type) and issubclass(hint, ConfigBase) and isinstance(value, dict):
                kwargs[key] = hint.from_dict(value)
            else:
                kwargs[key] = _to_frozen(value)
        return cls(**kwargs)

    def replace(self: T, **changes: Any) -> T:
        """Copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def check_int_tuple(name: str, value: Any, length: int | None = None, minimum: int = 1) -> None:
    if not isinstance(value, tuple) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{name} must be a tuple of ints, got {value!r}")
    if length is not None and len(value) != length:
        raise ValueError(f"{name} must have {length} entries, got {len(value)}")
    if any(v < minimum for v in value):
        raise ValueError(f"{name} entries must be >= {minimum}, got {value!r}")


def check_bool_tuple(name: str, value: Any, length: int) -> None:
    if not isinstance(value, tuple) or len(value) != length or not all(isinstance(v, bool) for v in value):
        raise ValueError(f"{name} must be a tuple of {length} bools, got {value!r}")
