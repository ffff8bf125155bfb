"""The one exception type users see.

Anything wrong with what the user gave us (a file, a prompt, a model name, a
checkpoint) raises MaskmlError with a message that says what, where and how to
fix it. The CLI prints that message on one line and exits non-zero; library
users can catch it.
"""


class MaskmlError(Exception):
    """Bad input: the message is meant for the user, not a traceback reader."""
