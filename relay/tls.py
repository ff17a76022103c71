"""TLS for the SMTP listeners: the configured PEM files, or a self-signed pair we generate.

The listeners keep one ``ssl.SSLContext`` for their lifetime; a reload (SIGHUP) loads the new
certificate and key into it, so new connections get them and open sessions are untouched.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from relay.config import Settings


def ensure_self_signed(data_dir: Path, hostname: str) -> tuple[Path, Path]:
    """Create data_dir/tls/{cert,key}.pem once (P-256, ten years) and return their paths."""
    tls_dir = data_dir / "tls"
    cert_path, key_path = tls_dir / "cert.pem", tls_dir / "key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    tls_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64])])
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [
        x509.DNSName(hostname),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    fd = os.open(cert_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def tls_files(settings: Settings) -> tuple[Path, Path]:
    """The certificate and key the listeners use: configured, or generated into the data
    directory."""
    if settings.smtp.tls_cert:
        return Path(settings.smtp.tls_cert), Path(settings.smtp.tls_key)
    return ensure_self_signed(settings.data_path, settings.hostname)


def server_context(cert: Path | str, key: Path | str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    # Submission clients do not present certificates (aiosmtpd warns on anything stricter).
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class ServerTLS:
    """The listeners' context, and a reload that never leaves it half-loaded."""

    def __init__(self, cert: Path | str, key: Path | str) -> None:
        self.context = server_context(cert, key)
        self.cert, self.key = str(cert), str(key)

    def reload(self, cert: Path | str, key: Path | str) -> None:
        """Load ``cert``/``key`` for new connections. A bad pair (unreadable, not PEM, key not
        matching) raises ``ssl.SSLError``/``OSError`` and the current pair stays in use."""
        server_context(cert, key)  # validate on a throwaway context first
        self.context.load_cert_chain(str(cert), str(key))
        self.cert, self.key = str(cert), str(key)
