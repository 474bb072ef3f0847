"""The mark of an error a person can act on: the CLI prints it as one line and exits 2.

Every such error class (a bad spec, a malformed file, a store that cannot be read, a missing
environment, an output that cannot be written, ...) inherits ``UserError`` beside its usual base,
so the CLI catches them all without importing the modules that define them.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or an ordinary fault, with a one-line message naming what and where."""
