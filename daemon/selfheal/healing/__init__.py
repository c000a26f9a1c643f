"""Self-healing services: router, escalation, notifiers, advisor."""
