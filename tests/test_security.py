"""TLS, mutual TLS and the bearer token, against a real server; plaintext refused beyond loopback."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys

import numpy as np
import pytest

import codecloop
from codecloop import Codec, DatasetCarriers
from tests.conftest import _start_server, block_signature

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

TOKEN = "s3cret-token-of-enough-length"


def _cert(name: str, key, issuer_name: str, issuer_key, ca: bool = False):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(obj) -> bytes:
    if hasattr(obj, "private_bytes"):
        return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return obj.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca_key, rogue_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("codecloop test CA", ca_key, "codecloop test CA", ca_key, ca=True)
    files = {"ca.pem": _pem(ca)}
    for name, issuer, issuer_key in (("server", "codecloop test CA", ca_key), ("client", "codecloop test CA", ca_key), ("rogue", "rogue CA", rogue_key)):
        key = ec.generate_private_key(ec.SECP256R1())
        files[f"{name}.pem"], files[f"{name}.key"] = _pem(_cert(name, key, issuer, issuer_key)), _pem(key)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "token").write_text(TOKEN + "\n")
    return folder


@pytest.fixture(scope="module")
def secure_server(pki):
    proc, target = _start_server(
        ["--workers", "1", "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
         "--tls-client-ca", str(pki / "ca.pem"), "--token-file", str(pki / "token")]
    )  # fmt: skip
    yield target
    proc.terminate()
    proc.wait(timeout=30)


def client(target, pki, who="client", token=TOKEN, **kw):
    return codecloop.Client(target, timeout=60, max_attempts=1, token=token, root_certificates=(pki / "ca.pem").read_bytes(),
                            certificate_chain=(pki / f"{who}.pem").read_bytes() if who else None,
                            private_key=(pki / f"{who}.key").read_bytes() if who else None, **kw)  # fmt: skip


def test_mutual_tls_and_token_accept_the_right_client(secure_server, pki):
    with client(secure_server, pki) as c:
        res = c.evaluate(block_signature(3)[None], carriers=DatasetCarriers(num_clips=2), codecs=Codec(preset="ultrafast"))
        assert len(res.candidates) == 1 and res.candidates[0].codecs[0].psnr_db > 30


def test_wrong_or_missing_token_is_unauthenticated(secure_server, pki):
    for token in (None, "wrong-token-of-enough-length"):
        with client(secure_server, pki, token=token) as c:
            with pytest.raises(codecloop.CodecLoopAuthError, match="bearer token"):
                c.info()
            with pytest.raises(codecloop.CodecLoopAuthError):  # the streaming method too
                list(c.evaluate_stream(block_signature(3)[None], carriers=DatasetCarriers(num_clips=2)))
            assert c.health() == "SERVING"  # health stays open for probes


def test_tls_refuses_clients_without_a_trusted_certificate(secure_server, pki):
    for who in (None, "rogue"):  # no client certificate; one from another CA
        with client(secure_server, pki, who=who) as c, pytest.raises(codecloop.CodecLoopUnavailableError):
            c.info(timeout=10)
    with codecloop.Client(secure_server, timeout=10, max_attempts=1, token=TOKEN) as plain:  # plaintext to a TLS port
        with pytest.raises(codecloop.CodecLoopUnavailableError):
            plain.info()


def test_plaintext_beyond_loopback_and_bad_settings_refused(tmp_path):
    short = tmp_path / "short"
    short.write_text("abc")
    for extra, message in (
        (["--host", "0.0.0.0"], "refusing plaintext on 0.0.0.0"),
        (["--tls-cert", "x.pem"], "--tls-cert and --tls-key go together"),
        (["--token-file", str(short)], "at least 16 characters"),
    ):
        out = subprocess.run([sys.executable, "-m", "codecloop.cli", "serve", "--port", "0", "--workers", "1", *extra],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert out.returncode == 2 and message in out.stderr, out.stderr


ALICE, BOB = "alice-token-of-enough-length", "bob-token-of-enough-length"


@pytest.fixture(scope="module")
def two_token_server(tmp_path_factory):
    """Plaintext on loopback, two named tokens, one call in progress per client."""
    tokens = tmp_path_factory.mktemp("tokens") / "tokens"
    tokens.write_text(f"# name token\nalice {ALICE}\nbob {BOB}\n")
    proc, target = _start_server(["--workers", "1", "--token-file", str(tokens), "--max-client-calls", "1"])
    yield target
    proc.terminate()
    proc.wait(timeout=30)


def test_quotas_key_on_the_token_not_the_claimed_client_id(two_token_server):
    """Alice cannot dodge her quota by claiming another client-id, and Bob, claiming Alice's
    client-id, does not use up hers."""
    small = {"carriers": DatasetCarriers(num_clips=2), "codecs": Codec(preset="ultrafast")}
    pop = np.stack([block_signature(s) for s in range(80, 96)])
    with codecloop.Client(two_token_server, token=ALICE, client_id="x", max_attempts=1, timeout=120) as alice_x:
        stream = alice_x.evaluate_stream(pop, carriers=DatasetCarriers(num_clips=16))
        next(stream)  # alice's one call is in progress
        try:
            with codecloop.Client(two_token_server, token=ALICE, client_id="y", max_attempts=1) as alice_y:
                with pytest.raises(codecloop.CodecLoopLimitError, match="client 'token:alice': 1 calls in progress"):
                    alice_y.evaluate(block_signature(97)[None], **small)
            with codecloop.Client(two_token_server, token=BOB, client_id="x", max_attempts=1, timeout=120) as bob_x:
                assert len(bob_x.evaluate(block_signature(98)[None], **small).candidates) == 1
                load = bob_x.info().load
            assert "dispatched_tasks{client=token:bob}" in load and not any("client=x" in k for k in load), load
        finally:
            stream.close()


def test_repeated_authorization_metadata_is_unauthenticated(two_token_server):
    import grpc

    from codecloop_wire.v1 import codecloop_pb2 as pb
    from codecloop_wire.v1 import codecloop_pb2_grpc as pb_grpc

    with grpc.insecure_channel(two_token_server) as channel:
        stub = pb_grpc.CodecLoopStub(channel)
        assert stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=(("authorization", f"Bearer {BOB}"),), timeout=30).workers == 1
        for pair in ((f"Bearer {'w' * 30}", f"Bearer {ALICE}"), (f"Bearer {ALICE}", f"Bearer {'w' * 30}"), (f"Bearer {ALICE}",) * 2):
            with pytest.raises(grpc.RpcError) as info:
                stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=[("authorization", v) for v in pair], timeout=30)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "metadata 'authorization': given 2 times" in info.value.details()


def test_mutual_tls_identity_keys_the_queues(secure_server, pki):
    """With client certificates, the scheduler's client is the certificate (and token), whatever
    client-id the caller claims."""
    with client(secure_server, pki, client_id="spoof") as c:
        c.evaluate(block_signature(5)[None], carriers=DatasetCarriers(num_clips=2), codecs=Codec(preset="ultrafast"))
        keys = [k for k in c.info().load if k.startswith("dispatched_tasks")]
    assert keys == ["dispatched_tasks{client=cert:CN=client token:token-1}"], keys
