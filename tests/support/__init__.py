"""Helpers shared by tests (not fixtures): tiny real models built on disk."""
