"""Tests of ``secureserve certs request`` (secureserve.csr) and of serving what a CA returns."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import ssl
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from server_helpers import HOST, running_server, write_slow_project

import secureserve.csr
from secureserve.cli import main
from secureserve.csr import MAX_NAMES, request_certificate
from secureserve.errors import ConfigError
from secureserve.keys import create_key
from secureserve.tls import server_context


def _request(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["certs", "request", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _csr(path: Path) -> x509.CertificateSigningRequest:
    return x509.load_pem_x509_csr(path.read_bytes())


def _sans(csr: x509.CertificateSigningRequest) -> list[x509.GeneralName]:
    return list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def _spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --------------------------------------------------------------------------- the files


def test_request_writes_a_signed_csr_with_every_name(tmp_path, capsys):
    """The CSR parses, is signed by the new key, names the host as CN then every SAN in order."""
    out_dir = tmp_path / "certs"
    code, out, _ = _request(
        capsys,
        "--name", "api.example.com",
        "--san", "API.internal.example",
        "--san", "10.0.0.5",
        "--san", "2001:db8::1",
        "--san", "*.models.example.com",
        "--out-dir", str(out_dir),
    )  # fmt: skip
    assert code == 0
    csr = _csr(out_dir / "api.example.com.csr")
    key = serialization.load_pem_private_key(
        (out_dir / "api.example.com.key").read_bytes(), password=None
    )
    assert csr.is_signature_valid
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    assert _spki(key.public_key()) == _spki(csr.public_key())
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "api.example.com"
    assert _sans(csr) == [
        x509.DNSName("api.example.com"),
        x509.DNSName("api.internal.example"),
        x509.IPAddress(ipaddress.ip_address("10.0.0.5")),
        x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
        x509.DNSName("*.models.example.com"),
    ]
    usage = csr.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not csr.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert csr.signature_hash_algorithm is not None
    assert csr.signature_hash_algorithm.name == "sha256"
    assert "api.example.com.chain.pem" in out
    assert "not the root" in out
    assert 'key = "' + (out_dir / "api.example.com.key").as_posix() + '"' in out


def test_request_key_is_0600_and_csr_0644_whatever_the_umask(tmp_path, capsys):
    """The key is owner-only even under a lax umask; the public CSR is 0644 even under 077."""
    for umask, folder in ((0o000, "lax"), (0o077, "strict")):
        previous = os.umask(umask)
        try:
            code, _, _ = _request(
                capsys, "--name", "h.example", "--out-dir", str(tmp_path / folder)
            )
        finally:
            os.umask(previous)
        assert code == 0
        assert _mode(tmp_path / folder / "h.example.key") == 0o600
        assert _mode(tmp_path / folder / "h.example.csr") == 0o644


def test_request_new_out_dir_is_private(tmp_path, capsys):
    """A folder --out-dir creates for the key is 0700."""
    code, _, _ = _request(capsys, "--name", "h.example", "--out-dir", str(tmp_path / "a" / "b"))
    assert code == 0
    assert _mode(tmp_path / "a" / "b") == 0o700


def test_request_defaults_to_the_current_folder(tmp_path, capsys, monkeypatch):
    """Without --out-dir the files go to the working directory, named after --name."""
    monkeypatch.chdir(tmp_path)
    code, _, _ = _request(capsys, "--name", "127.0.0.1")
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["127.0.0.1.csr", "127.0.0.1.key"]
    assert _sans(_csr(tmp_path / "127.0.0.1.csr")) == [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    ]


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("*.example.com", "_wildcard.example.com"),
        ("::1", "--1"),
        ("Api.Example.COM", "api.example.com"),
    ],
)
def test_request_file_names(tmp_path, name, stem):
    """A wildcard and an IPv6 address get file names any system accepts; names are lower-cased."""
    made = request_certificate(name, out_dir=tmp_path)
    assert made.key == tmp_path / f"{stem}.key"
    assert made.csr == tmp_path / f"{stem}.csr"
    assert made.key.exists()
    assert made.csr.exists()


def test_request_drops_duplicate_names(tmp_path):
    """A SAN repeating the name (in any case) or another SAN appears once."""
    made = request_certificate(
        "a.example", sans=["A.EXAMPLE", "10.0.0.1", "10.0.0.1", "b.example"], out_dir=tmp_path
    )
    assert made.names == ("DNS:a.example", "IP:10.0.0.1", "DNS:b.example")
    assert len(_sans(_csr(made.csr))) == 3


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("existing", ["h.example.key", "h.example.csr"])
def test_request_never_overwrites(tmp_path, capsys, existing):
    """An existing key or CSR is kept byte for byte and nothing else is written."""
    (tmp_path / existing).write_bytes(b"old")
    code, out, err = _request(capsys, "--name", "h.example", "--out-dir", str(tmp_path))
    assert code == 1
    assert out == ""
    assert str(tmp_path / existing) in err
    assert "never overwrites" in err
    assert "--out-dir" in err
    assert [p.name for p in tmp_path.iterdir()] == [existing]
    assert (tmp_path / existing).read_bytes() == b"old"


def test_request_refuses_a_symlink_in_the_key_place(tmp_path):
    """A dangling link where the key would go is not followed (it could point anywhere)."""
    (tmp_path / "h.example.key").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="already exists"):
        request_certificate("h.example", out_dir=tmp_path)
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize(
    ("value", "fix"),
    [
        ("", "is empty"),
        ("exa mple.com", "letters, digits and inner hyphens"),
        ("a_b.example.com", "no '_'"),
        ("-a.example.com", "no '-' at either end"),
        ("a..example.com", "empty label"),
        (".example.com", "empty label"),
        ("example.com.", "drop the trailing dot"),
        ("*.com", "at least two labels"),
        ("*", "at least two labels"),
        ("a.*.example.com", "only as the whole first label"),
        ("api*.example.com", "only as the whole first label"),
        ("**.example.com", "only as the whole first label"),
        ("bücher.example", "xn--"),
        ("x" * 64 + ".example.com", "longer than 63"),
        (".".join(["a" * 60] * 5), "longer than 253"),
        ("10.0.0", "broken IP address"),
        ("010.0.0.1", "broken IP address"),
        ("fe80::1%eth0", "without the zone"),
    ],
)
def test_request_refuses_bad_names(tmp_path, capsys, value, fix):
    """Each bad --san is refused naming the value and the fix; no file, no folder is made."""
    out_dir = tmp_path / "out"
    code, out, err = _request(
        capsys, "--name", "ok.example", f"--san={value}", "--out-dir", str(out_dir)
    )
    assert code == 1
    assert out == ""
    assert err.startswith("secureserve: error: --san ")
    if value:
        assert repr(value) in err
    assert fix in err
    assert not out_dir.exists()


def test_request_refuses_a_bad_name_as_name(tmp_path, capsys):
    """A bad --name is reported as --name."""
    code, _, err = _request(capsys, "--name", "a..b", "--out-dir", str(tmp_path))
    assert code == 1
    assert "--name 'a..b'" in err
    assert list(tmp_path.iterdir()) == []


def test_request_refuses_a_name_too_long_for_the_common_name(tmp_path):
    """A valid host name over 64 characters cannot be the CN: the message says to use --san."""
    name = "a" * 60 + ".example.com"
    with pytest.raises(ConfigError, match=r"at most 64\. .*--san"):
        request_certificate(name, out_dir=tmp_path)
    made = request_certificate("short.example", sans=[name], out_dir=tmp_path)
    assert f"DNS:{name}" in made.names


def test_request_refuses_too_many_names(tmp_path):
    """More names than a CA accepts are refused before anything is written."""
    sans = [f"h{n}.example" for n in range(MAX_NAMES)]
    with pytest.raises(ConfigError, match=f"{MAX_NAMES + 1} names"):
        request_certificate("x.example", sans=sans, out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_request_needs_a_name(capsys):
    """--name is required: an argparse usage error, exit 2."""
    with pytest.raises(SystemExit) as exited:
        main(["certs", "request", "--san", "a.example"])
    assert exited.value.code == 2
    assert "--name" in capsys.readouterr().err


@pytest.mark.parametrize("failing", [1, 2], ids=["key", "csr"])
def test_request_failure_leaves_nothing_behind(tmp_path, monkeypatch, failing):
    """A disk error on either file leaves neither file nor a temporary behind."""
    calls = []
    real_link = os.link

    def link(source, target):
        calls.append(target)
        if len(calls) == failing:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_link(source, target)

    monkeypatch.setattr(secureserve.csr.os, "link", link)
    with pytest.raises(ConfigError, match="No space left on device"):
        request_certificate("h.example", out_dir=tmp_path)
    assert len(calls) == failing
    assert list(tmp_path.iterdir()) == []


def test_request_out_dir_that_is_a_file(tmp_path):
    """--out-dir naming a file is refused with a message naming it."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        request_certificate("h.example", out_dir=tmp_path / "file")


