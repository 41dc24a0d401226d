"""Upgrade legacy nets and solvers to the current format, as Caffe's upgrade_proto.cpp does.

The net steps run in Caffe's order (UpgradeNetAsNeeded): V0 -> V1 layers, data-layer
transformation fields -> transform_param, V1 `layers` -> `layer`, deprecated
`input`/`input_dim`/`input_shape` -> an Input layer, old BatchNorm param specs; then the
forks' pooling `ceil_mode` -> round_mode.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

from runner.proto import caffe_pb2
from runner.proto.errors import ProtoError
from runner.proto.upgrade_v0 import net_needs_v0_upgrade, upgrade_v0_net

V1 = caffe_pb2.V1LayerParameter

V1_TYPE_NAMES = {
    V1.NONE: "", V1.ABSVAL: "AbsVal", V1.ACCURACY: "Accuracy", V1.ARGMAX: "ArgMax",
    V1.BNLL: "BNLL", V1.CONCAT: "Concat", V1.CONTRASTIVE_LOSS: "ContrastiveLoss",
    V1.CONVOLUTION: "Convolution", V1.DECONVOLUTION: "Deconvolution", V1.DATA: "Data",
    V1.DROPOUT: "Dropout", V1.DUMMY_DATA: "DummyData", V1.EUCLIDEAN_LOSS: "EuclideanLoss",
    V1.ELTWISE: "Eltwise", V1.EXP: "Exp", V1.FLATTEN: "Flatten", V1.HDF5_DATA: "HDF5Data",
    V1.HDF5_OUTPUT: "HDF5Output", V1.HINGE_LOSS: "HingeLoss", V1.IM2COL: "Im2col",
    V1.IMAGE_DATA: "ImageData", V1.INFOGAIN_LOSS: "InfogainLoss",
    V1.INNER_PRODUCT: "InnerProduct", V1.LRN: "LRN", V1.MEMORY_DATA: "MemoryData",
    V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss", V1.MVN: "MVN",
    V1.POOLING: "Pooling", V1.POWER: "Power", V1.RELU: "ReLU", V1.SIGMOID: "Sigmoid",
    V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss", V1.SILENCE: "Silence",
    V1.SOFTMAX: "Softmax", V1.SOFTMAX_LOSS: "SoftmaxWithLoss", V1.SPLIT: "Split",
    V1.SLICE: "Slice", V1.TANH: "TanH", V1.WINDOW_DATA: "WindowData",
    V1.THRESHOLD: "Threshold",
}

SOLVER_TYPE_NAMES = {
    caffe_pb2.SolverParameter.SGD: "SGD", caffe_pb2.SolverParameter.NESTEROV: "Nesterov",
    caffe_pb2.SolverParameter.ADAGRAD: "AdaGrad", caffe_pb2.SolverParameter.RMSPROP: "RMSProp",
    caffe_pb2.SolverParameter.ADADELTA: "AdaDelta", caffe_pb2.SolverParameter.ADAM: "Adam",
}

# Data layer types whose parameter message still carries transformation fields.
_DATA_PARAMS = {V1.DATA: "data_param", V1.IMAGE_DATA: "image_data_param",
                V1.WINDOW_DATA: "window_data_param"}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")
# In `layer` entries Caffe ignores these fields (WindowData still reads its own scale).
_V2_IGNORED = {"Data": ("data_param", _TRANSFORM_FIELDS),
               "ImageData": ("image_data_param", _TRANSFORM_FIELDS),
               "WindowData": ("window_data_param", _TRANSFORM_FIELDS[1:])}


def _needs_data_upgrade(net: caffe_pb2.NetParameter) -> bool:
    return any(
        layer.type in _DATA_PARAMS
        and any(getattr(layer, _DATA_PARAMS[layer.type]).HasField(f) for f in _TRANSFORM_FIELDS)
        for layer in net.layers)


def _upgrade_data_transformation(net: caffe_pb2.NetParameter) -> None:
    """Caffe's UpgradeNetDataTransformation (it also marks both messages present)."""
    for layer in net.layers:
        if layer.type not in _DATA_PARAMS:
            continue
        param = getattr(layer, _DATA_PARAMS[layer.type])
        param.SetInParent()
        layer.transform_param.SetInParent()
        for name in _TRANSFORM_FIELDS:
            if param.HasField(name):
                setattr(layer.transform_param, name, getattr(param, name))
                param.ClearField(name)


