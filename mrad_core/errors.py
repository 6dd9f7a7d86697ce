"""One base class for every error meant for the user: the CLI prints it as one line, the app as a message."""


class MRADError(ValueError):
    """A problem with the user's input or files; str(error) says what and how to fix it."""
