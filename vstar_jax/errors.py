"""The project's error type for user mistakes.

:class:`VstarError` is what a user can fix (a bad flag, a frame count a method cannot take, a
checkpoint without a component). The command line reports it as one line with exit status 2;
anything else is an internal bug and keeps its traceback. It subclasses ``ValueError`` so
callers that catch ``ValueError`` (the library's documented contract) keep working.
"""


class VstarError(ValueError):
    """A user's mistake, reported as one line (``error: ...``, exit status 2)."""
