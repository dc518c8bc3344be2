"""TLS as go-livepeer does it: orchestrators present a self-signed certificate they keep.

Orchestrator side: :func:`ensure_certificate` creates an ECDSA P-256 certificate for the host on
first start and reuses it after. Gateway side: grpcio cannot skip verification, so
:class:`CertificatePins` fetches the certificate an orchestrator presents on first use, trusts
exactly that one, and re-pins when the orchestrator restarts with a new one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from streamgw.errors import ProtocolError

log = logging.getLogger(__name__)

CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"


def ensure_certificate(directory: Path, host: str) -> tuple[Path, Path]:
    """The orchestrator's certificate and key files in ``directory``, created on first use."""
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Livepeer Transcoder"),
                      x509.NameAttribute(NameOID.COMMON_NAME, host)])
    try:
        san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        san = x509.DNSName(host)
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    log.info("created self-signed certificate for %s in %s", host, directory)
    return cert_path, key_path


@dataclass(frozen=True, slots=True)
class PinnedCertificate:
    """The certificate an orchestrator presented, and the name to verify it under."""

    pem: bytes
    server_name: str

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts exactly this certificate (HTTP/1.1 and h2)."""
        ctx = ssl.create_default_context(cadata=self.pem.decode())
        ctx.check_hostname = False
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        return ctx


async def fetch_certificate(host: str, port: int, timeout: float = 3.0) -> PinnedCertificate:
    """Connect without verification and return the certificate the server presents."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx, server_hostname=host), timeout
        )
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        raise ProtocolError(f"cannot reach {host}:{port} over TLS: {exc}") from exc
    try:
        obj = writer.get_extra_info("ssl_object")
        der = obj.getpeercert(binary_form=True) if obj else None
    finally:
        writer.close()
    if not der:
        raise ProtocolError(f"{host}:{port} presented no certificate")
    cert = x509.load_der_x509_certificate(der)
    return PinnedCertificate(cert.public_bytes(serialization.Encoding.PEM), _name_for(cert, host))


def _name_for(cert: x509.Certificate, dialed: str) -> str:
    """The name gRPC should verify: the dialed host if the certificate covers it, else its first name."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = None
    names = [str(n) for n in sans.get_values_for_type(x509.DNSName)] if sans else []
    ips = [str(n) for n in sans.get_values_for_type(x509.IPAddress)] if sans else []
    if dialed in names or dialed in ips:
        return dialed
    return names[0] if names else (ips[0] if ips else dialed)


class CertificatePins:
    """Trust-on-first-use certificates per orchestrator address (HOST:PORT)."""

    def __init__(self) -> None:
        self._pins: dict[str, PinnedCertificate] = {}

    def get(self, host: str, port: int) -> PinnedCertificate | None:
        """The pinned certificate, if any."""
        return self._pins.get(f"{host}:{port}")

    async def pin(self, host: str, port: int, *, refresh: bool = False) -> PinnedCertificate:
        """The pinned certificate, fetching (or with ``refresh``, re-fetching) it."""
        key = f"{host}:{port}"
        current = self._pins.get(key)
        if current is not None and not refresh:
            return current
        fresh = await fetch_certificate(host, port)
        if current is not None and current.pem != fresh.pem:
            log.warning("orchestrator %s presents a new certificate; re-pinned", key)
        self._pins[key] = fresh
        return fresh
