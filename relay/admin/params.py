"""Request parameters: JSON body, form body or query string; names case-insensitive.

The documents spell parameters several ways (``APIKeyID``/``ApiKeyId``, ``SMTPID``/``smtpid``)
and PHP clients send nested values as ``TestResults[SPF]=1``; both are handled here so commands
only ever ask for a name.
"""

from __future__ import annotations

import builtins
import re
from typing import Any

_BRACKET = re.compile(r"^([^\[\]]+)\[([^\[\]]*)\]$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class Params:
    def __init__(self, values: dict[builtins.str, Any] | None = None) -> None:
        self._values: dict[builtins.str, Any] = {}
        for key, value in (values or {}).items():
            self.set(key, value)

    def set(self, key: builtins.str, value: Any) -> None:
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
        if isinstance(value, builtins.dict | list):
            return default
        return builtins.str(value).strip()

    def int(self, *names: builtins.str) -> builtins.int | None:
        """The integer value; None if absent or empty. Raises ValueError if not an integer."""
        value = self.raw(*names)
        if value is None or value == "":
            return None
        if isinstance(value, builtins.bool):
            raise ValueError("not an integer")
        if isinstance(value, builtins.int):
            return value
        if isinstance(value, float) and value.is_integer():
            return builtins.int(value)
        text = builtins.str(value).strip()
        if not re.fullmatch(r"[+-]?\d+", text):
            raise ValueError("not an integer")
        return builtins.int(text)

    def bool(self, *names: builtins.str) -> builtins.bool | None:
        """True/False for the usual spellings; None if absent. Raises ValueError otherwise."""
        value = self.raw(*names)
        if value is None or value == "":
            return None
        if isinstance(value, builtins.bool):
            return value
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
