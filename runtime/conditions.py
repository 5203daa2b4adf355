"""Condition vectors: validation and normalisation of the numeric conditions a model is conditioned on.

A model stores a :class:`ConditionSpec` with its weights: which conditions it takes (in column order), the
range that maps each to [0, 1], and the range each one covered in training. Asking for a value outside the
training range works but warns (:class:`ExtrapolationWarning`): extrapolation was never validated.

Numpy-only (no torch) so that the torch-free runtime can use it.
"""

from __future__ import annotations

import math
import numbers
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# The one list of conditions a model can take, each with its normalisation range on the synthetic route (years,
# 0 = F / 1 = M, mL; a manifest-trained model normalises by the observed range instead).
CONDITION_RANGES = {"age": (20.0, 90.0), "sex": (0.0, 1.0), "ventricle_volume_ml": (0.0, 120.0)}
KNOWN_CONDITIONS = tuple(CONDITION_RANGES)
# Sex is encoded 0 = female, 1 = male.
_SEX_WORDS = {"f": 0.0, "female": 0.0, "0": 0.0, "m": 1.0, "male": 1.0, "1": 1.0}
_MAX_AGE_LIST = 10_000


# Values no person can have: refused before any model is opened (values merely outside the trained range warn).
AGE_LIMIT_YEARS = 125.0  # above the oldest documented human age (122)
POSSIBLE = {"age": (0.0, AGE_LIMIT_YEARS), "ventricle_volume_ml": (0.0, math.inf)}
_UNITS = {"age": "years", "ventricle_volume_ml": "mL"}


class ExtrapolationWarning(UserWarning):
    """A condition value lies outside the range the model saw in training (the result was never validated)."""


def _fmt(x: float) -> str:
    return f"{x:g}"


