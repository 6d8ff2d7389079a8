"""The report's one error type."""


class ReportError(Exception):
    """A problem with the report's inputs; the message is one readable line for the user."""
