"""Request parameters: JSON body, form body or query string; names case-insensitive.

The documents spell parameters several ways (``APIKeyID``/``ApiKeyId``, ``SMTPID``/``smtpid``)
and PHP clients send nested values as ``TestResults[SPF]=1``; both are handled here so commands
only ever ask for a name.

This is also where hostile values stop, once for every command:

- A value that is not usable data at all becomes ``MALFORMED``, which every accessor treats
  like a value of the wrong type (``str`` gives the default, ``int``/``bool`` raise
  ValueError, ``dict`` gives None), so each command answers it with its own code for an
  invalid or missing parameter. Malformed are: text with a lone surrogate (JSON's
  ``"\\ud800"``: not Unicode, it can be neither stored nor answered; RFC 8259 8.2) or a NUL
  (PostgreSQL's text cannot hold it, no field of the documents has one), a non-finite
  number (``NaN``, ``Infinity``: not JSON, RFC 8259 6), and nesting deeper than
  ``MAX_DEPTH``. A value is malformed as a whole when anything inside it is.
- ``int`` accepts only what the database can store: ids, counts and limits are INTEGER
  columns (signed 32 bits on PostgreSQL), so a larger or smaller number (or ``1e300``) is
  not a whole number of that parameter either.
"""

from __future__ import annotations

import builtins
import math
import re
from typing import Any, Final

_BRACKET = re.compile(r"^([^\[\]]+)\[([^\[\]]*)\]$")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

# The range of the database's INTEGER (PostgreSQL's is the narrower: 32 bits, signed).
INT_MIN: Final = -(2**31)
INT_MAX: Final = 2**31 - 1
# Deepest nesting any parameter of the documents has is 3 (Attachments: a list of objects).
MAX_DEPTH: Final = 16


class Malformed:
    """The value of a parameter that is not usable data (see the module's docstring)."""

    def __repr__(self) -> builtins.str:
        return "MALFORMED"


MALFORMED: Final = Malformed()


def _bad_scalar(value: Any) -> builtins.bool:
    if isinstance(value, builtins.str):
        return "\x00" in value or (not value.isascii() and _SURROGATE.search(value) is not None)
    if isinstance(value, float):
        return not math.isfinite(value)
    return isinstance(value, Malformed)


def clean(value: Any) -> Any:
    """``value``, or MALFORMED if anything in it is not usable data. Iterative: a value
    nested deeper than Python's recursion limit must not be walked recursively."""
    stack: list[tuple[Any, builtins.int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, builtins.dict):
            if any(_bad_scalar(key) for key in item):
                return MALFORMED
            item = item.values()
        elif not isinstance(item, list):
            if _bad_scalar(item):
                return MALFORMED
            continue
        if depth >= MAX_DEPTH:
            return MALFORMED
        stack.extend((child, depth + 1) for child in item)
    return value


def to_int(value: Any, lo: builtins.int = INT_MIN, hi: builtins.int = INT_MAX) -> builtins.int:
    """A whole number from ``lo`` to ``hi`` given as a number or as decimal text; raises
    ValueError for anything else (booleans, fractions, exponents, other digits than 0-9)."""
    number: builtins.int
    if isinstance(value, builtins.bool | Malformed):
        raise ValueError("not an integer")
    if isinstance(value, builtins.int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = builtins.int(value)
    else:
        text = builtins.str(value).strip()
        # Anything longer is out of range; int() of a huge text costs quadratic time.
        if len(text) > 24 or not _INTEGER.fullmatch(text):
            raise ValueError("not an integer")
        number = builtins.int(text)
    if not lo <= number <= hi:
        raise ValueError("integer out of range")
    return number


class Params:
    def __init__(self, values: dict[builtins.str, Any] | None = None) -> None:
        self._values: dict[builtins.str, Any] = {}
        for key, value in (values or {}).items():
            self.set(key, value)

    def set(self, key: builtins.str, value: Any) -> None:
        if _bad_scalar(key):
            return  # no parameter has such a name
        value = clean(value)
        m = _BRACKET.match(key)
        if m:
            outer = m.group(1).lower()
            inner = m.group(2)
            container = self._values.get(outer)
            if not isinstance(container, builtins.dict):
                container = {}
                self._values[outer] = container
            container[inner] = value
            return
        self._values[key.lower()] = value

    def update(self, values: dict[builtins.str, Any]) -> None:
        for key, value in values.items():
            self.set(str(key), value)

    def raw(self, *names: builtins.str) -> Any:
        for name in names:
            if name.lower() in self._values:
                return self._values[name.lower()]
        return None

    def has(self, *names: builtins.str) -> builtins.bool:
        return any(name.lower() in self._values for name in names)

    def present(self, *names: builtins.str) -> builtins.bool:
        """Given and not empty (PHP's ``!empty()``, the documents' 'missing' test)."""
        value = self.raw(*names)
        return value is not None and value != "" and value != [] and value != {}

    def str(self, *names: builtins.str, default: builtins.str | None = None) -> builtins.str | None:
        value = self.raw(*names)
        if value is None:
            return default
        if isinstance(value, builtins.bool):
            return "1" if value else "0"
        if isinstance(value, builtins.dict | list | Malformed):
            return default
        return builtins.str(value).strip()

    def int(
        self, *names: builtins.str, lo: builtins.int = INT_MIN, hi: builtins.int = INT_MAX
    ) -> builtins.int | None:
        """The integer value; None if absent or empty. Raises ValueError if it is not a whole
        number from ``lo`` to ``hi`` (by default what an INTEGER column holds)."""
        value = self.raw(*names)
        if value is None or value == "":
            return None
        return to_int(value, lo, hi)

    def int_list(self, *names: builtins.str, lo: builtins.int = 0) -> list[builtins.int]:
        """A list of ids: a JSON array or comma-separated text; entries that are not whole
        numbers from ``lo`` (ids are never negative) to INT_MAX are left out."""
        value = self.raw(*names)
        items: list[Any] = value if isinstance(value, list) else (self.str(*names) or "").split(",")
        out = []
        for item in items:
            try:
                out.append(to_int(item, lo))
            except ValueError:
                continue
        return out

    def bool(self, *names: builtins.str) -> builtins.bool | None:
        """True/False for the usual spellings; None if absent. Raises ValueError otherwise."""
        value = self.raw(*names)
        if value is None or value == "":
            return None
        if isinstance(value, builtins.bool):
            return value
        if isinstance(value, Malformed):
            raise ValueError("not a boolean")
        if isinstance(value, builtins.int | float):
            if value in (0, 1):
                return builtins.bool(value)
            raise ValueError("not a boolean")
        text = builtins.str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError("not a boolean")

    def truthy(self, *names: builtins.str) -> builtins.bool:
        """Lenient: the documents' 'truthy (1, '1', 'true', 'yes', true)'; anything else False."""
        try:
            return builtins.bool(self.bool(*names))
        except ValueError:
            return False

    def dict(self, *names: builtins.str) -> builtins.dict[builtins.str, Any] | None:
        value = self.raw(*names)
        return value if isinstance(value, builtins.dict) else None

    def as_dict(self) -> builtins.dict[builtins.str, Any]:
        return builtins.dict(self._values)
