"""selfheal: a self-healing NAS backup orchestrator."""

__version__ = "0.1.0"
