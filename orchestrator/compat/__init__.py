"""Compatibility layers for clients of the projects mlbridge grew from."""
