"""Exception types shared by every layer (this module imports nothing)."""
from __future__ import annotations


class UsageError(ValueError):
    """The calling code passed something an API does not take: a bad argument value, an
    unknown option, a payload of the wrong shape. The fix is in the call, not in the
    data or the environment. A ValueError, so existing `except ValueError` still catches it;
    command lines turn it into one line on stderr and exit status 2."""
