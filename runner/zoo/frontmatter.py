"""Model Zoo readme.md: YAML front matter (the model's identity card) plus a Markdown body.

Caffe's zoo tools read `name`, `caffemodel`, `caffemodel_url`, `license`, `sha1`,
`caffe_commit` and `gist_id` from the block between the two `---` lines. Every value is
treated as data: a file name taken from it must be a plain name inside the folder.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath, PureWindowsPath

import yaml

from runner.proto import ProtoError, read_file_bytes

FIELDS = ("name", "caffemodel", "caffemodel_url", "license", "sha1", "caffe_commit", "gist_id")
REQUIRED = ("name", "caffemodel", "sha1")
README = "readme.md"


class ZooError(ValueError):
    """A zoo folder or one of its files is not what the Model Zoo convention expects."""


README_LIMIT = 1 << 20          # bytes of readme.md read at most
FRONT_MATTER_LIMIT = 64 << 10   # bytes of YAML between the '---' lines
MAX_NESTING = 16                # YAML collections inside collections


class _FrontMatterLoader(yaml.SafeLoader):
    """SafeLoader without aliases (a few bytes of them can expand without bound), with
    bounded nesting and duplicate keys refused (Caffe's tools would keep only one). Plain
    scalars stay strings: a sha1 or commit of digits keeps its leading zeros."""

    yaml_implicit_resolvers: dict = {}

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed",
                                              event.start_mark)
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_NESTING:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_NESTING} levels",
                    self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (list, dict)) or key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate or unusable key {key_node.value!r}",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def inside_folder(folder: str | os.PathLike, name: str) -> Path:
    """`folder/name` if it resolves (symlinks followed) to a place inside the folder."""
    folder = Path(folder)
    path = folder / name
    try:
        real, root = path.resolve(), folder.resolve()
    except (OSError, RuntimeError) as exc:   # a symlink loop
        raise ZooError(f"{path}: cannot resolve: {exc}") from None
    if real != root and root not in real.parents:
        raise ZooError(f"{path} leads outside the folder (to {real}); refusing it")
    return path


def read_readme(folder: str | os.PathLike) -> tuple[dict[str, str], str]:
    """Front matter (values as strings) and Markdown body of `<folder>/readme.md`."""
    path = Path(folder) / README
    if not path.is_file():
        raise ZooError(f"{path}: no readme.md, so this is not a Model Zoo folder")
    inside_folder(folder, README)
    try:
        text = read_file_bytes(path, README_LIMIT).decode("utf-8")
    except ProtoError as exc:
        raise ZooError(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise ZooError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        raise ZooError(f"{path}:1: expected the front matter to open with a '---' line")
    end = next((i for i in range(1, len(lines)) if lines[i].strip() == "---"), None)
    if end is None:
        raise ZooError(f"{path}: front matter has no closing '---' line")
    yaml_text = "".join(lines[1:end])
    if len(yaml_text.encode("utf-8")) > FRONT_MATTER_LIMIT:
        raise ZooError(f"{path}: front matter is longer than {FRONT_MATTER_LIMIT} bytes")
    try:
        data = yaml.load(yaml_text, Loader=_FrontMatterLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 2}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ZooError(f"{path}{where}: front matter is not valid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ZooError(f"{path}: front matter must be a mapping of fields, "
                       f"got {type(data).__name__}")
    nested = [str(k) for k, v in data.items() if isinstance(v, (list, dict))]
    if nested:
        raise ZooError(f"{path}: front matter field '{nested[0]}' must be a plain value, "
                       "not a list or mapping")
    front = {str(k): "" if v is None else str(v) for k, v in data.items()}
    return front, "".join(lines[end + 1:])


def render_readme(front: dict[str, str], body: str) -> str:
    """readme.md text: the front matter in FIELDS order, then the body."""
    ordered = {k: front[k] for k in FIELDS if k in front}
    ordered.update({k: v for k, v in front.items() if k not in ordered})
    head = yaml.safe_dump(ordered, sort_keys=False, default_flow_style=False,
                          allow_unicode=True)
    return f"---\n{head}---\n\n{body}"


def require_fields(front: dict[str, str], folder: str | os.PathLike) -> None:
    """Fail naming the first required field that is missing or empty."""
    for key in REQUIRED:
        if not front.get(key):
            raise ZooError(f"{Path(folder) / README}: front matter lacks '{key}'")


def plain_file_name(value: str, field: str, folder: str | os.PathLike) -> str:
    """`value` if it names a file directly inside the folder; refuse anything else."""
    where = f"{Path(folder) / README}: front matter '{field}: {value}'"
    if not value:
        raise ZooError(f"{where}: empty file name")
    if PurePosixPath(value).is_absolute() or PureWindowsPath(value).is_absolute() \
            or PureWindowsPath(value).drive:
        raise ZooError(f"{where} is an absolute path; refusing it: "
                       "it must be a file name inside the folder")
    if "/" in value or "\\" in value or ".." in value:
        raise ZooError(f"{where} leaves the folder or names a subfolder; refusing it: "
                       "it must be a plain file name inside the folder")
    size, longest = len(os.fsencode(value)), _longest_file_name(folder)
    if size > longest:
        raise ZooError(f"{Path(folder) / README}: front matter '{field}' is a file name of "
                       f"{size} bytes; this file system allows {longest}")
    return value


def _longest_file_name(folder: str | os.PathLike) -> int:
    """The longest file name, in bytes, the folder's file system takes (255 if unknown)."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def sha1_of_file(path: str | os.PathLike) -> str:
    """Hex SHA-1 of the whole file, as Caffe's zoo tools check it."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