# --------------------------------------------------------------------------- the chain


class _CA:
    """A test root and an intermediate it signed, which signs leaves from CSRs."""

    def __init__(self, directory: Path) -> None:
        self.now = datetime.now(UTC)
        root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = self._certificate(
            "test root", root_key.public_key(), "test root", root_key, ca=True
        )
        self.intermediate_key = ec.generate_private_key(ec.SECP256R1())
        self.intermediate = self._certificate(
            "test intermediate",
            self.intermediate_key.public_key(),
            "test root",
            root_key,
            ca=True,
            depth=0,
        )
        self.root_pem = directory / "root.pem"
        self.root_pem.write_bytes(self.root.public_bytes(serialization.Encoding.PEM))

    def _certificate(self, subject, public_key, issuer, signer, *, ca, sans=None, depth=None):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - timedelta(minutes=5))
            .not_valid_after(self.now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=depth), True)
        )
        if sans is not None:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(signer, hashes.SHA256())

    def sign(self, csr_path: Path) -> x509.Certificate:
        """What a CA does with the request: a leaf with its key and names, from the intermediate."""
        csr = _csr(csr_path)
        assert csr.is_signature_valid
        common_name = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        return self._certificate(
            common_name,
            csr.public_key(),
            "test intermediate",
            self.intermediate_key,
            ca=False,
            sans=_sans(csr),
        )


