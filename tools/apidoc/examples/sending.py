"""Examples: the HTTP send API and the SMTP relay contract (they queue real messages)."""

from __future__ import annotations

from tools.apidoc.generator import ExampleSession, example


@example("emailgateway.sendemail.public")
async def send_email(ex: ExampleSession) -> None:
    await ex.show_route(
        "POST",
        "/api/v1/email",
        key=ex.sender_key,
        body={
            "Subject": "Welcome to Our Service",
            "ContentType": "html",
            "HTMLContent": "<h1>Welcome!</h1><p>Thank you for signing up.</p>",
            "From": {"name": "John Doe", "email": "john@example.com"},
            "To": [{"name": "Jane Smith", "email": "jane@example.com"}],
            "Tags": ["welcome"],
        },
    )


@example("emailgateway.smtprelay")
async def smtp_relay(ex: ExampleSession) -> None:
    made = await ex.call("emailgateway.addsmtp", DomainID=ex.domain_id)
    smtp = made["SMTP"]
    await ex.show(
        "emailgateway.smtprelay",
        auth="admin",
        SMTPUsername=smtp["SMTPUsername"],
        SMTPPassword=smtp["SMTPPassword"],
        UUID="550e8400-e29b-41d4-a716-446655440000",
        MailFrom="sender@example.com",
        RcptTo="recipient@example.net",
        Subject="Test Email",
        RawEmail=(
            "From: sender@example.com\r\nTo: recipient@example.net\r\n"
            "Subject: Test Email\r\n\r\nHello.\r\n"
        ),
    )
