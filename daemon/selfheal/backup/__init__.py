"""Backups: sources make artifacts, transports carry them to the NAS."""
