"""Transports that carry artifacts to the NAS: a verified mount first, SSH/SFTP as fallback."""
