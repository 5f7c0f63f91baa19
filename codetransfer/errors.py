"""The one exception type that user-facing code raises for bad input.

Library code raises :class:`CodetransferError` with a one-line message that names the field or
flag, what was expected and what was given, and how to fix it. The CLI prints the message as
``error: ...`` and exits non-zero without a traceback.
"""

import difflib


class CodetransferError(ValueError):
    """Bad input (config, data, checkpoint, CLI argument): the message says what and how to fix it."""


def did_you_mean(name: str, choices) -> str:
    """A ' (did you mean 'x'?)' suffix for an unknown name, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
