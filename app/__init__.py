"""Placeholder; replaced by the package implementation."""
