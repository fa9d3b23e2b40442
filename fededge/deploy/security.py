"""Certificates and device keys for a deployment: TLS for the SuperLink, keys for devices.

* :func:`make_certificates` -- a private certificate authority (``ca.crt``)
  and a server certificate signed by it (``server.pem``, ``server.key``) for
  the SuperLink's addresses (``localhost`` and ``127.0.0.1`` always, plus the
  host names and IP addresses given). Devices verify the SuperLink with
  ``ca.crt``; only the SuperLink's machine needs ``ca.key`` and ``server.key``.
* :func:`make_device_key` -- an ECDSA P-384 key pair in OpenSSH format (what
  ``ssh-keygen -t ecdsa -b 384 -N ""`` writes): the private key stays on the
  device (``flower-supernode --auth-supernode-private-key``), the public key
  is registered with the SuperLink (``flwr supernode register``).

Uses the ``cryptography`` package (a dependency of Flower). Files holding
private keys are written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fededge.errors import ConfigError, ConfigIssue

#: Names every server certificate covers (a SuperLink reached on this machine).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class CertificateFiles:
    """Where :func:`make_certificates` put its files."""

    ca_cert: Path  # ca.crt: give it to every device (--root-certificates)
    ca_key: Path  # ca.key: keep it on the SuperLink's machine (signs new server certs)
    server_cert: Path  # server.pem (--ssl-certfile)
    server_key: Path  # server.key (--ssl-keyfile)
    hosts: tuple[str, ...]  # names and addresses the server certificate is valid for


def make_certificates(
    out_dir: str | Path, hosts: tuple[str, ...] = (), *, days: int = 365, overwrite: bool = False
) -> CertificateFiles:
    """Create a CA and a server certificate for ``hosts`` (plus loopback) in ``out_dir``.

    Parameters
    ----------
    out_dir : folder for ``ca.crt``, ``ca.key``, ``server.pem``, ``server.key``.
    hosts : extra DNS names or IP addresses devices use to reach the SuperLink.
    days : validity of both certificates.
    overwrite : replace existing files (else an existing set is an error).

    Raises
    ------
    ConfigError
        When the files exist and ``overwrite`` is False, or ``days`` < 1.
    """
    out = Path(out_dir)
    files = CertificateFiles(
        out / "ca.crt", out / "ca.key", out / "server.pem", out / "server.key", ()
    )
    issues = []
    if days < 1:
        issues.append(ConfigIssue("--days", f"must be >= 1, got {days}"))
    existing = [p for p in (files.ca_cert, files.server_cert) if p.exists()]
    if existing and not overwrite:
        issues.append(
            ConfigIssue(
                str(existing[0]),
                "exists; pass --overwrite to replace the certificates (devices then "
                "need the new ca.crt)",
            )
        )
    if issues:
        raise ConfigError(issues)
    out.mkdir(parents=True, exist_ok=True)
    names = tuple(dict.fromkeys([*LOOPBACK_HOSTS, *hosts]))
    now = dt.datetime.now(dt.UTC)
    valid_from, valid_to = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fededge deployment CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_to)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA384())
    )

    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_to)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    _write(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))
    _write(files.ca_key, _pem_private(ca_key), private=True)
    _write(files.server_key, _pem_private(server_key), private=True)
    return CertificateFiles(files.ca_cert, files.ca_key, files.server_cert, files.server_key, names)


def make_device_key(path: str | Path, *, comment: str = "", overwrite: bool = False) -> Path:
    """Write an ECDSA P-384 key pair: ``path`` (private, OpenSSH) and ``path.pub``.

    Returns the public key's path.

    Raises
    ------
    ConfigError
        When the key exists and ``overwrite`` is False.
    """
    private_path = Path(path)
    public_path = private_path.with_name(private_path.name + ".pub")
    if private_path.exists() and not overwrite:
        raise ConfigError(
            [
                ConfigIssue(
                    str(private_path),
                    "exists; pass --overwrite to replace the key (the device must then be "
                    "registered again)",
                )
            ]
        )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    _write(private_path, private, private=True)
    _write(public_path, public + (f" {comment}".encode() if comment else b"") + b"\n")
    return public_path


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _pem_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write ``data``; a private key is created with mode 0600 (never readable by others)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
