"""The admission webhook's HTTPS server: certificates from a mounted Secret, self-signed as a fallback.

cert-manager (deploy/operator/webhook.yaml) writes tls.crt, tls.key and ca.crt into a Secret mounted at
--webhook-cert-dir, and injects the CA into the static MutatingWebhookConfiguration. Without that Secret
the operator makes its own certificate (Kopf's built-in generator fails with OpenSSL 3) and must then
write the caBundle itself: run it with --webhook-managed-config.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import tempfile
from pathlib import Path

import kopf
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .config import Settings

log = logging.getLogger(__name__)


def self_signed_certificate(hostnames: list[str], days: int = 3650) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) for the given DNS names / IPs; the certificate is its own CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in dict.fromkeys(h for h in hostnames if h):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def build_webhook_server(settings: Settings) -> kopf.WebhookServer:
    cert_dir = Path(settings.webhook_cert_dir)
    certfile, keyfile, cafile = cert_dir / "tls.crt", cert_dir / "tls.key", cert_dir / "ca.crt"
    host = settings.webhook_host or None
    if not (certfile.is_file() and keyfile.is_file()):
        hostnames = [h for h in (settings.webhook_host, settings.webhook_addr, "localhost") if h and h != "0.0.0.0"]
        cert, key = self_signed_certificate(hostnames)
        generated = Path(tempfile.mkdtemp(prefix="rayhistory-webhook-"))
        certfile, keyfile, cafile = generated / "tls.crt", generated / "tls.key", generated / "tls.crt"
        certfile.write_bytes(cert)
        keyfile.write_bytes(key)
        keyfile.chmod(0o600)
        log.warning("no webhook certificate mounted: using a self-signed one",
                    extra={"cert_dir": settings.webhook_cert_dir, "hostnames": hostnames})
    return kopf.WebhookServer(
        addr=settings.webhook_addr, port=settings.webhook_port, host=host,
        certfile=str(certfile), pkeyfile=str(keyfile), cafile=str(cafile) if cafile.is_file() else None,
    )
