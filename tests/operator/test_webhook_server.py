"""The webhook's HTTPS server: a mounted certificate, or the self-signed fallback, served by Kopf."""

from __future__ import annotations

import base64
import ssl

import aiohttp
import trustme

from rayhistory.operator.config import Settings
from rayhistory.operator.webhook import build_webhook_server, self_signed_certificate
from tests.conftest import free_port


async def answer(request, **_):
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": {"uid": request["request"]["uid"], "allowed": True}}


async def review_through(server) -> dict:
    """Start Kopf's server, then call it as the API server would: HTTPS, trusting only its caBundle."""
    configs = server(answer)
    config = await configs.__anext__()
    try:
        context = ssl.create_default_context(cadata=base64.b64decode(config["caBundle"]).decode())
        async with aiohttp.ClientSession() as http:
            async with http.post(config["url"] + "/inject", json={"request": {"uid": "u1"}}, ssl=context) as resp:
                assert resp.status == 200
                return await resp.json()
    finally:
        await configs.aclose()


async def test_self_signed_fallback_is_trusted_through_its_ca_bundle(tmp_path):
    settings = Settings(webhook_addr="127.0.0.1", webhook_port=free_port(), webhook_host="127.0.0.1",
                        webhook_cert_dir=str(tmp_path / "absent"))
    answered = await review_through(build_webhook_server(settings))
    assert answered["response"] == {"uid": "u1", "allowed": True}


async def test_mounted_certificate_is_used(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "tls.key"))
    (tmp_path / "tls.crt").write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    settings = Settings(webhook_addr="127.0.0.1", webhook_port=free_port(), webhook_host="127.0.0.1",
                        webhook_cert_dir=str(tmp_path))
    server = build_webhook_server(settings)
    assert server.certfile == str(tmp_path / "tls.crt")
    assert (await review_through(server))["response"]["allowed"] is True


def test_self_signed_certificate_names():
    from cryptography import x509

    pem, _ = self_signed_certificate(["webhook.ns.svc", "10.0.0.1"])
    cert = x509.load_pem_x509_certificate(pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["webhook.ns.svc"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.1"]
