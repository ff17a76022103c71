"""Report parsing and bounce categories, shape by shape (the MX listener's end-to-end tests are
in test_mx.py): RFC 3464 variants, text bounces, ARF, what is ignored, and hostile input."""

from __future__ import annotations

import random

import pytest

from mta.bounces import classify
from mta.bounces.parse import ARF, DSN, IGNORED, TEXT_BOUNCE, UNPARSED, parse_report


def _crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


def _dsn(blocks: str, *, ctype: str = "message/delivery-status", extra: str = "") -> bytes:
    return _crlf(
        "From: MAILER-DAEMON@mx.example.net\nSubject: Delivery report\nMIME-Version: 1.0\n"
        f'{extra}Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
        "--b\nContent-Type: text/plain\n\nSee below.\n\n"
        f"--b\nContent-Type: {ctype}\n\n{blocks}\n--b--\n"
    )


def test_several_recipient_blocks_pick_the_one_named_else_the_worst() -> None:
    report = parse_report(
        _dsn(
            "Reporting-MTA: dns; mx.example.net\n\n"
            "Final-Recipient: rfc822; list-member-1@example.org\n"
            "Original-Recipient: rfc822; team@example.net\nAction: delivered\nStatus: 2.0.0\n\n"
            "Final-Recipient: rfc822; list-member-2@example.org\n"
            "Original-Recipient: rfc822; team@example.net\nAction: delayed\nStatus: 4.2.2\n\n"
            "Final-Recipient: rfc822; other@example.net\nAction: failed\nStatus: 5.1.1\n"
        )
    )
    assert report.kind == DSN and report.reporting_mta == "mx.example.net"
    named = report.status_for("Other@Example.NET")
    assert named is not None and (named.action, named.status) == ("failed", "5.1.1")
    # team@ was expanded by the remote side: its worst block is the delayed one.
    team = report.status_for("team@example.net")
    assert team is not None and team.action == "delayed"
    worst = report.status_for("unmentioned@example.net")
    assert worst is not None and worst.action == "failed"


def test_global_delivery_status_rfc_6533() -> None:
    report = parse_report(
        _dsn(
            "Reporting-MTA: dns; mx.example.net\n\n"
            "Final-Recipient: utf-8; j\u00f6rg@example.net\nAction: failed\nStatus: 5.1.1\n"
            "Diagnostic-Code: smtp; 550 5.1.1 mailbox unknown\n",
            ctype="message/global-delivery-status",
        )
    )
    assert report.kind == DSN
    (status,) = report.statuses
    assert status.final_recipient == "j\u00f6rg@example.net"
    assert status.diagnostic == "550 5.1.1 mailbox unknown"


def test_status_missing_taken_from_the_diagnostic_or_the_action() -> None:
    report = parse_report(
        _dsn(
            "Final-Recipient: rfc822; a@example.net\nAction: failed\n"
            "Diagnostic-Code: smtp; 552-5.2.2 over quota\n\n"
            "Final-Recipient: rfc822; b@example.net\nAction: failed\n"
        )
    )
    assert [s.status for s in report.statuses] == ["5.2.2", "5.0.0"]


def test_success_notices_and_read_receipts_are_ignored() -> None:
    relayed = parse_report(_dsn("Final-Recipient: rfc822; a@example.net\nAction: relayed\n"))
    assert relayed.kind == IGNORED
    mdn = parse_report(
        _crlf(
            "From: a@example.net\nMIME-Version: 1.0\n"
            'Content-Type: multipart/report; report-type=disposition-notification; boundary="m"\n'
            "\n--m\nContent-Type: text/plain\n\nRead.\n"
            "--m\nContent-Type: message/disposition-notification\n\n"
            "Disposition: manual-action/MDN-sent-manually; displayed\n--m--\n"
        )
    )
    assert mdn.kind == IGNORED


def test_old_gmail_text_delay_and_base64_and_html_only_bounces() -> None:
    delay = parse_report(
        _crlf(
            "From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>\n"
            "Subject: Delivery Status Notification (Delay)\nContent-Type: text/plain\n\n"
            "This is an automatically generated Delivery Status Notification\n\n"
            "THIS IS A WARNING MESSAGE ONLY.\n\nYOU DO NOT NEED TO RESEND YOUR MESSAGE.\n\n"
            "Delivery to the following recipient has been delayed:\n\n     a@example.net\n\n"
            "Message will be retried for 2 more day(s)\n\nTechnical details of temporary "
            "failure:\nThe recipient server did not accept our requests to connect.\n"
        )
    )
    assert delay.kind == TEXT_BOUNCE
    (status,) = delay.statuses
    assert (status.action, status.status) == ("delayed", "4.0.0")
    assert status.final_recipient == "a@example.net"
    assert status.category(delay.text) == classify.NO_ANSWER

    import base64

    body = base64.b64encode(
        b"Your message could not be delivered.\n\n  550 5.1.2 Host unknown: nowhere.example\n"
    ).decode()
    b64 = parse_report(
        _crlf(
            "From: postmaster@example.org\nSubject: Undeliverable\nMIME-Version: 1.0\n"
            f"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n{body}\n"
        )
    )
    assert b64.kind == TEXT_BOUNCE and b64.statuses[0].status == "5.1.2"
    assert b64.statuses[0].category(b64.text) == classify.BAD_DOMAIN

    html = parse_report(
        _crlf(
            "From: postmaster@example.org\nSubject: Undeliverable: hello\n"
            "Content-Type: text/html\n\n<html><body><p>Delivery has failed to these "
            "recipients:</p><p>a@example.net</p><p>Remote server returned '550 5.1.10 "
            "RESOLVER.ADR.RecipientNotFound'</p></body></html>\n"
        )
    )
    assert html.kind == TEXT_BOUNCE and html.statuses[0].status == "5.1.10"


