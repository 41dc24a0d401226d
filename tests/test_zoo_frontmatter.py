"""readme.md front matter: parsing, rendering and refusal of file names that leave the folder."""
import hashlib

import pytest

from runner.zoo.frontmatter import (ZooError, plain_file_name, read_readme, render_readme,
                                    sha1_of_file)

BVLC_README = """---
name: BAIR/BVLC CaffeNet Model
caffemodel: bvlc_reference_caffenet.caffemodel
caffemodel_url: http://dl.caffe.berkeleyvision.org/bvlc_reference_caffenet.caffemodel
license: unrestricted
sha1: 4c8d77deb20ea792f84eb5e6d0a11ca0a8660a46
caffe_commit: 709dc15af4a06bebda027c1eb2b3f3e3375d5077
---

This model is the result of following the Caffe ImageNet model training instructions.
"""


def test_bvlc_readme_front_matter_and_body(tmp_path):
    (tmp_path / "readme.md").write_text(BVLC_README)
    front, body = read_readme(tmp_path)
    assert front["caffemodel"] == "bvlc_reference_caffenet.caffemodel"
    assert front["sha1"] == "4c8d77deb20ea792f84eb5e6d0a11ca0a8660a46"
    assert "gist_id" not in front
    assert body.strip().startswith("This model is the result")


def test_render_round_trips_and_keeps_digit_strings_strings(tmp_path):
    front = {"name": "m", "caffemodel": "m.caffemodel", "caffemodel_url": "",
             "license": "CC-BY-4.0", "sha1": "1234567890" * 4, "caffe_commit": "0777",
             "gist_id": ""}
    (tmp_path / "readme.md").write_text(render_readme(front, "# m\n"))
    back, body = read_readme(tmp_path)
    assert back == front
    assert list(back) == list(front)
    assert body.strip() == "# m"


@pytest.mark.parametrize("text, expected", [
    ("name: x\n", "open with a '---'"),
    ("---\nname: x\n", "no closing '---'"),
    ("---\nname: [x\n---\n", "readme.md:3:1: front matter is not valid YAML"),
    ("---\n- a\n- b\n---\n", "must be a mapping"),
])
def test_malformed_front_matter_is_named(tmp_path, text, expected):
    (tmp_path / "readme.md").write_text(text)
    with pytest.raises(ZooError, match=expected.replace("[", r"\[")):
        read_readme(tmp_path)


@pytest.mark.parametrize("value", ["../x.caffemodel", "..", "sub/x.caffemodel",
                                   "/etc/passwd", "C:\\w.caffemodel", "a\\b", ""])
def test_caffemodel_names_outside_the_folder_are_refused(tmp_path, value):
    with pytest.raises(ZooError, match="caffemodel"):
        plain_file_name(value, "caffemodel", tmp_path)


def test_plain_file_name_is_accepted(tmp_path):
    assert plain_file_name("w.caffemodel", "caffemodel", tmp_path) == "w.caffemodel"


def test_sha1_is_of_the_whole_file(tmp_path):
    data = bytes(range(256)) * 5000
    (tmp_path / "w").write_bytes(data)
    assert sha1_of_file(tmp_path / "w") == hashlib.sha1(data).hexdigest()
