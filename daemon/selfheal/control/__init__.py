"""The control socket: how the CLI talks to the running daemon."""

from selfheal.control.client import ControlClient, DaemonNotRunning, acall
from selfheal.control.protocol import API_VERSION, MAX_REQUEST_BYTES, Request, parse_request
from selfheal.control.server import ControlServer, Handler, UnsafeSocketPath

__all__ = [
    "API_VERSION",
    "MAX_REQUEST_BYTES",
    "ControlClient",
    "ControlServer",
    "DaemonNotRunning",
    "Handler",
    "Request",
    "UnsafeSocketPath",
    "acall",
    "parse_request",
]
