"""The one exception type for a bad configuration or input.

Raised wherever a user's choice (a model field, a task field, an option, a file, a run
directory) cannot work, with a message that says what is wrong and how to fix it. The command
line prints it as one line and exits with status 2; every other exception is a bug and keeps its
traceback. It is deliberately not a ValueError: an internal ValueError from JAX, Flax or our own
code must never be mistaken for a usage error (and tyro would draw its own box around one).
It lives in arch/ because arch/ is the bottom of the import graph (train/ imports it from here).
"""


class ConfigError(Exception):
    """A configuration or input that cannot work; the message says how to fix it."""
