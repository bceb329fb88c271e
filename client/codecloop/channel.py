"""The gRPC channel of a :class:`codecloop.Client`: target syntax, retry and load-balancing policy,
TLS, and the one mapping from a failed call to the SDK's typed errors."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence

import grpc

from codecloop_wire.errors import (
    ERROR_METADATA_KEY,
    KINDS,
    CodecLoopAuthError,
    CodecLoopError,
    CodecLoopLimitError,
    CodecLoopServerError,
    CodecLoopUnavailableError,
    CodecLoopValueError,
)

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
_SERVICE = "codecloop.v1.CodecLoop"


def channel_target(target: str | Sequence[str]) -> str:
    """A gRPC target for one address (``host:port``, ``dns:///name:port``, ...) or several
    ``ip:port`` replicas (-> ``ipv4:///a:p,b:q`` or ``ipv6:///...``)."""
    if isinstance(target, str):
        return target
    addresses = list(target)
    if not addresses:
        raise CodecLoopValueError("target: the list of server addresses is empty")
    families = set()
    for address in addresses:
        host = address.rsplit(":", 1)[0].strip("[]")
        try:
            families.add(ipaddress.ip_address(host).version)
        except ValueError:
            raise CodecLoopValueError(
                f"target: {address!r} is not ip:port; for host names use one 'dns:///name:port' target (every A record is a replica)"
            ) from None
    if len(families) != 1:
        raise CodecLoopValueError("target: mix of IPv4 and IPv6 addresses; use one family")
    return f"ipv{families.pop()}:///" + ",".join(addresses)


def service_config(max_attempts: int) -> str:
    """gRPC's own retry policy: UNAVAILABLE (a busy server, a lost replica) is retried with
    exponential backoff (``max_attempts`` 1: no retries); round_robin spreads calls over every
    address the target resolves to."""
    retry = {
        "maxAttempts": max_attempts,
        "initialBackoff": "0.2s",
        "maxBackoff": "5s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    method = {"name": [{"service": _SERVICE}], **({"retryPolicy": retry} if max_attempts > 1 else {})}
    return json.dumps({"loadBalancingConfig": [{"round_robin": {}}], "methodConfig": [method]})


def open_channel(
    target: str,
    max_message_bytes: int,
    max_attempts: int,
    tls: bool,
    root_certificates: bytes | None,
    certificate_chain: bytes | None,
    private_key: bytes | None,
) -> grpc.Channel:
    """A channel to ``target`` with the message limit both ways, retries, and TLS when asked for
    (any certificate given, or ``tls``: system roots)."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config(max_attempts)),
        # retries replay the request from a buffer; it must hold a whole request to retry at all
        ("grpc.per_rpc_retry_buffer_size", max_message_bytes),
        ("grpc.retry_buffer_size", 4 * max_message_bytes),
    ]
    if tls or root_certificates or certificate_chain:
        creds = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
        return grpc.secure_channel(target, creds, options=options)
    return grpc.insecure_channel(target, options=options)


def error_from(err: grpc.RpcError) -> CodecLoopError:
    """The typed SDK error of a failed call: the kind the server named in the trailing metadata
    (``codecloop_wire.errors``), else by status code."""
    code, details = err.code(), err.details() or ""
    trailing = dict(err.trailing_metadata() or ()) if hasattr(err, "trailing_metadata") else {}
    kind = trailing.get(ERROR_METADATA_KEY)
    if kind in KINDS:
        return KINDS[kind](details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return CodecLoopValueError(details)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return CodecLoopLimitError(details)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return CodecLoopAuthError(details)
    if code == grpc.StatusCode.UNAVAILABLE:
        return CodecLoopUnavailableError(details)  # unreachable, or shutting down
    return CodecLoopServerError(f"{code.name}: {details}", code.name)
