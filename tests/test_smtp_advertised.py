"""emailgateway.addsmtp and getsmtps advertise where the relay actually listens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from relay.admin.commands.smtp_credentials import advertised
from tests.conftest import Api, make_settings


async def test_addsmtp_and_getsmtps_advertise_the_listeners(api: Api, services: Any) -> None:
    s = services.settings
    ports = [int(s.smtp.listen[0].rsplit(":", 1)[1]), int(s.smtp.smtps_listen[0].rsplit(":", 1)[1])]
    user = await api.call("user.create", admin=True, EmailAddress="o@example.com")
    dom = await api.call("emailgateway.adddomain", APIKey=user["APIKey"], DomainName="example.com")
    add = await api.call(
        "emailgateway.addsmtp", APIKey=user["APIKey"], DomainID=dom["NewSenderDomainID"]
    )
    # The test listeners are on loopback: the hostname would reach nothing.
    assert (add["SMTP"]["SMTPHost"], add["SMTP"]["SMTPPorts"]) == ("127.0.0.1", ports)
    listed = await api.call(
        "emailgateway.getsmtps", APIKey=user["APIKey"], DomainID=dom["NewSenderDomainID"]
    )
    assert [(c["SMTPHost"], c["SMTPPorts"]) for c in listed["SMTPs"]] == [("127.0.0.1", ports)]


def test_public_listeners_advertise_the_hostname_and_configuration_wins(tmp_path: Path) -> None:
    public = make_settings(
        tmp_path,
        RELAY_SMTP_LISTEN="0.0.0.0:587,[::]:587",
        RELAY_SMTPS_LISTEN="0.0.0.0:465",
        RELAY_HOSTNAME="mail.example.com",
    )
    assert advertised(public) == ("mail.example.com", [587, 465])
    behind_lb = make_settings(
        tmp_path,
        RELAY_SMTP_ADVERTISED_HOST="smtp.example.com",
        RELAY_SMTP_ADVERTISED_PORTS="587,465",
    )
    assert advertised(behind_lb) == ("smtp.example.com", [587, 465])
