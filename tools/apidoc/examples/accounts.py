"""Examples: users, user groups, API keys, SMTP credentials, suppressions."""

from __future__ import annotations

from tools.apidoc.generator import ExampleSession, example


@example("user.create")
async def user_create(ex: ExampleSession) -> None:
    await ex.show(
        "user.create",
        auth="admin",
        EmailAddress="jane@example.com",
        Name="Jane Smith",
        Password="a long passphrase",  # noqa: S106  (a throwaway example account)
        UserGroupID=1,
    )


@example("user.update")
async def user_update(ex: ExampleSession) -> None:
    user = await ex.call("user.create", auth="admin", EmailAddress="limits@example.com")
    await ex.show(
        "user.update",
        auth="admin",
        UserID=user["UserID"],
        Name="Rate-limited sender",
        SendLimitPerHour=1000,
        Verified=1,
    )


@example("user.get")
async def user_get(ex: ExampleSession) -> None:
    await ex.show("user.get", auth="admin", UserID=ex.user_id)


@example("users.get")
async def users_get(ex: ExampleSession) -> None:
    await ex.show("users.get", auth="admin")


@example("user.delete")
async def user_delete(ex: ExampleSession) -> None:
    user = await ex.call("user.create", auth="admin", EmailAddress="leaving@example.com")
    await ex.show("user.delete", auth="admin", UserID=user["UserID"])


@example("user.login")
async def user_login(ex: ExampleSession) -> None:
    from tools.apidoc.examples import OWNER, OWNER_PASSWORD

    await ex.show("user.login", auth="none", EmailAddress=OWNER, Password=OWNER_PASSWORD)


@example("usergroup.create")
async def usergroup_create(ex: ExampleSession) -> None:
    await ex.show(
        "usergroup.create",
        auth="admin",
        Name="Enterprise Users",
        MaxSenderDomains=10,
        SendLimitPerHour=50000,
    )


@example("usergroup.update")
async def usergroup_update(ex: ExampleSession) -> None:
    group = await ex.call("usergroup.create", auth="admin", Name="Trial")
    await ex.show(
        "usergroup.update", auth="admin", UserGroupID=group["UserGroupID"], SendLimitPerHour=100
    )


@example("usergroups.get")
async def usergroups_get(ex: ExampleSession) -> None:
    await ex.show("usergroups.get", auth="admin")


@example("emailgateway.addapi")
async def addapi(ex: ExampleSession) -> None:
    await ex.show("emailgateway.addapi", Description="Production API Key", DomainID=ex.domain_id)


@example("emailgateway.getapis")
async def getapis(ex: ExampleSession) -> None:
    await ex.show("emailgateway.getapis", DomainID=ex.domain_id)


@example("emailgateway.deleteapi")
async def deleteapi(ex: ExampleSession) -> None:
    made = await ex.call("emailgateway.addapi", Description="Old key", DomainID=ex.domain_id)
    await ex.show("emailgateway.deleteapi", APIKeyID=made["NewAPIKeyID"])


@example("emailgateway.replaceapi")
async def replaceapi(ex: ExampleSession) -> None:
    # On a domain of its own: the example keys of example.com stay valid for the others.
    made = await ex.call("emailgateway.adddomain", DomainName="news.example.com")
    domain_id = made["NewSenderDomainID"]
    await ex.call("emailgateway.addapi", Description="Before rotation", DomainID=domain_id)
    await ex.show("emailgateway.replaceapi", DomainID=domain_id, Description="Rotated 2026-05-16")


@example("emailgateway.addsmtp")
async def addsmtp(ex: ExampleSession) -> None:
    await ex.show("emailgateway.addsmtp", DomainID=ex.domain_id)


@example("emailgateway.getsmtps")
async def getsmtps(ex: ExampleSession) -> None:
    await ex.show("emailgateway.getsmtps", DomainID=ex.domain_id)


@example("emailgateway.resetsmtppassword")
async def resetsmtppassword(ex: ExampleSession) -> None:
    listed = await ex.call("emailgateway.getsmtps", DomainID=ex.domain_id)
    await ex.show("emailgateway.resetsmtppassword", SMTPID=listed["SMTPs"][0]["SMTPID"])


@example("emailgateway.deletesmtp")
async def deletesmtp(ex: ExampleSession) -> None:
    made = await ex.call("emailgateway.addsmtp", DomainID=ex.domain_id)
    await ex.show("emailgateway.deletesmtp", SMTPID=made["NewSMTPID"])


@example("emailgateway.addsuppression")
async def addsuppression(ex: ExampleSession) -> None:
    await ex.show(
        "emailgateway.addsuppression", EmailAddress="unsubscribed@example.net", Reason="Asked"
    )


@example("emailgateway.getsuppressions")
async def getsuppressions(ex: ExampleSession) -> None:
    await ex.show("emailgateway.getsuppressions", StartFrom=0, RetrieveCount=10)


@example("emailgateway.deletesuppression")
async def deletesuppression(ex: ExampleSession) -> None:
    await ex.call("emailgateway.addsuppression", EmailAddress="mistake@example.net")
    await ex.show("emailgateway.deletesuppression", EmailAddress="mistake@example.net")
