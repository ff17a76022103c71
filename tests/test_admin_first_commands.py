"""The commands an operator needs to get mail flowing (issue: relay core)."""

from __future__ import annotations

from tests.conftest import Api
from tests.provision import make_user


async def test_user_domain_smtp_flow(api: Api) -> None:
    user = await make_user(api)
    key = user["APIKey"]
    res = await api.call(
        "emailgateway.adddomain",
        APIKey=key,
        DomainName="Example.COM",
        Subdomain="outbound",
        TrackPrefix="links",
    )
    assert res["Success"] is True and res["ErrorCode"] == 0
    domain = res["Domain"]
    assert res["NewSenderDomainID"] == domain["DomainID"]
    assert domain["SenderDomain"] == "example.com"
    assert domain["Status"] == "Approval Pending"
    assert domain["Options"] == {
        "LinkTracking": 1,
        "OpenTracking": 1,
        "UnsubscribeLink": 0,
        "CustomSubdomain": "outbound",
        "CustomTrackPrefix": "links",
    }
    records = res["DNSRecords"]
    dkim = [(h, r) for h, r in records.items() if "._domainkey." in h]
    assert (
        len(dkim) == 1 and dkim[0][1][0] == "TXT" and dkim[0][1][1].startswith("v=DKIM1; k=rsa; p=")
    )
    assert records["outbound.example.com"][0] == "CNAME"
    assert "links-outbound.example.com" in records

    got = await api.call("emailgateway.getdomain", APIKey=key, DomainID=domain["DomainID"])
    assert got["Domain"]["DomainID"] == domain["DomainID"] and got["DNSRecords"] == records

    smtp = await api.call("emailgateway.addsmtp", APIKey=key, DomainID=domain["DomainID"])
    assert smtp["Success"] and smtp["NewSMTPID"] == smtp["SMTP"]["SMTPID"]
    assert len(smtp["SMTP"]["SMTPPassword"]) >= 24
    listing = await api.call("emailgateway.getsmtps", APIKey=key, DomainID=domain["DomainID"])
    assert [s["SMTPUsername"] for s in listing["SMTPs"]] == [smtp["SMTP"]["SMTPUsername"]]
    assert "SMTPPassword" not in listing["SMTPs"][0]
    reset = await api.call("emailgateway.resetsmtppassword", APIKey=key, smtpid=smtp["NewSMTPID"])
    assert reset["SMTP"]["SMTPPassword"] != smtp["SMTP"]["SMTPPassword"]

    st = await api.call(
        "emailgateway.setdomainstatus", admin=True, DomainID=domain["DomainID"], Status="Enabled"
    )
    assert st["Domain"]["Status"] == "Enabled"


async def test_errors(api: Api) -> None:
    user = await make_user(api)
    key = user["APIKey"]
    assert (await api.call("emailgateway.adddomain", APIKey=key))["ErrorCode"] == [1]
    assert (await api.call("emailgateway.adddomain", APIKey=key, DomainName="no_dots"))[
        "ErrorCode"
    ] == [2]
    bad = await api.call("emailgateway.adddomain", APIKey=key, DomainName="ok.com", Subdomain="-x")
    assert bad["ErrorCode"] == [4]
    assert (await api.call("emailgateway.getdomain", APIKey=key))["ErrorCode"] == 1
    assert (await api.call("emailgateway.getdomain", APIKey=key, DomainID=999))["ErrorCode"] == 2
    denied = await api.call("emailgateway.getdomain", APIKey="wrong", DomainID=1)
    assert denied == {
        "Success": False,
        "ErrorCode": 99998,
        "ErrorText": "Authentication failure or session expired",
        "_status": 200,
    }
    priv = await api.call("user.create", APIKey=key, EmailAddress="x@example.com")
    assert priv["ErrorCode"] == 99999
    unknown = await api.call("no.such.command", APIKey=key)
    assert unknown["Success"] is False and unknown["ErrorCode"] == 99997


async def test_other_users_domain_is_not_found(api: Api) -> None:
    a = await make_user(api, "a@example.com")
    b = await make_user(api, "b@example.com")
    res = await api.call("emailgateway.adddomain", APIKey=a["APIKey"], DomainName="a.example")
    domain_id = res["NewSenderDomainID"]
    assert (await api.call("emailgateway.getdomain", APIKey=b["APIKey"], DomainID=domain_id))[
        "ErrorCode"
    ] == 2
    assert (await api.call("emailgateway.addsmtp", APIKey=b["APIKey"], DomainID=domain_id))[
        "ErrorCode"
    ] == 2


async def test_delivery_servers(api: Api) -> None:
    missing = await api.call("deliveryserver.create", admin=True)
    assert missing["ErrorCode"][:6] == [1, 2, 3, 4, 5, 6]
    assert missing["ErrorText"][0] == "Missing deliveryservername"
    bad = await api.call(
        "deliveryserver.create",
        admin=True,
        DeliveryServerName="x",
        SendMethodSMTPHost="h",
        SendMethodSMTPPort=25,
        SendMethodSMTPSecure="starttls",
        SendMethodSMTPTimeout="soon",
        SendMethodSMTPAuth="maybe",
        DomainSettings_LinkTracking="t.example.com",
        DomainSettings_OpenTracking="o.example.com",
        DomainSettings_MFrom="b.example.com",
        DomainSettings_EnforcedFrom="not-an-email",
    )
    assert bad["ErrorCode"] == [13, 14, 15, 16]
    made = await api.call(
        "deliveryserver.create",
        admin=True,
        DeliveryServerName="Primary",
        SendMethodSMTPHost="127.0.0.1",
        SendMethodSMTPPort=2526,
        SendMethodSMTPSecure="false",
        SendMethodSMTPTimeout=30,
        SendMethodSMTPAuth=True,
        SendMethodSMTPUsername="u",
        SendMethodSMTPPassword="secret-pw",
        DomainSettings_LinkTracking="t.example.com",
        DomainSettings_OpenTracking="o.example.com",
        DomainSettings_MFrom="b.example.com",
    )
    assert made == {
        "Success": True,
        "ErrorCode": 0,
        "ErrorText": "",
        "DeliveryServerID": made["DeliveryServerID"],
        "_status": 200,
    }
    sid = made["DeliveryServerID"]
    assert (
        await api.call("deliveryserver.assign", admin=True, DeliveryServerID=sid, UserGroupID=1)
    )["Success"]
    listing = await api.call("deliveryservers.get", admin=True)
    server = listing["DeliveryServers"][str(sid)]
    assert server["ConnectionParams"]["smtp_password"] != "secret-pw"
    assert server["UserGroupAssignments"] == [
        {"UserGroupID": "1", "GroupName": "Default User Group", "Channels": ["Transactional"]}
    ]
    assert server["IsAllocated"] is True


async def test_suppressions(api: Api) -> None:
    user = await make_user(api)
    key = user["APIKey"]
    assert (
        await api.call("emailgateway.addsuppression", APIKey=key, EmailAddress="X@Example.com")
    )["Success"]
    assert (
        await api.call("emailgateway.addsuppression", APIKey=key, EmailAddress="x@example.com")
    )["Success"]
    assert (
        await api.call("emailgateway.deletesuppression", APIKey=key, EmailAddress="x@example.com")
    )["Success"]
    again = await api.call(
        "emailgateway.deletesuppression", APIKey=key, EmailAddress="x@example.com"
    )
    assert again["ErrorCode"] == 5
    glob = await api.call(
        "emailgateway.addsuppression", admin=True, UserID=0, EmailAddress="g@example.com"
    )
    assert glob["Success"]
