"""Exceptions shared across the package."""


class UserError(Exception):
    """A problem with the user's input: the command line prints it as one line and exits with code 2."""


class Interrupted(Exception):
    """A Predictor task stopped between two of its batches because its interrupt check said so
    (:meth:`samclip.Predictor.interruptible`): its work is dropped and the cached image is left as it was."""
