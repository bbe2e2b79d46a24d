"""`Refused`: a request the panel will not carry out, raised by the domain before any side effect.

A leaf that every room imports: the API turns a refusal into a 4xx with its `code`
(panel/api/errors.py), the UI shows its message.
"""


class Refused(Exception):
    """A request the panel will not carry out; the API turns it into a 4xx with `code`."""

    def __init__(self, message: str, code: str, status: int = 409, field: str | None = None):
        super().__init__(message)
        self.message, self.code, self.status, self.field = message, code, status, field
