"""Transport security: TLS / mutual TLS credentials, the bearer-token interceptor, and the rule that
plaintext is served only on loopback unless explicitly allowed."""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import grpc
from codecloop.errors import CodecLoopAuthError

# Health checks stay open so that load balancers, Docker and Kubernetes probes need no token.
OPEN_METHODS_PREFIX = "/grpc.health.v1.Health/"


@dataclass(frozen=True)
class SecurityConfig:
    """tls_cert/tls_key: PEM files of the server's certificate chain and key (TLS on);
    tls_client_ca: PEM of the CA that signs client certificates (mutual TLS: clients without one are
    refused); token_file: a file whose stripped content is the bearer token every call must carry
    (metadata ``authorization: Bearer <token>``); allow_insecure: serve plaintext on a non-loopback host."""

    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    token_file: str | None = None
    allow_insecure: bool = False

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")

    def token(self) -> str | None:
        if self.token_file is None:
            return None
        token = Path(self.token_file).read_text().strip()
        if len(token) < 16:
            raise ValueError(f"token file {self.token_file}: the token must have at least 16 characters")
        return token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name or 0.0.0.0 / :: (every interface)


def add_port(server: grpc.aio.Server, host: str, port: int, config: SecurityConfig) -> int:
    """Bind ``host:port`` with TLS when configured; refuse plaintext beyond loopback unless allowed."""
    address = f"{host}:{port}"
    if config.tls_cert is None:
        if not (is_loopback(host) or config.allow_insecure):
            raise ValueError(
                f"refusing plaintext on {host}: give --tls-cert/--tls-key, or --allow-insecure "
                "(e.g. behind a TLS-terminating proxy or inside a private pod network)"
            )
        return server.add_insecure_port(address)
    creds = grpc.ssl_server_credentials(
        [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())],
        root_certificates=Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None,
        require_client_auth=config.tls_client_ca is not None,
    )
    return server.add_secure_port(address, creds)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call without ``authorization: Bearer <token>`` (constant-time compare),
    except the health service."""

    def __init__(self, token: str, deny: Callable[[CodecLoopAuthError, grpc.aio.ServicerContext], Awaitable[None]]) -> None:
        self._expected = f"Bearer {token}".encode()
        self._deny = deny  # aborts with the status that service._status_for maps the error to

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_METHODS_PREFIX):
            return handler
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(given.encode(), self._expected):
            return handler
        error = CodecLoopAuthError("missing or wrong bearer token (metadata 'authorization: Bearer <token>')")

        async def deny_unary(request, context):
            await self._deny(error, context)

        async def deny_stream(request, context):
            await self._deny(error, context)
            yield  # pragma: no cover - unreachable, makes this an async generator

        kind = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.unary_unary_rpc_method_handler
        fn = deny_stream if handler.unary_stream else deny_unary
        return kind(fn, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
