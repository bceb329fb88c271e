"""Transport security: TLS / mutual TLS credentials, the bearer-token interceptor, and the rule that
plaintext is served only on loopback unless explicitly allowed."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from codecloop_wire.errors import CodecLoopAuthError

# Health checks stay open so that load balancers, Docker and Kubernetes probes need no token.
OPEN_METHODS_PREFIX = "/grpc.health.v1.Health/"


@dataclass(frozen=True)
class SecurityConfig:
    """tls_cert/tls_key: PEM files of the server's certificate chain and key (TLS on);
    tls_client_ca: PEM of the CA that signs client certificates (mutual TLS: clients without one are
    refused); token_file: a file of bearer tokens, one per line (``NAME TOKEN`` or ``TOKEN``), one of
    which every call must carry (metadata ``authorization: Bearer <token>``); allow_insecure: serve plaintext on a non-loopback host."""

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

    def tokens(self) -> dict[str, str]:
        """Bearer token -> the client identity it stands for (empty: no token required).

        The token file holds one token per line (``#`` lines and blank lines skipped), optionally
        preceded by a name and a space: ``alice <token>``. Each token is its own client for quotas
        and fair shares; an unnamed one is called ``token-<line number>``.
        """
        if self.token_file is None:
            return {}
        tokens: dict[str, str] = {}
        for number, line in enumerate(Path(self.token_file).read_text().splitlines(), 1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            if len(parts) > 2:
                raise ValueError(f"token file {self.token_file} line {number}: expected 'TOKEN' or 'NAME TOKEN'")
            name, token = (parts[0], parts[1]) if len(parts) == 2 else (f"token-{number}", parts[0])
            if len(token) < 16:
                raise ValueError(f"token file {self.token_file} line {number}: the token must have at least 16 characters")
            if token in tokens or name in tokens.values():
                raise ValueError(f"token file {self.token_file} line {number}: token or name {name!r} given twice")
            tokens[token] = name
        if not tokens:
            raise ValueError(f"token file {self.token_file}: no token in it")
        return tokens


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


def _one(metadata, key: str) -> str | None:
    """The single value of metadata ``key`` (None when absent); CodecLoopAuthError when repeated,
    so that no two parts of the stack can read different values of it."""
    values = [v for k, v in (metadata or ()) if k == key]
    if len(values) > 1:
        raise CodecLoopAuthError(f"metadata {key!r}: given {len(values)} times; send it exactly once")
    return values[0] if values else None


class Authenticator:
    """Who a call is, when authentication is on: the client certificate (mutual TLS) and/or which
    configured bearer token it carried. Quotas and fair shares key on this identity, never on the
    self-declared ``client-id`` metadata, when it exists."""

    def __init__(self, tokens: dict[str, str], mutual_tls: bool) -> None:
        self._tokens = {f"Bearer {t}".encode(): name for t, name in tokens.items()}
        self.mutual_tls = mutual_tls

    @property
    def enabled(self) -> bool:
        return bool(self._tokens) or self.mutual_tls

    def token_identity(self, metadata) -> str | None:
        """The name of the token in ``metadata`` (None when no token is configured); CodecLoopAuthError
        for a missing, wrong or repeated one. Compares with every token in constant time."""
        if not self._tokens:
            return None
        given = (_one(metadata, "authorization") or "").encode()
        found = None
        for expected, name in self._tokens.items():
            if hmac.compare_digest(given, expected):
                found = name
        if found is None:
            raise CodecLoopAuthError("missing or wrong bearer token (metadata 'authorization: Bearer <token>')")
        return found

    def identity(self, context: grpc.aio.ServicerContext) -> str | None:
        """``cert:<subject>`` and/or ``token:<name>`` of an authenticated call; None without authentication."""
        parts = []
        if self.mutual_tls:
            auth = context.auth_context() or {}
            subject = (auth.get("x509_subject") or auth.get("x509_common_name") or [b"?"])[0]
            parts.append(f"cert:{subject.decode(errors='replace')}")
        token = self.token_identity(context.invocation_metadata())
        if token is not None:
            parts.append(f"token:{token}")
        return " ".join(parts) or None


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call without exactly one ``authorization: Bearer <token>`` of a configured
    token (constant-time compare), except the health service."""

    def __init__(self, auth: Authenticator, deny: Callable[[CodecLoopAuthError, grpc.aio.ServicerContext], Awaitable[None]]) -> None:
        self._auth = auth
        self._deny = deny  # aborts with the status that lifecycle.status_for maps the error to

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_METHODS_PREFIX):
            return handler
        try:
            self._auth.token_identity(details.invocation_metadata)
            return handler
        except CodecLoopAuthError as err:
            error = err

        async def deny_unary(request, context):
            await self._deny(error, context)

        async def deny_stream(request, context):
            await self._deny(error, context)
            yield  # pragma: no cover - unreachable, makes this an async generator

        kind = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.unary_unary_rpc_method_handler
        fn = deny_stream if handler.unary_stream else deny_unary
        return kind(fn, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
