"""Check a Model Zoo folder: sha1 of the caffemodel, every prototxt, blobs against deploy."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from runner.proto import ProtoError, read_caffemodel, read_net, read_solver
from runner.zoo.frontmatter import (ZooError, inside_folder, plain_file_name, read_readme,
                                    require_fields, sha1_of_file)

DEPLOY = "deploy.prototxt"
SHA1 = re.compile(r"[0-9a-f]{40}")


@dataclass
class Verified:
    """What a successful verify checked."""
    name: str
    caffemodel: str
    sha1: str
    prototxts: list[str]
    layers_with_blobs: int
    unused_layers: list[str] = field(default_factory=list)  # blobs deploy does not use

    def summary(self) -> str:
        text = (f"OK {self.name}: {self.caffemodel} sha1 {self.sha1} matches; "
                f"{len(self.prototxts)} prototxt parsed ({', '.join(self.prototxts)}); "
                f"blobs of {self.layers_with_blobs} layers fit {DEPLOY}")
        if self.unused_layers:
            text += f"; {len(self.unused_layers)} layers with blobs unused by deploy"
        return text


def caffemodel_path(folder: Path, front: dict[str, str]) -> Path:
    """The folder's caffemodel as named by the front matter (a plain file name only)."""
    path = folder / plain_file_name(front["caffemodel"], "caffemodel", folder)
    if not path.is_file():
        url = front.get("caffemodel_url") or "no caffemodel_url given"
        raise ZooError(f"{path}: caffemodel named in readme.md is missing ({url})")
    return inside_folder(folder, path.name)


def check_sha1(folder: Path, front: dict[str, str], weights: Path) -> str:
    """The caffemodel's sha1 if it is the one readme.md gives; a ZooError otherwise."""
    expected = front.get("sha1", "").strip().lower()
    if not SHA1.fullmatch(expected):
        raise ZooError(f"{folder / 'readme.md'}: sha1 '{front.get('sha1', '')}' is not 40 hex digits")
    actual = sha1_of_file(weights)
    if actual != expected:
        raise ZooError(f"{weights}: sha1 {actual} does not match readme.md's {expected}")
    return actual


def verify(folder: str | os.PathLike) -> Verified:
    """Raise ZooError with the first problem found; return what was checked otherwise."""
    folder = Path(folder)
    front, _ = read_readme(folder)
    require_fields(front, folder)
    weights = caffemodel_path(folder, front)
    actual = check_sha1(folder, front, weights)
    prototxts = sorted(p.name for p in folder.glob("*.prototxt"))
    if DEPLOY not in prototxts:
        raise ZooError(f"{folder}: no {DEPLOY}")
    for name in prototxts:
        inside_folder(folder, name)
        try:
            (read_solver if "solver" in name else read_net)(folder / name)
        except ProtoError as exc:
            raise ZooError(_first_line(exc)) from None
    try:
        trained = read_caffemodel(weights)
    except ProtoError as exc:
        raise ZooError(_first_line(exc)) from None
    deploy_names = {lp.name for lp in read_net(folder / DEPLOY).layer}
    with_blobs = [lp.name for lp in trained.layer if lp.blobs]  # V1 `layers` upgraded on read
    _load_into_deploy(folder / DEPLOY, weights)
    return Verified(front["name"], weights.name, actual, prototxts, len(with_blobs),
                    [n for n in with_blobs if n not in deploy_names])


def _first_line(exc: Exception) -> str:
    """The problem itself, without the quoted source and caret that follow it."""
    return str(exc).splitlines()[0]


def _load_into_deploy(deploy: Path, weights: Path) -> None:
    """Build the deploy net and load every blob it needs; any misfit is one ZooError."""
    from runner.net import Net
    try:
        Net(str(deploy), phase="TEST", weights=str(weights))
    except Exception as exc:  # any failure to fit is reported as one line
        message = " ".join(str(exc).split()) or type(exc).__name__
        raise ZooError(f"{weights}: blobs do not fit {deploy.name}: {message}") from None
