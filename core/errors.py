"""The project's exception types. Messages say what was wrong and how to fix it."""


class WorkbenchError(Exception):
    """Base class for errors shown to people as one line."""


class InputError(WorkbenchError):
    """Bad input from the user: a file, a flag, a value out of range."""


class ModelError(WorkbenchError):
    """A subject or explainer model that cannot be loaded or is not supported."""


class LLMError(WorkbenchError):
    """An LLM backend failed or returned something unusable."""


class NotFoundError(WorkbenchError):
    """Something asked for is not in the database."""
