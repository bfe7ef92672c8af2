"""One exception type for everything the user can fix.

The CLI turns a :class:`UserError` into one line on stderr and exit status 2; anything else is
a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: a missing file, an unknown key, a folder that is not writable."""