def _pair(value: Any, what: str, *, strict_order: bool) -> tuple[float, float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{what} must be a pair (lo, hi), got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
            raise ValueError(f"{what} must hold two finite numbers, got {value!r}")
        out.append(float(v))
    lo, hi = out
    if (strict_order and not lo < hi) or (not strict_order and not lo <= hi):
        op = "<" if strict_order else "<="
        raise ValueError(f"{what} must satisfy lo {op} hi, got {value!r}")
    return lo, hi


def parse_sex(value: Any) -> float:
    """0.0 (female) or 1.0 (male) from F / M / female / male (any case) or 0 / 1; ValueError otherwise.

    The one sex parser: conditions, manifests and ``diffdef-prepare``'s participants tables all use it.
    """
    number = math.nan
    if isinstance(value, str):
        key = value.strip().lower()
        if key in _SEX_WORDS:
            return _SEX_WORDS[key]
        try:
            number = float(key)
        except ValueError:
            pass
    elif isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        number = float(value)
    if number in (0.0, 1.0):
        return number
    raise ValueError(f"{value!r} is not a sex; use F/M, female/male or 0/1 (0 = female, 1 = male)")


def _to_number(name: str, value: Any) -> float:
    """One raw condition value -> float, or a ValueError naming the condition and the value."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if name == "sex" and isinstance(value, str):
        try:
            return parse_sex(value)
        except ValueError:
            raise ValueError(f"condition 'sex': {value!r} is not one of F, M, female, male, 0, 1") from None
    if isinstance(value, (bool, np.bool_)) or value is None:
        raise ValueError(f"condition {name!r}: {value!r} is not a number")
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ValueError(f"condition {name!r}: {value!r} is not a number") from None
    elif isinstance(value, numbers.Real):
        number = float(value)
    else:
        raise ValueError(f"condition {name!r}: {value!r} is not a number")
    if not math.isfinite(number):
        raise ValueError(f"condition {name!r}: {value!r} is not a finite number")
    if name == "sex" and number not in (0.0, 1.0):
        raise ValueError(f"condition 'sex': {value!r} must be 0 (F) or 1 (M), or F/M/female/male")
    return number


def check_possible(name: str, values: Sequence[float]) -> None:
    """ValueError naming the first value of condition ``name`` that no subject can have (negative age, age
    above :data:`AGE_LIMIT_YEARS`, negative ventricle volume); ``sex`` must parse (:func:`parse_sex`)."""
    for value in values:
        if name == "sex":
            try:
                parse_sex(value)
            except ValueError:
                raise ValueError(f"{value!r} is not a sex; use F or M (female/male, 0/1)") from None
            continue
        if name not in POSSIBLE or isinstance(value, bool) or not isinstance(value, numbers.Real):
            continue  # not a number: normalise() names it
        lo, hi = POSSIBLE[name]
        if not lo <= float(value) <= hi:
            bound = f"between {_fmt(lo)} and {_fmt(hi)}" if math.isfinite(hi) else f"at least {_fmt(lo)}"
            raise ValueError(f"{name} {_fmt(float(value))} {_UNITS[name]} is impossible: it must be {bound} "
                             f"{_UNITS[name]}")


def _is_sequence(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.ndim > 0
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


@dataclass(frozen=True)
class ConditionSpec:
    """The conditions of a model.

    Attributes:
        names: condition names in column order, a subset of ``age``, ``sex``, ``ventricle_volume_ml``.
        ranges: name -> (lo, hi) mapped linearly to [0, 1] (``(v - lo) / (hi - lo)``); lo < hi.
        trained: name -> (min, max) of the values seen in training (defaults to ``ranges``); a value outside
            it warns with :class:`ExtrapolationWarning`.

    Sex is encoded 0 = female, 1 = male; it accepts F/M/female/male (any case) or 0/1.
    """

    names: tuple[str, ...]
    ranges: dict[str, tuple[float, float]]
    trained: dict[str, tuple[float, float]] = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        names = self.names
        if isinstance(names, str) or not isinstance(names, Sequence) or len(names) == 0:
            raise ValueError(f"ConditionSpec.names must be a non-empty sequence of names, got {names!r}")
        names = tuple(names)
        for name in names:
            if name not in KNOWN_CONDITIONS:
                raise ValueError(f"ConditionSpec.names: unknown condition {name!r}; known: {list(KNOWN_CONDITIONS)}")
        if len(set(names)) != len(names):
            raise ValueError(f"ConditionSpec.names has duplicates: {list(names)}")
        object.__setattr__(self, "names", names)
        trained = self.ranges if self.trained is None else self.trained
        for attr, table, strict in (("ranges", self.ranges, True), ("trained", trained, False)):
            if not isinstance(table, Mapping):
                raise ValueError(f"ConditionSpec.{attr} must be a dict name -> (lo, hi), got {table!r}")
            extra = sorted(set(table) - set(names))
            missing = [n for n in names if n not in table]
            if extra or missing:
                raise ValueError(
                    f"ConditionSpec.{attr} must have exactly the keys {list(names)}"
                    + (f"; unknown: {extra}" if extra else "")
                    + (f"; missing: {missing}" if missing else "")
                )
            clean = {n: _pair(table[n], f"ConditionSpec.{attr}[{n!r}]", strict_order=strict) for n in names}
            object.__setattr__(self, attr, clean)

    @property
    def num_conditions(self) -> int:
        """K, the width of a condition vector."""
        return len(self.names)

    # ------------------------------------------------------------------------------------------- values
    def _columns(self, values: Any) -> dict[str, list[Any]]:
        """Raw values (dict or list of dicts) -> name -> list of N raw values, with names checked."""
        if isinstance(values, Mapping):
            table = dict(values)
            self._check_names(table)
            lengths = {n: len(v) for n, v in table.items() if _is_sequence(v)}
            if len(set(lengths.values())) > 1:
                raise ValueError(f"condition sequences must have equal lengths, got {lengths}")
            n = next(iter(lengths.values()), 1)
            if n == 0:
                raise ValueError(f"condition sequences are empty: {sorted(lengths)}")
            return {
                name: (list(table[name]) if name in lengths else [table[name]] * n)
                for name in self.names
            }
        if _is_sequence(values) and not isinstance(values, np.ndarray):
            rows = list(values)
            if not rows:
                raise ValueError("no condition values given (empty list)")
            columns: dict[str, list[Any]] = {name: [] for name in self.names}
            for i, row in enumerate(rows):
                if not isinstance(row, Mapping):
                    raise ValueError(f"condition list item {i} must be a dict name -> value, got {row!r}")
                self._check_names(row)
                for name in self.names:
                    if _is_sequence(row[name]):
                        raise ValueError(
                            f"condition {name!r} in list item {i} must be a single value, got {row[name]!r}"
                        )
                    columns[name].append(row[name])
            return columns
        raise ValueError(
            f"condition values must be a dict name -> value(s) or a list of such dicts, got {type(values).__name__}"
        )

    def _check_names(self, table: Mapping[str, Any]) -> None:
        for name in table:
            if name not in KNOWN_CONDITIONS:
                raise ValueError(f"unknown condition {name!r}; known: {list(KNOWN_CONDITIONS)}")
            if name not in self.names:
                raise ValueError(f"condition {name!r} is not used by this model (it takes {list(self.names)})")
        missing = [n for n in self.names if n not in table]
        if missing:
            raise ValueError(f"missing condition(s) {missing}; this model takes {list(self.names)}")

    def raw_values(self, values: Any) -> np.ndarray:
        """Validated raw values (sex as 0/1), float64 ``(N, K)``, without the extrapolation check."""
        columns = self._columns(values)
        return np.array(
            [[_to_number(name, v) for v in columns[name]] for name in self.names], dtype=np.float64
        ).T.reshape(-1, self.num_conditions)

    def normalise(self, values: Any) -> np.ndarray:
        """Condition values -> float32 ``(N, K)`` in [0, 1] (outside it when outside ``ranges``).

        ``values``: a dict name -> scalar or sequence (scalars broadcast; sequences of equal length N), or a list
        of dicts name -> scalar. Every condition of ``names`` must be given, and no other. Raises ValueError
        naming the condition and value for a missing/unknown condition, a non-number or a NaN/inf. Values
        outside ``trained`` give one :class:`ExtrapolationWarning` per call naming them.
        """
        raw = self.raw_values(values)
        problems = []
        for k, name in enumerate(self.names):
            lo, hi = self.trained[name]
            # Tolerate float32 round-trip noise (a denormalised 80 may come back as 80.000004).
            tol = 1e-6 * (self.ranges[name][1] - self.ranges[name][0])
            outside = raw[(raw[:, k] < lo - tol) | (raw[:, k] > hi + tol), k]
            if outside.size:
                unique = np.unique(outside)
                shown = ", ".join(_fmt(v) for v in unique[:5]) + (", ..." if unique.size > 5 else "")
                problems.append(f"{name}={shown} outside the trained range [{_fmt(lo)}, {_fmt(hi)}]")
        if problems:
            warnings.warn(
                "condition value(s) outside the training range (extrapolation, never validated): "
                + "; ".join(problems),
                ExtrapolationWarning,
                stacklevel=2,
            )
        lo = np.array([self.ranges[n][0] for n in self.names])
        hi = np.array([self.ranges[n][1] for n in self.names])
        return ((raw - lo) / (hi - lo)).astype(np.float32)

    def denormalise(self, normalised: Any) -> dict[str, np.ndarray]:
        """Inverse of :meth:`normalise`: ``(N, K)`` or ``(K,)`` -> dict name -> float64 ``(N,)`` (sex as 0/1)."""
        arr = np.asarray(normalised, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.num_conditions:
            raise ValueError(
                f"normalised conditions must be (N, {self.num_conditions}) for {list(self.names)}, got {arr.shape}"
            )
        return {
            name: self.ranges[name][0] + arr[:, k] * (self.ranges[name][1] - self.ranges[name][0])
            for k, name in enumerate(self.names)
        }

    # ------------------------------------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict: ``{"names": [...], "ranges": {name: [lo, hi]}, "trained": {name: [min, max]}}``."""
        return {
            "names": list(self.names),
            "ranges": {n: list(self.ranges[n]) for n in self.names},
            "trained": {n: list(self.trained[n]) for n in self.names},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ConditionSpec":
        """Inverse of :meth:`to_dict`, validated (unknown keys and bad values are errors naming them)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"ConditionSpec.from_dict expects a dict, got {type(data).__name__}")
        unknown = sorted(set(data) - {"names", "ranges", "trained"})
        if unknown:
            raise ValueError(f"ConditionSpec: unknown field(s) {unknown}; known: ['names', 'ranges', 'trained']")
        missing = [k for k in ("names", "ranges") if k not in data]
        if missing:
            raise ValueError(f"ConditionSpec: missing field(s) {missing}")
        return cls(names=tuple(data["names"]), ranges=dict(data["ranges"]), trained=data.get("trained"))


# ------------------------------------------------------------------------------------------- CLI parsing
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_ITEM = re.compile(rf"^\s*({_NUMBER})\s*(?::\s*({_NUMBER})\s*(?::\s*({_NUMBER})\s*)?)?$")


def parse_age_list(text: str) -> list[float]:
    """Ages from a CLI string: ``"70"``, ``"50,60,70"``, ``"50:80:5"`` (start:end:step, end included when it
    lands on the grid -> 50, 55, ..., 80; otherwise the last value is the largest grid value <= end),
    ``"50:80"`` (step 1), or comma-separated mixtures (``"50:60:5,75"``). Raises ValueError naming the text."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"age list {text!r} is empty; use e.g. '70', '50,60,70' or '50:80:5'")
    ages: list[float] = []
    for item in text.split(","):
        match = _ITEM.match(item)
        if not match:
            raise ValueError(
                f"cannot parse age list {text!r} (at {item.strip()!r}); use e.g. '70', '50,60,70' or '50:80:5'"
            )
        start_s, end_s, step_s = match.groups()
        start = float(start_s)
        if end_s is None:
            ages.append(start)
            continue
        end = float(end_s)
        step = float(step_s) if step_s is not None else 1.0
        if step <= 0:
            raise ValueError(f"age list {text!r}: step in {item.strip()!r} must be > 0")
        if end < start:
            raise ValueError(f"age list {text!r}: range {item.strip()!r} ends before it starts")
        count = math.floor((end - start) / step + 1e-9) + 1
        if len(ages) + count > _MAX_AGE_LIST:
            raise ValueError(f"age list {text!r} has more than {_MAX_AGE_LIST} values")
        ages.extend(round(start + i * step, 9) for i in range(count))
    for age in ages:
        if not math.isfinite(age):
            raise ValueError(f"age list {text!r} holds a non-finite value")
    return ages
