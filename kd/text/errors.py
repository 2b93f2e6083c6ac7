"""The one error type of the text side."""


class TextError(ValueError):
    """Text input that cannot be used: the message names the file, entry or path to fix."""