def upgrade_v1_layer(v1: caffe_pb2.V1LayerParameter) -> caffe_pb2.LayerParameter:
    """Caffe's UpgradeV1LayerParameter: enum type -> string, blobs_lr/weight_decay/param
    names/blob_share_mode -> ParamSpec, per-type parameter messages copied as they are."""
    layer = caffe_pb2.LayerParameter(bottom=v1.bottom, top=v1.top, include=v1.include,
                                     exclude=v1.exclude, blobs=v1.blobs,
                                     loss_weight=v1.loss_weight)
    if v1.HasField("name"):
        layer.name = v1.name
    if v1.HasField("type"):
        layer.type = V1_TYPE_NAMES[v1.type]

    def spec(i: int) -> caffe_pb2.ParamSpec:
        while len(layer.param) <= i:
            layer.param.add()
        return layer.param[i]

    for i, name in enumerate(v1.param):
        spec(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        spec(i).share_mode = caffe_pb2.ParamSpec.DimCheckMode.Value(V1.DimCheckMode.Name(mode))
    for i, lr in enumerate(v1.blobs_lr):
        spec(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        spec(i).decay_mult = decay
    for field, value in v1.ListFields():
        if field.name.endswith("_param"):
            getattr(layer, field.name).CopyFrom(value)
    return layer


def _upgrade_v1_net(net: caffe_pb2.NetParameter, origin: str) -> None:
    if len(net.layer):
        raise ProtoError(f"{origin}: the net mixes legacy 'layers' with current 'layer' "
                         "entries; Caffe would drop the 'layer' ones, so write it in one format")
    layers = [upgrade_v1_layer(v1) for v1 in net.layers]
    net.ClearField("layers")
    net.layer.extend(layers)


def _upgrade_input(net: caffe_pb2.NetParameter, origin: str) -> None:
    """Caffe's UpgradeNetInput: input fields become a first layer "input" of type Input."""
    names, shapes, dims = list(net.input), list(net.input_shape), list(net.input_dim)
    if shapes or dims:
        if shapes and len(shapes) != len(names):
            raise ProtoError(f"{origin}: {len(names)} 'input' blobs but {len(shapes)} 'input_shape' entries")
        if not shapes and len(dims) != 4 * len(names):
            raise ProtoError(f"{origin}: {len(names)} 'input' blobs need {4 * len(names)} "
                             f"'input_dim' values (N, C, H, W each), found {len(dims)}")
        layer = caffe_pb2.LayerParameter(name="input", type="Input", top=names)
        for i in range(len(names)):
            if shapes:
                layer.input_param.shape.add().CopyFrom(shapes[i])
            else:
                layer.input_param.shape.add(dim=dims[4 * i:4 * i + 4])
        layers = [layer, *net.layer]
        net.ClearField("layer")
        net.layer.extend(layers)
    for name in ("input", "input_shape", "input_dim"):
        net.ClearField(name)


def _upgrade_batch_norm(net: caffe_pb2.NetParameter) -> bool:
    """Caffe's UpgradeNetBatchNorm: BatchNorm with 3 param specs gets lr/decay mult 0."""
    changed = False
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0
            changed = True
    return changed


def _upgrade_ceil_mode(net: caffe_pb2.NetParameter, origin: str) -> bool:
    """Pooling `ceil_mode` of several forks (and OpenCV) -> round_mode: false is FLOOR,
    true the default CEIL. The field is cleared, so nets written back use round_mode."""
    P = caffe_pb2.PoolingParameter
    changed = False
    for layer in net.layer:
        param = layer.pooling_param
        if not (layer.HasField("pooling_param") and param.HasField("ceil_mode")):
            continue
        mode = P.CEIL if param.ceil_mode else P.FLOOR
        if param.HasField("round_mode") and param.round_mode != mode:
            raise ProtoError(f"{origin}: layer '{layer.name}' sets ceil_mode: "
                             f"{str(param.ceil_mode).lower()} and round_mode: "
                             f"{P.RoundMode.Name(param.round_mode)}, which disagree")
        if mode != P.CEIL:
            param.round_mode = mode
        param.ClearField("ceil_mode")
        changed = True
    return changed


def _warn_ignored_transform_fields(net: caffe_pb2.NetParameter, origin: str) -> None:
    """Caffe ignores the data layers' own transformation fields in `layer` entries."""
    for layer in net.layer:
        param_name, fields = _V2_IGNORED.get(layer.type, (None, ()))
        if param_name is None or not layer.HasField(param_name):
            continue
        ignored = [f for f in fields if getattr(layer, param_name).HasField(f)]
        if ignored:
            warnings.warn(f"{origin}: layer '{layer.name}' sets {param_name}."
                          f"{'/'.join(ignored)}, which Caffe ignores; use transform_param",
                          stacklevel=3)


def upgrade_net(net: caffe_pb2.NetParameter, origin: str = "<net>") -> list[str]:
    """Upgrade `net` in place as Caffe's UpgradeNetAsNeeded; returns the steps applied."""
    applied = []
    if net_needs_v0_upgrade(net):
        upgrade_v0_net(net, origin)
        applied.append("V0 layers -> V1")
    if _needs_data_upgrade(net):
        _upgrade_data_transformation(net)
        applied.append("data layer transformation fields -> transform_param")
    if len(net.layers):
        _upgrade_v1_net(net, origin)
        applied.append("V1 'layers' -> 'layer'")
    if len(net.input):
        _upgrade_input(net, origin)
        applied.append("input fields -> Input layer")
    if _upgrade_batch_norm(net):
        applied.append("BatchNorm param specs -> lr_mult/decay_mult 0")
    if _upgrade_ceil_mode(net, origin):
        applied.append("pooling ceil_mode -> round_mode")
    _warn_ignored_transform_fields(net, origin)
    return applied


def upgrade_solver(solver: caffe_pb2.SolverParameter, origin: str = "<solver>") -> list[str]:
    """Caffe's UpgradeSolverAsNeeded, in place: `solver_type` enum -> `type` string."""
    if not solver.HasField("solver_type"):
        return []
    if solver.HasField("type"):
        raise ProtoError(f"{origin}: old solver_type field (enum) and new type field "
                         "(string) cannot both be specified")
    solver.type = SOLVER_TYPE_NAMES[solver.solver_type]
    solver.ClearField("solver_type")
    return ["solver_type enum -> type string"]


def snapshot_prefix_for(solver: caffe_pb2.SolverParameter, solver_path: str | os.PathLike) -> str:
    """Caffe's UpgradeSnapshotPrefixProperty: the prefix a solver read from a file uses."""
    path = Path(solver_path)
    if not solver.HasField("snapshot_prefix"):
        return str(path.with_suffix(""))
    if os.path.isdir(solver.snapshot_prefix):   # False, not an error, for an impossible name
        return str(Path(solver.snapshot_prefix) / path.stem)
    return solver.snapshot_prefix


def loss_normalization(loss_param: caffe_pb2.LossParameter,
                       default: int = caffe_pb2.LossParameter.VALID) -> int:
    """The NormalizationMode a loss layer uses: `normalization` if set, else the legacy
    `normalize` flag (true -> VALID, false -> BATCH_SIZE), else `default` (VALID for
    SoftmaxWithLoss; SigmoidCrossEntropyLoss passes BATCH_SIZE)."""
    if loss_param.HasField("normalization"):
        return loss_param.normalization
    if loss_param.HasField("normalize"):
        return caffe_pb2.LossParameter.VALID if loss_param.normalize else caffe_pb2.LossParameter.BATCH_SIZE
    return default