def test_arf_fields_and_feedback_types() -> None:
    def arf(fields: str) -> bytes:
        return _crlf(
            "From: fbl@example.net\nMIME-Version: 1.0\n"
            'Content-Type: multipart/report; report-type=feedback-report; boundary="f"\n\n'
            "--f\nContent-Type: text/plain\n\nA report.\n"
            f"--f\nContent-Type: message/feedback-report\n\n{fields}\n"
            "--f\nContent-Type: text/rfc822-headers\n\nFrom: app@example.com\n"
            "X-Original-To: hidden@example.net\n\n--f--\n"
        )

    report = parse_report(
        arf(
            "Feedback-Type: fraud\nUser-Agent: SomeFBL/1.0\nVersion: 1\n"
            "Original-Rcpt-To: <a@example.net>\nOriginal-Rcpt-To: b@example.net\n"
            "Source-IP: 192.0.2.1\nArrival-Date: Thu, 8 Mar 2005 14:00:00 EDT\n"
        )
    )
    assert report.kind == ARF and report.complaint is not None
    c = report.complaint
    assert (c.feedback_type, c.user_agent, c.source_ip) == ("fraud", "SomeFBL/1.0", "192.0.2.1")
    assert c.original_rcpt_to == ["a@example.net", "b@example.net"]
    redacted = parse_report(arf("Feedback-Type: abuse\nVersion: 1\n"))
    assert redacted.complaint is not None
    assert redacted.complaint.original_rcpt_to == ["hidden@example.net"]
    assert parse_report(arf("Version: 1\n")).kind == UNPARSED


@pytest.mark.parametrize(
    ("status", "diagnostic", "category", "hard"),
    [
        (
            "5.1.1",
            "550 5.1.1 <a@example.net>: Recipient address rejected: User unknown",
            "bad-mailbox",
            True,
        ),
        ("5.0.0", "550 Requested action not taken: mailbox unavailable", "bad-mailbox", True),
        ("5.1.10", "550 5.1.10 RESOLVER.ADR.RecipientNotFound", "bad-mailbox", True),
        ("5.4.4", "550 5.4.4 Unable to route: no mail hosts for domain", "bad-domain", True),
        ("5.0.0", "Host or domain name not found. Name service error", "bad-domain", True),
        (
            "5.2.1",
            "550 5.2.1 The email account that you tried to reach is disabled",
            "inactive-mailbox",
            True,
        ),
        ("5.1.1", "550 5.1.1 mailbox is inactive", "inactive-mailbox", True),
        ("5.2.2", "552 5.2.2 Mailbox full", "quota-issues", False),
        (
            "4.2.2",
            "452 4.2.2 The email account that you tried to reach is over quota",
            "quota-issues",
            False,
        ),
        (
            "5.7.1",
            "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
            "spam-related",
            False,
        ),
        ("5.7.1", "550 5.7.1 Message rejected as spam by Content Filtering", "spam-related", False),
        ("5.1.1", "550 5.1.1 blocked: listed on a blocklist", "spam-related", False),
        ("5.7.1", "550 5.7.1 Relaying denied", "relaying-issues", False),
        (
            "5.7.26",
            "550 5.7.26 Unauthenticated email is not accepted due to DMARC policy",
            "policy-related",
            False,
        ),
        ("5.7.1", "550 5.7.1 Delivery not authorized, message refused", "policy-related", False),
        ("4.4.7", "Delivery expired (message too old)", "message-expired", False),
        ("4.4.1", "connect to mx.example.net: Connection timed out", "no-answer-from-host", False),
        ("5.3.4", "552 5.3.4 Message size exceeds fixed limit", "content-related", False),
        ("5.7.1", "550 5.7.1 Virus found in message", "virus-related", False),
        ("5.1.7", "553 5.1.7 Sender address rejected", "invalid-sender", False),
        ("5.5.2", "500 5.5.2 Syntax error", "protocol-errors", False),
        ("4.1.1", "450 4.1.1 <a@example.net>: user unknown (try later)", "bad-mailbox", False),
        ("5.0.0", "", "other", False),
    ],
)
def test_categories(status: str, diagnostic: str, category: str, hard: bool) -> None:
    assert classify.categorize(status, diagnostic) == category
    assert classify.is_hard(category, status) is hard


def test_hostile_reports_never_raise() -> None:
    rng = random.Random(42)
    nested = "Content-Type: multipart/mixed; boundary=x\n\n--x\n" * 3000
    samples = [
        b"",
        b"\r\n\r\n",
        _crlf(nested),
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=\r\n\r\n--\r\n",
        b"Content-Type: message/delivery-status\r\n\r\nAction: failed\r\nStatus: 9.9.9.9\r\n",
        _crlf("From: MAILER-DAEMON@x\n" + "X-Failed-Recipients: a@b\n" * 5000 + "\nfailed\n"),
        _crlf("Content-Type: text/plain; charset=no-such-charset\nFrom: postmaster@x\n\n550 x\n"),
    ]
    samples += [rng.randbytes(rng.randint(1, 4000)) for _ in range(200)]
    for data in samples:
        report = parse_report(data)
        assert report.kind in (DSN, TEXT_BOUNCE, ARF, IGNORED, UNPARSED)
