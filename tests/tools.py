"""Debian tools some tests drive: required in CI (.ci/run installs them), skipped elsewhere
with a message saying how to install them."""

from __future__ import annotations

import pytest

from tests.conftest import IN_CI


def need(what: str, ok: bool, how: str) -> None:
    """Fail in CI, skip with a message elsewhere, when ``ok`` is false."""
    if ok:
        return
    message = f"{what} missing: {how}"
    if IN_CI:
        pytest.fail(f"{message} (required in CI)")
    pytest.skip(message)
