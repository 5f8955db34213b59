"""Telling a package that is not installed from one that is installed but broken."""

from __future__ import annotations


def not_installed(e: BaseException, name: str) -> bool:
    """Whether `e`, raised importing `name`, means `name` (or a package above it) is not there. Anything
    else (built for another numpy, a dependency of its own missing) is a broken install: advice to
    install it would change nothing."""
    return isinstance(e, ModuleNotFoundError) and bool(e.name) and (name + ".").startswith(e.name + ".")
