"""Backup sources: each turns a live server's state into one local artifact plus its manifest."""
