"""DKIM (RFC 6376): per-domain RSA keys and the message signer.

Signing splits in two: canonicalization and hashing with dkimpy's own code on the event loop
(cheap), then the RSA private-key operation with ``cryptography`` in a thread pool, where it
releases the GIL (dkimpy's pure-Python RSA manages ~150 signatures/s; OpenSSL ~2,300 per core).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import queue
import threading
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim import RE_BTAG, fold, hash_headers
from dkim.canonicalization import CanonicalizationPolicy


@dataclass(frozen=True)
class KeyPair:
    private_pem: str
    public_b64: str


def generate_key(bits: int = 2048) -> KeyPair:
    """A new RSA key (CPU-heavy: call through a thread)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return KeyPair(pem, base64.b64encode(der).decode())


def default_selector(configured: str = "") -> str:
    return configured or "rl" + time.strftime("%Y%m", time.gmtime())


def rsa_sign_digest(key: rsa.RSAPrivateKey, digest: bytes) -> bytes:
    """RSASSA-PKCS1-v1_5 over a SHA-256 digest (RFC 6376 3.3.1)."""
    return key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))


# --- signing ---------------------------------------------------------------------------------

# Signed once per occurrence plus once more, so adding another instance breaks the signature
# (RFC 6376 8.15 "oversigning").
OVERSIGN = (b"from", b"to", b"subject", b"date", b"message-id", b"reply-to", b"cc")
# Signed once per occurrence when present.
SIGN_PRESENT = (
    b"sender",
    b"mime-version",
    b"content-type",
    b"content-transfer-encoding",
    b"in-reply-to",
    b"references",
    b"list-id",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"feedback-id",
)
_RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
_HEADER_NAME = b"DKIM-Signature"


def signed_header_names(headers: list[list[bytes]]) -> list[bytes]:
    counts: dict[bytes, int] = {}
    for name, _ in headers:
        lname = name.lower()
        counts[lname] = counts.get(lname, 0) + 1
    names: list[bytes] = []
    for name in OVERSIGN:
        names.extend([name] * (counts.get(name, 0) + 1))
    for name in SIGN_PRESENT:
        names.extend([name] * counts.get(name, 0))
    return names


@dataclass
class PendingSignature:
    """Everything but the RSA operation: what the thread pool gets."""

    fields: list[tuple[bytes, bytes]]
    digest: bytes


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4 relaxed body canonicalization, identical to dkimpy's. Most bodies have no
    whitespace runs and no trailing whitespace; for them three substring searches prove dkimpy's
    regex passes would change nothing, and only the trailing empty lines need handling."""
    if b"\t" in body or b"  " in body or b" \r\n" in body:
        return _RELAXED.canonicalize_body(body)
    end = len(body)
    while body.endswith(b"\r\n", 0, end):
        end -= 2
    out = body + b"\r\n" if end == len(body) else body[: end + 2]
    return b"" if out == b"\r\n" else out


def relaxed_headers(headers: list[list[bytes]], names: set[bytes]) -> list[tuple[bytes, bytes]]:
    """RFC 6376 3.4.2 relaxed header canonicalization of the headers named, identical to
    dkimpy's: an unfolded value without tabs or double spaces only needs stripping."""
    out = []
    for name, value in headers:
        lname = name.lower().rstrip()
        if lname not in names:
            continue
        if (
            value.count(b"\n") == 1
            and value.endswith(b"\r\n")
            and b"\t" not in value
            and (b"  " not in value)
        ):
            out.append((lname, value[:-2].strip() + b"\r\n"))
        else:
            out.extend(_RELAXED.canonicalize_headers([(name, value)]))
    return out


