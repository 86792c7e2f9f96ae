"""Shared fixtures: server availability, server-side connection counts."""
