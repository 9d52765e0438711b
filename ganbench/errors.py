"""Errors a user can cause and fix.

A :class:`GanbenchError` is shown as one line (``ganbench: error: <message>``) with no traceback and a non-zero exit
status. Its message is one sentence that names the problem and, where there is one, the fix.
"""


class GanbenchError(Exception):
    """A problem with the user's input (config, data, checkpoint) or a run that cannot go on (e.g. NaN)."""
