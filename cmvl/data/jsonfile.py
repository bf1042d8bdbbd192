"""Loading of official annotation JSON files, checked against a schema per file kind.

A file kind's layout is a pyarrow type (a struct for an object, a list for an array); a field that is not
nullable is a required key. `load_json` checks every value of the document against that type in one pass per key
(lists are flattened, so a million questions cost a few comprehensions, not a million calls), and a mistake ends in
one line that names the file, the record (`questions[51]`), the key and what was expected. Checked values then
convert to Arrow (`records`) without surprises: pyarrow alone would turn a missing key into null and 1.5 into 1.
"""

from __future__ import annotations

import bisect
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from cmvl.errors import DataError


def required(name: str, type_: pa.DataType) -> pa.Field:
    """A key every record must have (not null)."""
    return pa.field(name, type_, nullable=False)


def optional(name: str, type_: pa.DataType) -> pa.Field:
    """A key a record may leave out or set to null."""
    return pa.field(name, type_, nullable=True)


def load_json(path: str | Path, *, what: str, layout: pa.DataType | None = None) -> Any:
    """The parsed document of `path`; with `layout`, checked against it (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{what} cannot be read as UTF-8 text: {path} ({err})") from None
    if not text.strip():
        raise DataError(f"{what} is empty: {path}")
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise DataError(f"{what} is not valid JSON: {path} ({err})") from None
    if layout is not None:
        check_layout(document, layout, path=path)
    return document


def records(values: list, struct: pa.StructType) -> pa.StructArray:
    """Checked records (`check_layout`) as one Arrow array; keys outside `struct` are left out."""
    return pa.array(values, type=struct)


def check_layout(document: Any, layout: pa.DataType, *, path: str | Path) -> None:
    problem = _first_problem([document], layout)
    if problem is not None:
        raise DataError(f"{path}: {problem.describe()}")


def require_unique(ids: np.ndarray, *, path: str | Path, key: str) -> None:
    """Refuse repeated ids in a file: a join by id would attach a row to the wrong partner, and results keyed by
    id would be written twice."""
    values, counts = np.unique(ids, return_counts=True)
    repeated = counts > 1
    if repeated.any():
        first = int(np.flatnonzero(repeated)[0])
        raise DataError(
            f"{path}: {key} {values[first]} occurs {counts[first]} times ({int(repeated.sum())} {key} values are "
            f"repeated, {int(counts[repeated].sum() - repeated.sum())} extra rows); each {key} must be unique"
        )


class Problem(NamedTuple):
    index: int  # the position of the offending value in the list being checked
    where: tuple[str, ...]  # the steps below that value: ("[51]", ".question_id")
    expected: str
    found: str  # "missing", or the offending value

    def describe(self) -> str:
        if self.found == "missing":
            *record, key = self.where
            record_text = "".join(record).lstrip(".") or "the document"
            return f"{record_text} has no key '{key.lstrip('.')}' (expected {self.expected})"
        where = "".join(self.where).lstrip(".") or "the document"
        return f"{where} is {self.found}, expected {self.expected}"

    def below(self, step: str, index: int) -> Problem:
        return self._replace(index=index, where=(step, *self.where))


def _describe(type_: pa.DataType) -> str:
    if pa.types.is_integer(type_):
        return "an integer"
    if pa.types.is_floating(type_):
        return "a number"
    if pa.types.is_string(type_):
        return "a string"
    if pa.types.is_boolean(type_):
        return "true or false"
    if pa.types.is_list(type_) or pa.types.is_fixed_size_list(type_):
        return "a list" + (f" of {type_.list_size}" if pa.types.is_fixed_size_list(type_) else "")
    return "an object"


def _accepted(type_: pa.DataType) -> frozenset[type]:
    """The Python types of a non-null JSON value of `type_`: exact, since `bool` is an `int` and ids must not be
    floats."""
    if pa.types.is_integer(type_):
        return frozenset({int})
    if pa.types.is_floating(type_):
        return frozenset({int, float})
    if pa.types.is_string(type_):
        return frozenset({str})
    if pa.types.is_boolean(type_):
        return frozenset({bool})
    if pa.types.is_list(type_) or pa.types.is_fixed_size_list(type_):
        return frozenset({list})
    return frozenset({dict})  # a struct (fixed keys) or a map (any keys, one value type)


def _shown(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "a list"
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _first_problem(values: Sequence, type_: pa.DataType) -> Problem | None:
    """The first value (by position) of `values` that does not match `type_` (nulls are checked by the caller).
    The common case, nothing wrong, is decided by the set of value types (C speed); only a mistake is located."""
    accepted = _accepted(type_)
    size = type_.list_size if pa.types.is_fixed_size_list(type_) else None
    wrong_type = not set(map(type, values)) <= accepted | {type(None)}
    wrong_size = size is not None and not wrong_type and {len(v) for v in values if v is not None} - {size}
    bad = None
    if wrong_type or wrong_size:
        bad = next(
            i for i, v in enumerate(values) if v is not None and (type(v) not in accepted or size and len(v) != size)
        )
    found = [] if bad is None else [Problem(bad, (), _describe(type_), _shown(values[bad]))]
    if pa.types.is_struct(type_):
        found += _struct_problems(values, type_, limit=len(values) if bad is None else bad)
    elif pa.types.is_list(type_) or pa.types.is_fixed_size_list(type_):
        found += _list_problems(values, type_.value_type, limit=len(values) if bad is None else bad)
    elif pa.types.is_map(type_):
        found += _list_problems(values, type_.item_type, limit=len(values) if bad is None else bad, keyed=True)
    return min(found, key=lambda p: p.index, default=None)


def _struct_problems(values: Sequence, struct: pa.StructType, *, limit: int) -> list[Problem]:
    dicts = values[:limit] if limit < len(values) else values
    has_nulls = None in dicts
    found = []
    for field in struct:
        if has_nulls:
            column = [v.get(field.name) if v is not None else None for v in dicts]
        else:
            column = list(map(dict.get, dicts, itertools.repeat(field.name)))
        null = None
        if not field.nullable and None in column:
            null = next((i for i, v in enumerate(column) if v is None and dicts[i] is not None), None)
        if null is not None:
            state = "missing" if field.name not in dicts[null] else "null"
            found.append(Problem(null, (f".{field.name}",), _describe(field.type), state))
        nested = _first_problem(column, field.type)
        if nested is not None:
            found.append(nested.below(f".{field.name}", nested.index))
    return found


def _list_problems(values: Sequence, item: pa.DataType, *, limit: int, keyed: bool = False) -> list[Problem]:
    """The first problem among the items of lists (or the values of maps, `keyed`), as a step below its owner."""
    owners = [v if v is not None else () for v in itertools.islice(values, limit)]
    flat = [x for v in owners for x in (v.values() if keyed else v)]
    problems = [p for p in [_first_problem(flat, item)] if p is not None]
    if None in flat:  # list items are never optional
        problems.append(Problem(flat.index(None), (), _describe(item), "null"))
    if not problems:
        return []
    problem = min(problems, key=lambda p: p.index)
    starts = list(itertools.accumulate((len(v) for v in owners), initial=0))
    owner = bisect.bisect_right(starts, problem.index) - 1
    position = problem.index - starts[owner]
    step = f".{list(owners[owner])[position]}" if keyed else f"[{position}]"
    return [problem.below(step, owner)]
