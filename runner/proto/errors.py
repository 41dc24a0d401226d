"""The one error type raised for unreadable, malformed or inconsistent Caffe files."""
from __future__ import annotations


class ProtoError(ValueError):
    """A Caffe file or message cannot be used; the message names the file and the place."""


def check_required_fields(msg, origin: str) -> None:
    """Raise ProtoError when required fields are unset, as Caffe's parsers refuse such
    files (only ClipParameter has required fields); net layers are named in the message."""
    missing = msg.FindInitializationErrors()
    if not missing:
        return
    names = {f"layer[{i}]": layer.name for i, layer in enumerate(getattr(msg, "layer", ()))}
    described = []
    for path in missing:
        head = path.split(".", 1)[0]
        described.append(f"{path} (layer '{names[head]}')" if head in names else path)
    raise ProtoError(f"{origin}: missing required fields: {', '.join(described)}")
