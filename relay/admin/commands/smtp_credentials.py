"""SMTP credentials of a gateway domain (emailgateway.addsmtp, getsmtps, deletesmtp,
resetsmtppassword).

A credential is the SMTPUsername/SMTPPassword pair applications AUTH with. The password is
generated (190 bits), returned once and stored as a SHA-256 hash. Deleting a credential or
resetting its password invalidates it on every relay node at once (the ``credential``
invalidation topic), not at cache expiry. ``SMTPHost`` and ``SMTPPorts`` say where to connect:
``smtp.advertised_host`` and ``smtp.advertised_ports`` when set, otherwise the ports the relay
listens on (``smtp.listen``, then ``smtp.smtps_listen``) and its hostname (the listeners'
address when they are all on loopback). ``SMTPID`` may also be spelled ``smtpid``.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from relay.admin.dispatcher import Call, command, ok
from relay.admin.errors import ApiError
from relay.admin.gateway_domain import domain_id_param, owned_domain
from relay.config import Settings, parse_hostport
from relay.directory import Topics
from relay.secrets import hash_secret, new_smtp_password, new_smtp_username
from relay.store.repos import credentials as repo


def advertised(settings: Settings) -> tuple[str, list[int]]:
    """The host and ports addsmtp/getsmtps tell customers to connect to: smtp.advertised_host
    and smtp.advertised_ports when set, else the listeners' own: their ports (STARTTLS ones
    first), and the relay's hostname, or the listeners' address when every listener is on a
    loopback address (nobody else could connect to the hostname)."""
    bound: list[tuple[str, int]] = []
    for item in [*settings.smtp.listen, *settings.smtp.smtps_listen]:
        try:
            bound.append(parse_hostport(item))
        except ValueError:
            continue
    ports = list(settings.smtp.advertised_ports) or list(
        dict.fromkeys(port for _, port in bound if port)
    )
    host = settings.smtp.advertised_host
    if not host:
        hosts = {h for h, _ in bound}
        host = settings.hostname
        if len(hosts) == 1 and _is_loopback(next(iter(hosts))):
            host = next(iter(hosts))
    return host, ports


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


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
    """Create SMTP credentials for a sender domain; the password is in this response only.

    Parameters:
        DomainID (Integer, required): the sender domain.

    Errors:
        1: Missing required parameter (DomainID)
        2: Domain not found or access denied
    """
    domain_id = domain_id_param(call, 1, 2)
    username, password = new_smtp_username(), new_smtp_password()
    async with call.services.db.write() as conn:
        await owned_domain(conn, call, domain_id, 2, "Domain not found or access denied")
        smtp_id = await repo.create(
            conn,
            user_id=call.user_id,
            domain_id=domain_id,
            username=username,
            password_hash=hash_secret(password),
        )
    # A failed AUTH may have cached "no such user" for this name.
    await call.services.bus.publish(Topics.CREDENTIAL, username)
    host, ports = advertised(call.services.settings)
    return ok(
        NewSMTPID=smtp_id,
        SMTP={
            "SMTPID": smtp_id,
            "SMTPUsername": username,
            "SMTPPassword": password,
            "SMTPHost": host,
            "SMTPPorts": ports,
        },
    )


@command("emailgateway.getsmtps", auth="user")
async def get_smtps(call: Call) -> dict[str, Any]:
    """List a sender domain's SMTP credentials (never their passwords).

    Parameters:
        DomainID (Integer, required): the sender domain.

    Errors:
        1: Missing required parameter (DomainID)
        2: Domain not found or access denied
    """
    domain_id = domain_id_param(call, 1, 2)
    async with call.services.db.read() as conn:
        await owned_domain(conn, call, domain_id, 2, "Domain not found or access denied")
        rows = await repo.list_for_domain(conn, domain_id)
    host, ports = advertised(call.services.settings)
    return ok(
        SMTPs=[
            {"SMTPID": r.id, "SMTPUsername": r.username, "SMTPHost": host, "SMTPPorts": ports}
            for r in rows
        ]
    )


@command("emailgateway.resetsmtppassword", auth="user")
async def reset_smtp_password(call: Call) -> dict[str, Any]:
    """Give SMTP credentials a new generated password; the old one stops working at once.

    Parameters:
        SMTPID (Integer, required): the credentials (also accepted as smtpid).

    Errors:
        1: Missing required parameter (SMTPID)
        2: SMTP credentials not found or access denied
    """
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


@command("emailgateway.deletesmtp", auth="user")
async def delete_smtp(call: Call) -> dict[str, Any]:
    """Delete SMTP credentials. Sessions on every relay node refuse the credential from the
    next command on (a MAIL after AUTH gets 535 5.7.8).

    Parameters:
        SMTPID (Integer, required): the credentials (also accepted as smtpid).

    Errors:
        1: Missing required parameter (SMTPID)
        2: SMTP credentials not found or access denied
    """
    smtp_id = smtp_id_param(call)
    async with call.services.db.write() as conn:
        row = await repo.get_owned(conn, smtp_id, call.user_id)
        if row is None:
            raise ApiError(2, "SMTP credentials not found or access denied")
        await repo.disable(conn, smtp_id)
    await call.services.bus.publish(Topics.CREDENTIAL, row.username)
    return ok()
