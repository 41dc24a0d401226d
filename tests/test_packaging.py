"""pyproject lists every package, and `import caffe` is served from runner/pycaffe."""
import pathlib
import runpy
import subprocess
import sys
import tomllib

import pytest

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


def test_console_commands_are_installed_and_print_their_help(tmp_path, monkeypatch, capsys):
    """Every [project.scripts] command is in the environment's bin/ (after `make setup`)
    and prints its usage under its own name: each bin/ script runs here (one import of
    torch for all), and `caffe-ds` also as a process of its own, from another directory."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"caffe-ds", "caffe-ds-probe", "caffe-ds-classify", "caffe-ds-zoo"} <= set(scripts)
    bin_dir = pathlib.Path(sys.executable).parent
    for name in scripts:
        script = bin_dir / name
        assert script.is_file(), f"{name} is not installed in {bin_dir}"
        monkeypatch.setattr(sys, "argv", [str(script), "--help"])
        with pytest.raises(SystemExit) as done:
            runpy.run_path(str(script), run_name="__main__")
        assert done.value.code in (0, None), name
        assert capsys.readouterr().out.startswith(f"usage: {name}"), name
    run = subprocess.run([str(bin_dir / "caffe-ds"), "test", "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.startswith("usage: caffe-ds test")


def test_scripts_need_no_sys_path_edits():
    """Entry points import the installed packages; no module rewrites sys.path."""
    offenders = [str(p.relative_to(ROOT)) for top in ("runner", "generator", "reproduce", "bench")
                 for p in (ROOT / top).rglob("*.py") if "sys.path" in p.read_text()]
    assert offenders == []
