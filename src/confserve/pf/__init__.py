"""Gramine-compatible protected files."""
