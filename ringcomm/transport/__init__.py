"""Sockets for the ring backend: addresses, authenticated connections, message headers."""
