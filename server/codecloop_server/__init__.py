"""codecloop's server: real libx264 evaluation of video signatures behind gRPC."""

from codecloop_server.server import RunningServer, ServerConfig, serve, start

__all__ = ["RunningServer", "ServerConfig", "serve", "start"]
