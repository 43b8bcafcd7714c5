"""Helpers shared by the tests: fixture RPMs and repositories (see fixtures.py)."""
