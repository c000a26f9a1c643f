"""The control socket: how the CLI talks to the running daemon.

Import from the submodules (`client`, `server`, `protocol`); the client imports only
the standard library, so a CLI call stays quick.
"""
