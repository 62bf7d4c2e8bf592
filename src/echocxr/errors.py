"""User-facing errors: the CLI prints these as one line, never as a traceback."""


class UserError(Exception):
    """Bad input from the user (missing file, unreadable image, bad option); message is shown as-is."""
