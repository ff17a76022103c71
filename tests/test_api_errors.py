"""The dispatcher's own answers, built in one place: what a command did not turn into an
ApiError itself (a crash, the database unavailable, a failed transaction with a documented
code), an unknown command; each counted in relay_api_requests_total under its error code."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy.exc import IntegrityError

from relay.admin.dispatcher import COMMANDS, Call, command
from relay.admin.errors import ApiError
from relay.store.db import StorageUnavailable
from tests.conftest import Api

FAILURES: dict[str, BaseException] = {
    "crash": RuntimeError("secret internals: /var/lib/relay password=hunter2"),
    "storage": StorageUnavailable("database is down"),
    "integrity": IntegrityError("INSERT ...", {"key_hash": "abc"}, Exception("duplicate")),
}


@pytest.fixture
def failing_commands() -> Iterator[None]:
    """Test-only commands, in both error styles, raising FAILURES[Kind]; removed afterwards
    (the registry is also docs/api.md's source)."""
    names = []

    async def fail(call: Call) -> dict[str, Any]:
        raise FAILURES[call.params.str("Kind") or ""]

    for style in ("legacy", "v1"):
        name = f"test.fail.{style}"
        command(name, auth="none", style=style)(fail)
        names.append(name)
    command(
        "test.fail.documented",
        auth="none",
        storage_error=ApiError(4, "Transaction failed, nothing was changed"),
    )(fail)
    names.append("test.fail.documented")
    yield
    for name in names:
        del COMMANDS[name]


def counted(command: str, status: int, error_code: int) -> float:
    labels = {"command": command, "status": str(status), "error_code": str(error_code)}
    return REGISTRY.get_sample_value("relay_api_requests_total", labels) or 0.0


@pytest.mark.usefixtures("failing_commands")
async def test_unexpected_errors_are_a_generic_500(api: Api) -> None:
    before = counted("test.fail.legacy", 500, 99996)
    res = await api.call("test.fail.legacy", Kind="crash")
    assert res == {
        "Success": False,
        "ErrorCode": 99996,
        "ErrorText": "Internal error",
        "_status": 500,
    }
    assert counted("test.fail.legacy", 500, 99996) == before + 1
    res = await api.call("test.fail.v1", Kind="crash")
    assert res == {"Errors": [{"Code": 99996, "Message": "Internal error"}], "_status": 500}


@pytest.mark.usefixtures("failing_commands")
async def test_storage_unavailable_is_99996_and_503(api: Api) -> None:
    temporary = "Temporary failure, please try again later"
    res = await api.call("test.fail.legacy", Kind="storage")
    assert res == {"Success": False, "ErrorCode": 99996, "ErrorText": temporary, "_status": 503}
    res = await api.call("test.fail.v1", Kind="storage")
    assert res == {"Errors": [{"Code": 99996, "Message": temporary}], "_status": 503}
    # Any other database error is not "unavailable": a generic 500.
    res = await api.call("test.fail.legacy", Kind="integrity")
    assert (res["ErrorCode"], res["_status"]) == (99996, 500)


@pytest.mark.usefixtures("failing_commands")
async def test_a_commands_documented_storage_error(api: Api) -> None:
    """A command that documents its own code for a failed transaction (replaceapi's 4) gets
    it for any database error, from the dispatcher."""
    expected = {
        "Success": False,
        "ErrorCode": 4,
        "ErrorText": "Transaction failed, nothing was changed",
        "_status": 200,
    }
    before = counted("test.fail.documented", 200, 4)
    for kind in ("storage", "integrity"):
        assert await api.call("test.fail.documented", Kind=kind) == expected
    assert counted("test.fail.documented", 200, 4) == before + 2
    res = await api.call("test.fail.documented", Kind="crash")
    assert (res["ErrorCode"], res["_status"]) == (99996, 500)


async def test_unknown_command(api: Api) -> None:
    before = counted("(unknown)", 200, 99997)
    for name in ("no.such.command", ""):
        res = await api.call(name)
        assert res == {
            "Success": False,
            "ErrorCode": 99997,
            "ErrorText": "Invalid command",
            "_status": 200,
        }
    assert counted("(unknown)", 200, 99997) == before + 2
