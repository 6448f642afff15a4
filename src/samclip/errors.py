"""Exceptions shared across the package."""


class UserError(Exception):
    """A problem with the user's input: the command line prints it as one line and exits with code 2."""
