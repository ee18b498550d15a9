"""One TLS handshake with a server, to say what the client library cannot: whether a port speaks TLS at all, and
why a certificate it rejected is not trusted (expired, not yet valid, another CA...).

libpq and librdkafka both report a rejected server certificate as "certificate verify failed", whatever the
reason. The connector stops on that error anyway; before it does, one handshake of its own (same host, port and
CA file) gets OpenSSL's reason and the certificate's validity, so the message names the fix.
"""

from __future__ import annotations

import socket
import ssl
import struct
from dataclasses import dataclass
from datetime import UTC, datetime

_POSTGRES_SSL_REQUEST = struct.pack("!II", 8, 80877103)
"""PostgreSQL's SSLRequest: the server answers b"S" and the TLS handshake follows on the same connection."""


@dataclass(frozen=True, slots=True)
class CertificateProblem:
    """Why the server's certificate failed verification: OpenSSL's reason and the certificate's last valid day."""

    reason: str
    not_after: datetime | None

    @property
    def expired(self) -> bool:
        return self.not_after is not None and self.not_after < datetime.now(UTC)


def _connect(host: str, port: int, *, postgres: bool, timeout_s: float) -> socket.socket:
    raw = socket.create_connection((host, port), timeout=timeout_s)
    if postgres:
        raw.sendall(_POSTGRES_SSL_REQUEST)
        if raw.recv(1) != b"S":
            raw.close()
            raise ConnectionError("the server does not offer TLS")
    return raw


def speaks_tls(host: str, port: int, *, timeout_s: float = 3.0) -> bool:
    """Whether `host:port` completes a TLS handshake (or answers it with a TLS alert): a TLS listener.

    Who the server is does not matter here (verification off): only whether it speaks TLS at all. A plaintext
    listener, a refused or dropped connection, a timeout: False.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            _connect(host, port, postgres=False, timeout_s=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            return tls.version() is not None
    except ssl.SSLError as exc:
        # An alert is a TLS record from the server (e.g. it wants a client certificate); a plaintext peer's bytes
        # give "wrong version number" or "record layer failure" instead, a dropped connection an EOF.
        return "ALERT" in (exc.reason or "").upper()
    except OSError:
        return False


def certificate_problem(
    host: str, port: int, cafile: str | None, *, postgres: bool = False, timeout_s: float = 3.0
) -> CertificateProblem | None:
    """Why the certificate of `host:port` fails verification against `cafile` (None: the system's trust store);
    None when it verifies, or when the server cannot be asked (then the library's own message stands)."""
    try:
        verifying = ssl.create_default_context(cafile=cafile)
        verifying.check_hostname = False  # a wrong host name is reported as such by the libraries already
        with (
            _connect(host, port, postgres=postgres, timeout_s=timeout_s) as raw,
            verifying.wrap_socket(raw, server_hostname=host),
        ):
            return None
    except ssl.SSLCertVerificationError as exc:
        reason = exc.verify_message or "certificate verify failed"
    except (OSError, ValueError):
        return None
    return CertificateProblem(reason, _not_after(host, port, postgres=postgres, timeout_s=timeout_s))


def _not_after(host: str, port: int, *, postgres: bool, timeout_s: float) -> datetime | None:
    """The server certificate's notAfter, read without verifying it (Python's ssl decodes only verified ones)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            _connect(host, port, postgres=postgres, timeout_s=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ValueError):
        return None
    return not_after_of(der) if der else None


def _element(der: bytes, at: int) -> tuple[int, int, int]:
    """The DER element at `at`: its tag, where its content starts and where it ends."""
    tag, length = der[at], der[at + 1]
    at += 2
    if length & 0x80:
        size = length & 0x7F
        length = int.from_bytes(der[at : at + size], "big")
        at += size
    return tag, at, at + length


def not_after_of(der: bytes) -> datetime | None:
    """notAfter of a DER certificate: Certificate -> tbsCertificate -> [version], serial, signature, issuer,
    validity (notBefore, notAfter). None if `der` is not shaped like one."""
    try:
        _, certificate, _ = _element(der, 0)
        _, tbs, _ = _element(der, certificate)
        tag, _, end = _element(der, tbs)
        at = end if tag == 0xA0 else tbs  # an explicit version comes first (v3); v1 has none
        for _ in range(3):  # serial, signature algorithm, issuer
            at = _element(der, at)[2]
        _, validity, _ = _element(der, at)
        _, _, not_before_end = _element(der, validity)
        kind, value_start, value_end = _element(der, not_before_end)
        text = der[value_start:value_end].decode("ascii")
        pattern = "%y%m%d%H%M%SZ" if kind == 0x17 else "%Y%m%d%H%M%SZ"
        return datetime.strptime(text, pattern).replace(tzinfo=UTC)
    except (IndexError, ValueError, UnicodeDecodeError):
        return None
