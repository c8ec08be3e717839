"""The one exception type that reaches the user as a single readable line."""


class S3LError(Exception):
    """A problem the user can fix (bad path, impossible config, wrong checkpoint).

    The message must say what is wrong and what to do; `train.py` prints it as one line
    and exits with status 2, without a traceback.
    """
