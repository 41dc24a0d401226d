"""pyproject lists every package, and `import caffe` is served from runner/pycaffe."""
import pathlib
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_pyproject_lists_every_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {config["package-dir"].get(name, name.replace(".", "/")) for name in config["packages"]}
    on_disk = {str(p.parent.relative_to(ROOT)) for top in ("runner", "generator")
               for p in (ROOT / top).rglob("__init__.py")}
    assert on_disk == dirs


def test_import_caffe_from_anywhere(tmp_path):
    code = "import caffe, pathlib; print(pathlib.Path(caffe.__file__).parent)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert pathlib.Path(out) == ROOT / "runner" / "pycaffe"