def _pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def _handshake(context: ssl.SSLContext, client: ssl.SSLContext) -> None:
    """One in-process handshake for ``localhost``; raises what the client raises."""
    server_side, client_side = socket.socketpair()

    def accept() -> None:
        try:
            with context.wrap_socket(server_side, server_side=True) as tls:
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        with client.wrap_socket(client_side, server_hostname="localhost") as tls:
            assert tls.recv(2) == b"ok"
    finally:
        client_side.close()
        thread.join(5)


@pytest.fixture
def issued(tmp_path):
    """``certs request`` for localhost and 127.0.0.1, signed by a test intermediate."""
    ca = _CA(tmp_path)
    made = request_certificate("localhost", sans=[HOST], out_dir=tmp_path / "certs")
    leaf = ca.sign(made.csr)
    chain = made.key.with_suffix(".chain.pem")
    chain.write_bytes(_pem(leaf, ca.intermediate))
    leaf_only = tmp_path / "certs" / "leaf.pem"
    leaf_only.write_bytes(_pem(leaf))
    return ca, made, chain, leaf_only


def test_chain_file_verifies_against_the_root_alone(issued):
    """Leaf then intermediate in [tls] cert: a client that trusts only the root verifies it."""
    ca, made, chain, _ = issued
    client = ssl.create_default_context(cafile=ca.root_pem)
    _handshake(server_context(cert=chain, key=made.key), client)


def test_leaf_without_intermediate_fails_verification(issued):
    """The same leaf without its intermediate does not verify: the chain file is what matters."""
    ca, made, _, leaf_only = issued
    client = ssl.create_default_context(cafile=ca.root_pem)
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        _handshake(server_context(cert=leaf_only, key=made.key), client)


@pytest.mark.slow
def test_secureserve_run_serves_the_chain(tmp_path, issued):
    """`secureserve run` with the chain file answers a client trusting only the root."""
    ca, made, chain, _ = issued
    project = write_slow_project(tmp_path / "project")
    key = create_key(project / "secrets" / "api_keys.toml", name="t", roles=("predict",))
    env = {"SECURESERVE_TLS__CERT": str(chain), "SECURESERVE_TLS__KEY": str(made.key)}
    with running_server(project, dev=False, ca=ca.root_pem, key=key.secret, env=env) as server:
        with server.connect() as tls:
            served = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
        assert served.issuer == ca.intermediate.subject
        assert server.request("GET", "/v1/models", key=key.secret).status == 200
