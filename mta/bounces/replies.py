"""The MX listener's own replies, with enhanced status codes (RFC 3463, RFC 2034).

The ones it shares with the submission listener (size, line length, connections, shutdown,
temporary failure, too many recipients) come from relay/smtp/replies.py; these belong there
too once that module takes them.
"""

from __future__ import annotations

SENDER_OK = "250 2.1.0 Sender OK"
RECIPIENT_OK = "250 2.1.5 Recipient OK"
REPORT_ACCEPTED = "250 2.0.0 Ok: report accepted"
# CONTRACT: anything but a return-path address with a valid token, at RCPT.
NOT_A_RETURN_PATH = "550 5.7.1 Not a return path of this server; relaying denied"
NO_AUTH = "502 5.5.1 AUTH not available on this port"
