"""Tests that run on network-namespace hosts (see netns.py)."""
