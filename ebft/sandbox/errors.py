"""Exceptions of :mod:`ebft.sandbox`."""

from __future__ import annotations


class SandboxUnavailableError(RuntimeError):
    """No (or not the requested) isolation mode works on this machine."""