def prepare_signature(
    headers: list[list[bytes]], body: bytes, domain: str, selector: str, timestamp: int
) -> PendingSignature:
    """Canonicalize (relaxed/relaxed, RFC 6376 3.4.2 and 3.4.4) and hash, with dkimpy's code."""
    body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
    include = signed_header_names(headers)
    fields: list[tuple[bytes, bytes]] = [
        (b"v", b"1"),
        (b"a", b"rsa-sha256"),
        (b"c", b"relaxed/relaxed"),
        (b"d", domain.encode()),
        (b"s", selector.encode()),
        (b"t", str(timestamp).encode()),
        # Separated like dkimpy's (" : "): fold() breaks lines at spaces, and a break inside a
        # header name ("mime-vers\r\n ion") names a header that does not exist (RFC 6376
        # 3.5 allows FWS only around the colons), so the signature would not verify.
        (b"h", b" : ".join(include)),
        (b"bh", body_hash),
        (b"b", b""),
    ]
    # Folded exactly as finish_signature folds it: fold() may break inside a long tag value
    # (h=) and add a space there, which relaxed canonicalization keeps.
    value = fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(_HEADER_NAME))
    hasher = hashlib.sha256()
    # The signature header is hashed with an empty b= and without its trailing CRLF (3.7).
    hash_headers(
        hasher,
        _RELAXED,
        relaxed_headers(headers, set(include)),
        include,
        (_HEADER_NAME, b" " + RE_BTAG.sub(b"\\1", value)),
        None,
    )
    return PendingSignature(fields, hasher.digest())


def finish_signature(pending: PendingSignature, signature: bytes) -> tuple[bytes, bytes]:
    fields = [(k, base64.b64encode(signature) if k == b"b" else v) for k, v in pending.fields]
    value = fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(_HEADER_NAME))
    return _HEADER_NAME, b" " + value + b"\r\n"


class DkimSigner:
    """Signs on the event loop's behalf. The private-key operation runs in dedicated threads
    (OpenSSL releases the GIL there), so signing never stalls other sessions. Each thread
    drains whatever is queued and wakes the loop once per batch: concurrent.futures' per-job
    locks and callbacks cost more loop time than they save at this size."""

    def __init__(self, threads: int = 2) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"dkim-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            batch: list[_Job] = []
            while job is not None:
                batch.append(job)
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    job = None
                    break
            if batch:
                done: list[tuple[asyncio.Future[bytes], bytes, BaseException | None]] = []
                for key, digest, fut in batch:
                    try:
                        done.append((fut, rsa_sign_digest(key, digest), None))
                    except Exception as exc:
                        done.append((fut, b"", exc))
                loop = batch[0][2].get_loop()
                with contextlib.suppress(RuntimeError):  # loop closed at shutdown
                    loop.call_soon_threadsafe(_resolve, done)
            if job is None and not batch:
                return  # the stop sentinel

    async def sign(
        self,
        key: rsa.RSAPrivateKey,
        headers: list[list[bytes]],
        body: bytes,
        domain: str,
        selector: str,
    ) -> tuple[bytes, bytes]:
        """The DKIM-Signature header (name, value-with-CRLF) for this message."""
        loop = asyncio.get_running_loop()
        if len(body) > _LARGE_BODY or sum(len(v) for _, v in headers) > _LARGE_BODY:
            # Canonicalizing megabytes (of body, or of a header folded over many lines) would
            # hold the loop for milliseconds or more: use a thread.
            pending = await asyncio.to_thread(
                prepare_signature, headers, body, domain, selector, int(time.time())
            )
        else:
            pending = prepare_signature(headers, body, domain, selector, int(time.time()))
        fut: asyncio.Future[bytes] = loop.create_future()
        self._jobs.put((key, pending.digest, fut))
        return finish_signature(pending, await fut)

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=5)


_Job = tuple[rsa.RSAPrivateKey, bytes, "asyncio.Future[bytes]"]


def _resolve(done: list[tuple[asyncio.Future[bytes], bytes, BaseException | None]]) -> None:
    for fut, signature, exc in done:
        if fut.done():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(signature)


_LARGE_BODY = 256 * 1024
