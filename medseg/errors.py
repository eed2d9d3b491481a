"""The exception types for problems a user can fix; the CLI prints them as a single line."""


class MedsegError(Exception):
    """Bad input, output or settings, with a message that says what to do about it."""


class OutputError(MedsegError):
    """Outputs cannot be written (disk full, read-only, no permission): every later case would
    fail the same way, so a batch stops instead of skipping to the next case."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (for a one-line error), or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def find_medseg_error(exc: BaseException) -> MedsegError | None:
    """The MedsegError behind exc, also when a library (e.g. a MONAI transform) wrapped it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, MedsegError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
