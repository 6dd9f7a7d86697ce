"""One base class for every error meant for the user: the CLI prints it as one line, the app as a message."""


class MRADError(ValueError):
    """A problem with the user's input or files; str(error) says what and how to fix it."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """'<ExceptionType>: <first line of its message>' (at most `limit` characters of the message), for one-line
    messages that wrap an unexpected exception."""
    text = str(exc).splitlines()[0][:limit] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"
