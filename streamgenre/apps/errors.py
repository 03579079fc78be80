"""The error every command raises for a mistake its user can fix (bad argument, unreadable input).

:func:`streamgenre.apps.cli.main` turns it, like the library errors it lists, into one
``streamgenre COMMAND: error: MESSAGE`` line on stderr and exit code 2; see that module's docstring.
Its own module so that command modules (catalog, bench, ...) can raise it without importing the
CLI that imports them.
"""

from __future__ import annotations


class UsageError(Exception):
    """A mistake the user can fix; the message is the whole explanation (one line)."""
