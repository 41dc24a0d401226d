"""Publish a trained model as a Model Zoo folder, atomically.

`<zoo>/<name>/` gets readme.md (front matter + description), deploy.prototxt with the
auxiliary branches cut, the deploy caffemodel (their blobs dropped, as the paper does at
test time), train_val.prototxt, solver.prototxt, the training curve, and the dataset's
mean .binaryproto and labels file when it has them. Everything is built in a hidden
folder beside the target, verified, and renamed into place: a failed publish leaves
nothing behind.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from runner.atomic import atomic_write_bytes, atomic_write_text, temporary_dir_beside
from runner.deep_supervision import is_aux, without_aux
from runner.graph import infer_net_shapes
from runner.net import Net
from runner.proto import caffe_pb2, filter_net, read_caffemodel, read_net, read_solver, write_text
from runner.solver.snapshot import weights_base
from runner.weights import is_hdf5
from runner.zoo.accuracy import accuracy_text, score_weights, solver_test_iterations
from runner.zoo.describe import architecture_table, solver_table
from runner.zoo.frontmatter import ZooError, render_readme, sha1_of_file
from runner.zoo.verify import verify

DEFAULT_LICENSE = "CC-BY-4.0"
MEAN_FILE = "mean.binaryproto"
LABELS_FILE = "labels.txt"
CURVE_FILE = "training_curve.png"
REPO_ROOT = Path(__file__).resolve().parents[2]


def publish(model_dir: str | os.PathLike, weights: str | os.PathLike,
            zoo: str | os.PathLike, *, name: str | None = None,
            license: str = DEFAULT_LICENSE, url: str = "", gist_id: str = "",
            caffe_commit: str | None = None, log: str | os.PathLike | None = None,
            curve: str | os.PathLike | None = None, force: bool = False,
            score: bool = True, test_iterations: int | None = None) -> Path:
    """Write `<zoo>/<name>/` from `model_dir` (train_val/deploy/solver) and trained weights.

    `log`/`curve` default to the solver's `<prefix>.log` / `<prefix>_training.png`
    beside the snapshot. The readme's accuracy is the weights scored on the TEST net for
    `test_iterations` batches (default: the solver's test_iter) unless `score` is False.
    Returns the folder. `force` replaces an existing folder of the same name.
    """
    model_dir, weights, zoo = Path(model_dir), Path(weights), Path(zoo)
    name = name or model_dir.name
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        raise ZooError(f"model name '{name}' must be a plain folder name")
    target = zoo / name
    if target.exists() and not force:
        raise ZooError(f"{target} already exists; pass --force to replace it")
    files = {kind: model_dir / f"{kind}.prototxt" for kind in ("train_val", "deploy", "solver")}
    for path in [*files.values(), weights]:
        if not path.is_file():
            raise ZooError(f"{path}: no such file")
    train_val, solver = read_net(files["train_val"]), read_solver(files["solver"])
    deploy, cut = cut_aux_branches(read_net(files["deploy"]), files["deploy"])
    deploy_weights = deploy_caffemodel(trained_weights(weights, deploy), deploy)
    mean, labels = dataset_files(train_val, files["train_val"])
    log, curve = run_outputs(weights, log, curve)
    iterations = test_iterations or solver_test_iterations(files["solver"])
    measured = score_weights(files["train_val"], weights, iterations) if score else None

    staging = temporary_dir_beside(target, suffix=".tmp")
    try:
        caffemodel = f"{name}.caffemodel"
        atomic_write_bytes(staging / caffemodel, deploy_weights.SerializeToString())
        if cut:
            write_text(deploy, staging / "deploy.prototxt")
        else:
            shutil.copyfile(files["deploy"], staging / "deploy.prototxt")
        shutil.copyfile(files["train_val"], staging / "train_val.prototxt")
        shutil.copyfile(files["solver"], staging / "solver.prototxt")
        extras = {}
        for kind, src, dst in (("mean", mean, MEAN_FILE), ("labels", labels, LABELS_FILE),
                               ("curve", curve, CURVE_FILE)):
            if src is not None:
                shutil.copyfile(src, staging / dst)
                extras[kind] = dst
        front = {"name": name, "caffemodel": caffemodel, "caffemodel_url": url,
                 "license": license, "sha1": sha1_of_file(staging / caffemodel),
                 "caffe_commit": caffe_commit or project_commit(), "gist_id": gist_id}
        accuracy = accuracy_text(measured, weights, log)
        body = readme_body(name, deploy, train_val, solver, cut, extras, accuracy, license)
        atomic_write_text(staging / "readme.md", render_readme(front, body))
        _share(staging)
        verify(staging)
        _move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def cut_aux_branches(deploy, path: Path) -> tuple[object, list[str]]:
    """A copy of `deploy` without layers named `*_ds<j>`, and the names cut."""
    kept = without_aux(deploy)
    cut = [lp.name for lp in deploy.layer if is_aux(lp.name)]
    try:
        infer_net_shapes(filter_net(kept, "TEST"))
    except ValueError as exc:
        raise ZooError(f"{path}: after cutting the auxiliary layers {cut}: {exc}") from None
    return kept, cut


def trained_weights(weights: Path, deploy) -> caffe_pb2.NetParameter:
    """The trained NetParameter of a .caffemodel; of HDF5 weights (snapshot_format: HDF5),
    the deploy net's layers with the blobs the file holds for them."""
    if is_hdf5(weights):
        return Net(deploy, phase="TEST", weights=str(weights)).to_net_parameter()
    return read_caffemodel(weights)


def deploy_caffemodel(trained, deploy):
    """The trained NetParameter reduced to the layers the deploy net has."""
    names = {lp.name for lp in deploy.layer}
    kept = caffe_pb2.NetParameter()
    kept.CopyFrom(trained)  # read_caffemodel has upgraded any V1 `layers` into `layer`
    del kept.layer[:]
    kept.layer.extend(lp for lp in trained.layer if lp.name in names)
    return kept


def _data_layers(train_val, phase: str):
    """The data layers of the net in `phase`."""
    return [lp for lp in filter_net(train_val, phase).layer
            if lp.type in ("Data", "ImageData", "WindowData")]


def dataset_files(train_val, path: Path) -> tuple[Path | None, Path | None]:
    """The train_val's mean_file and the labels.txt beside its training data, if any."""
    mean = labels = None
    for lp in _data_layers(train_val, "TEST") + _data_layers(train_val, "TRAIN"):
        if mean is None and lp.transform_param.mean_file:
            mean = _find(lp.transform_param.mean_file, path)
            if mean is None:
                raise ZooError(f"{path}: transform_param.mean_file "
                               f"'{lp.transform_param.mean_file}' not found (looked from the "
                               f"working directory, {REPO_ROOT} and {path.parent})")
        source = lp.data_param.source or lp.image_data_param.source
        if labels is None and source:
            labels = _find(str(Path(source).parent / LABELS_FILE), path)
    return mean, labels


def _find(value: str, prototxt: Path) -> Path | None:
    """A file named in a prototxt: from the working directory, as Caffe reads it, else
    from the repository root or the prototxt's folder; None if in none of them."""
    for root in (Path.cwd(), REPO_ROOT, prototxt.parent):
        try:
            if (root / value).is_file():
                return root / value
        except OSError:   # a name too long for a path, say: not there
            continue
    return None


def run_outputs(weights: Path, log, curve) -> tuple[Path | None, Path | None]:
    """The training log and curve PNG: as given, else the solver's `<prefix>.log` and
    `<prefix>_training.png` beside a `<prefix>_iter_<N>.caffemodel(.h5)` snapshot, if there."""
    prefix = re.sub(r"_iter_\d+$", "", Path(weights_base(weights)).name)
    found = []
    for given, default in ((log, f"{prefix}.log"), (curve, f"{prefix}_training.png")):
        if given is not None and not Path(given).is_file():
            raise ZooError(f"{given}: no such file")
        path = Path(given) if given is not None else weights.parent / default
        found.append(path if path.is_file() else None)
    return found[0], found[1]


def project_commit() -> str:
    """The git commit of this toolkit (recorded as `caffe_commit`), or 'unknown'."""
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def readme_body(name, deploy, train_val, solver, cut, extras, accuracy, license) -> str:
    """The Markdown description below the front matter."""
    parts = [f"# {name}\n",
             f"Net `{train_val.name}`, published with its deploy net and trained weights.",
             ("Auxiliary supervision branches (" + ", ".join(f"`{n}`" for n in cut) +
              ") are cut from deploy.prototxt and their blobs dropped from the caffemodel, "
              "as they are only used in training." if cut else
              "deploy.prototxt has no auxiliary branches; the caffemodel holds only the "
              "blobs it uses."),
             "\n## Measured accuracy\n", accuracy,
             "\n## Architecture (deploy.prototxt)\n", architecture_table(deploy),
             "\n## Training settings (solver.prototxt)\n", solver_table(solver),
             _batch_sizes(train_val)]
    if "curve" in extras:
        parts += ["\n## Training curve\n", f"![training curve]({extras['curve']})"]
    parts += ["\n## Preprocessing\n", _preprocessing_text(train_val, extras),
              "\n## License\n", f"Weights: {license}.", ""]
    return "\n".join(parts)


def _batch_sizes(train_val) -> str:
    sizes = [f"{phase} batch_size {lp.data_param.batch_size or lp.image_data_param.batch_size}"
             for phase in ("TRAIN", "TEST") for lp in _data_layers(train_val, phase)]
    return f"\nData layers: {'; '.join(sizes)}." if sizes else ""


def _preprocessing_text(train_val, extras) -> str:
    lines = []
    for lp in _data_layers(train_val, "TEST")[:1]:
        t = lp.transform_param
        if t.crop_size:
            lines.append(f"- centre crop {t.crop_size}×{t.crop_size}")
        if t.mean_file:
            lines.append(f"- subtract the mean image ({extras.get('mean', t.mean_file)})")
        if t.mean_value:
            lines.append(f"- subtract mean values {list(t.mean_value)}")
        if t.HasField("scale"):
            lines.append(f"- multiply by scale {t.scale:.6g}")
    lines.append("- pixels as OpenCV reads them: 0..255, BGR for colour nets, grey for "
                 "one-channel nets")
    lines.append("- `python runner/classify.py <this folder> IMAGE...` applies this, with the "
                 "mean averaged per channel as Caffe's python classifier does")
    if "labels" in extras:
        lines.append(f"- class names: {extras['labels']}, one per line in label order")
    return "\n".join(lines)


def _share(folder: Path) -> None:
    """Give the folder and its files the usual permissions (temp files start private)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)
    folder.chmod(0o777 & ~umask)


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename the staged folder to `target`, swapping out an existing one if present."""
    if not target.exists():
        os.rename(staging, target)
        return
    old = temporary_dir_beside(target, suffix=".old")
    os.rename(target, old / target.name)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old / target.name, target)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
