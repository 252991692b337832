"""Turning a container spec into isolated processes."""
