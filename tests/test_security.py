"""Certificates for the SuperLink and keys for devices."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from fededge.deploy.security import make_certificates, make_device_key
from fededge.errors import ConfigError


def test_server_certificate_covers_loopback_and_the_given_hosts(tmp_path: Path) -> None:
    files = make_certificates(tmp_path, ("pi-server.lan", "192.168.1.20"))
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    # signed by the CA, which is a CA; the server certificate is not
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "pi-server.lan"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("192.168.1.20"),
    }
    for key in (files.ca_key, files.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    with pytest.raises(ConfigError, match="--overwrite"):
        make_certificates(tmp_path)
    make_certificates(tmp_path, overwrite=True)


def test_device_key_is_an_openssh_p384_pair(tmp_path: Path) -> None:
    public_path = make_device_key(tmp_path / "keys" / "device-0", comment="device 0")
    private = load_ssh_private_key((tmp_path / "keys" / "device-0").read_bytes(), None)
    public = load_ssh_public_key(public_path.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert private.curve.name == public.curve.name == "secp384r1"
    assert private.public_key().public_numbers() == public.public_numbers()
    assert public_path.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert stat.S_IMODE((tmp_path / "keys" / "device-0").stat().st_mode) == 0o600
    with pytest.raises(ConfigError, match="registered again"):
        make_device_key(tmp_path / "keys" / "device-0")
