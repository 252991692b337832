"""coracle: a container engine for Linux that speaks the Docker Engine API."""

__version__ = "0.1.0"
