"""SMTP credentials of a gateway domain (seed 001: emailgateway.*smtp*)."""

from __future__ import annotations

from typing import Any

from relay.admin.commands.domains import domain_id_param
from relay.admin.dispatcher import Call, command, ok
from relay.admin.errors import ApiError
from relay.directory import Topics
from relay.secrets import hash_secret, new_smtp_password, new_smtp_username
from relay.store.repos import credentials as repo
from relay.store.repos import domains as domains_repo


def smtp_host(call: Call) -> str:
    s = call.services.settings
    return s.smtp.advertised_host or s.hostname


def smtp_id_param(call: Call) -> int:
    try:
        smtp_id = call.params.int("SMTPID")
    except ValueError:
        raise ApiError(2, "SMTP credentials not found or access denied") from None
    if smtp_id is None:
        raise ApiError(1, "Missing required parameter (SMTPID)")
    return smtp_id


@command("emailgateway.addsmtp", auth="user")
async def add_smtp(call: Call) -> dict[str, Any]:
    domain_id = domain_id_param(call, 1, 2)
    username, password = new_smtp_username(), new_smtp_password()
    async with call.services.db.write() as conn:
        if await domains_repo.get(conn, domain_id, user_id=call.user_id) is None:
            raise ApiError(2, "Domain not found or access denied")
        smtp_id = await repo.create(
            conn,
            user_id=call.user_id,
            domain_id=domain_id,
            username=username,
            password_hash=hash_secret(password),
        )
    # A failed AUTH may have cached "no such user" for this name.
    await call.services.bus.publish(Topics.CREDENTIAL, username)
    return ok(
        NewSMTPID=smtp_id,
        SMTP={
            "SMTPID": smtp_id,
            "SMTPUsername": username,
            "SMTPPassword": password,
            "SMTPHost": smtp_host(call),
            "SMTPPorts": list(call.services.settings.smtp.advertised_ports),
        },
    )


@command("emailgateway.getsmtps", auth="user")
async def get_smtps(call: Call) -> dict[str, Any]:
    domain_id = domain_id_param(call, 1, 2)
    async with call.services.db.read() as conn:
        if await domains_repo.get(conn, domain_id, user_id=call.user_id) is None:
            raise ApiError(2, "Domain not found or access denied")
        rows = await repo.list_for_domain(conn, domain_id)
    host, ports = smtp_host(call), list(call.services.settings.smtp.advertised_ports)
    return ok(
        SMTPs=[
            {"SMTPID": r.id, "SMTPUsername": r.username, "SMTPHost": host, "SMTPPorts": ports}
            for r in rows
        ]
    )


@command("emailgateway.resetsmtppassword", auth="user")
async def reset_smtp_password(call: Call) -> dict[str, Any]:
    smtp_id = smtp_id_param(call)
    password = new_smtp_password()
    async with call.services.db.write() as conn:
        row = await repo.get_owned(conn, smtp_id, call.user_id)
        if row is None:
            raise ApiError(2, "SMTP credentials not found or access denied")
        await repo.set_password_hash(conn, smtp_id, hash_secret(password))
    # The old password stops working on every node now, not at cache expiry.
    await call.services.bus.publish(Topics.CREDENTIAL, row.username)
    return ok(SMTP={"SMTPID": smtp_id, "SMTPUsername": row.username, "SMTPPassword": password})
