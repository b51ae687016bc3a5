"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(ValueError):
    """A mistake in the user's input (bad flag, missing file, mismatched checkpoint).

    The CLI prints its message as one line on stderr and exits with code 2; any other exception
    is an internal error (exit code 1). It subclasses ValueError so library users can catch it
    the usual way.
    """


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none): third-party
    errors can span pages, and a user error is one line."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def one_line(text: str) -> str:
    """`text` with every line break and other unprintable character escaped (a path or value the
    user typed may hold a newline): a message stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
