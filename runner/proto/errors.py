"""The one error type raised for unreadable, malformed or inconsistent Caffe files."""
from __future__ import annotations


class ProtoError(ValueError):
    """A Caffe file or message cannot be used; the message names the file and the place."""
