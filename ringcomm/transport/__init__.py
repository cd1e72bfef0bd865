"""Links between ranks and what travels on them: TCP and shared-memory links, the
handshake, the call header, the abort protocol and the watch. Imports nothing from backends/.
"""
