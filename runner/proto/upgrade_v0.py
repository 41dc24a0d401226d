"""Upgrade the oldest (V0) net format, `layers { layer { type: "conv" ... } }`, to V1.

A transcription of Caffe's UpgradeV0Net (util/upgrade_proto.cpp): "padding" layers are
folded into the conv/pool layer they feed, V0 type names become V1 enums, and each V0
field moves to the per-type parameter message it belongs to.
"""
from __future__ import annotations

from runner.proto import caffe_pb2
from runner.proto.errors import ProtoError

V1 = caffe_pb2.V1LayerParameter

V0_TYPES = {
    "accuracy": V1.ACCURACY, "bnll": V1.BNLL, "concat": V1.CONCAT, "conv": V1.CONVOLUTION,
    "data": V1.DATA, "dropout": V1.DROPOUT, "euclidean_loss": V1.EUCLIDEAN_LOSS,
    "flatten": V1.FLATTEN, "hdf5_data": V1.HDF5_DATA, "hdf5_output": V1.HDF5_OUTPUT,
    "im2col": V1.IM2COL, "images": V1.IMAGE_DATA, "infogain_loss": V1.INFOGAIN_LOSS,
    "innerproduct": V1.INNER_PRODUCT, "lrn": V1.LRN,
    "multinomial_logistic_loss": V1.MULTINOMIAL_LOGISTIC_LOSS, "pool": V1.POOLING,
    "relu": V1.RELU, "sigmoid": V1.SIGMOID, "softmax": V1.SOFTMAX,
    "softmax_loss": V1.SOFTMAX_LOSS, "split": V1.SPLIT, "tanh": V1.TANH,
    "window_data": V1.WINDOW_DATA,
}

_DATA_SOURCES = {"data": "data_param", "hdf5_data": "hdf5_data_param",
                 "images": "image_data_param", "window_data": "window_data_param"}
_CONV_IP = {"conv": "convolution_param", "innerproduct": "inner_product_param"}
_CONV_POOL = {"conv": "convolution_param", "pool": "pooling_param"}

# V0 field -> ({V0 type: V1 parameter message}, field name there). `None` as the type
# key means "any type" (Caffe moves these transformation fields unconditionally).
V0_FIELDS = {
    "num_output": (_CONV_IP, "num_output"),
    "biasterm": (_CONV_IP, "bias_term"),
    "weight_filler": (_CONV_IP, "weight_filler"),
    "bias_filler": (_CONV_IP, "bias_filler"),
    "pad": (_CONV_POOL, "pad"),
    "kernelsize": (_CONV_POOL, "kernel_size"),
    "group": ({"conv": "convolution_param"}, "group"),
    "stride": (_CONV_POOL, "stride"),
    "pool": ({"pool": "pooling_param"}, "pool"),
    "dropout_ratio": ({"dropout": "dropout_param"}, "dropout_ratio"),
    "local_size": ({"lrn": "lrn_param"}, "local_size"),
    "alpha": ({"lrn": "lrn_param"}, "alpha"),
    "beta": ({"lrn": "lrn_param"}, "beta"),
    "k": ({"lrn": "lrn_param"}, "k"),
    "source": ({**_DATA_SOURCES, "infogain_loss": "infogain_loss_param"}, "source"),
    "scale": ({None: "transform_param"}, "scale"),
    "meanfile": ({None: "transform_param"}, "mean_file"),
    "batchsize": (_DATA_SOURCES, "batch_size"),
    "cropsize": ({None: "transform_param"}, "crop_size"),
    "mirror": ({None: "transform_param"}, "mirror"),
    "rand_skip": ({"data": "data_param", "images": "image_data_param"}, "rand_skip"),
    "shuffle_images": ({"images": "image_data_param"}, "shuffle"),
    "new_height": ({"images": "image_data_param"}, "new_height"),
    "new_width": ({"images": "image_data_param"}, "new_width"),
    "concat_dim": ({"concat": "concat_param"}, "concat_dim"),
    "det_fg_threshold": ({"window_data": "window_data_param"}, "fg_threshold"),
    "det_bg_threshold": ({"window_data": "window_data_param"}, "bg_threshold"),
    "det_fg_fraction": ({"window_data": "window_data_param"}, "fg_fraction"),
    "det_context_pad": ({"window_data": "window_data_param"}, "context_pad"),
    "det_crop_mode": ({"window_data": "window_data_param"}, "crop_mode"),
}


def net_needs_v0_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """True when any V1 `layers` entry still wraps a V0 `layer`."""
    return any(v1.HasField("layer") for v1 in net.layers)


def _assign(target, name: str, value) -> None:
    """Set a scalar, append to a repeated scalar, or copy a message field."""
    field = target.DESCRIPTOR.fields_by_name[name]
    if field.message_type is not None:
        getattr(target, name).CopyFrom(value)
    elif field.is_repeated:
        getattr(target, name).append(value)
    else:
        setattr(target, name, value)


def _upgrade_v0_layer(connection: caffe_pb2.V1LayerParameter, origin: str) -> caffe_pb2.V1LayerParameter:
    """Caffe's UpgradeV0LayerParameter: one V0 layer (with its connections) to V1."""
    v1 = caffe_pb2.V1LayerParameter(bottom=connection.bottom, top=connection.top)
    if not connection.HasField("layer"):
        return v1
    v0 = connection.layer
    kind = v0.type
    if v0.HasField("name"):
        v1.name = v0.name
    if v0.HasField("type"):
        if kind not in V0_TYPES:
            raise ProtoError(f"{origin}: V0 layer '{v0.name}' has unknown type '{kind}'")
        v1.type = V0_TYPES[kind]
    v1.blobs.extend(v0.blobs)
    v1.blobs_lr.extend(v0.blobs_lr)
    v1.weight_decay.extend(v0.weight_decay)
    for v0_name, (targets, v1_name) in V0_FIELDS.items():
        if not v0.HasField(v0_name):
            continue
        param_name = targets.get(None, targets.get(kind))
        if param_name is None:
            raise ProtoError(f"{origin}: V0 layer '{v0.name}' of type '{kind}' "
                             f"has parameter '{v0_name}', which that type does not take")
        value = getattr(v0, v0_name)
        if v0_name == "pool":
            value = caffe_pb2.PoolingParameter.PoolMethod.Value(v0.PoolMethod.Name(value))
        _assign(getattr(v1, param_name), v1_name, value)
    if v0.HasField("hdf5_output_param"):
        if kind != "hdf5_output":
            raise ProtoError(f"{origin}: V0 layer '{v0.name}' of type '{kind}' "
                             "has parameter 'hdf5_output_param', which that type does not take")
        v1.hdf5_output_param.CopyFrom(v0.hdf5_output_param)
    return v1


def _fold_padding_layers(net: caffe_pb2.NetParameter, origin: str) -> list[caffe_pb2.V1LayerParameter]:
    """Caffe's UpgradeV0PaddingLayers: drop "padding" layers, moving their pad downstream."""
    last_producer = {name: -1 for name in net.input}
    kept: list[caffe_pb2.V1LayerParameter] = []
    for i, connection in enumerate(net.layers):
        v0 = connection.layer
        if v0.type != "padding":
            kept.append(caffe_pb2.V1LayerParameter())
            kept[-1].CopyFrom(connection)
        for j, blob in enumerate(connection.bottom):
            if blob not in last_producer:
                raise ProtoError(f"{origin}: V0 layer '{v0.name}' has unknown bottom blob '{blob}'")
            source_index = last_producer[blob]
            if source_index == -1 or net.layers[source_index].layer.type != "padding":
                continue
            padding = net.layers[source_index]
            if v0.type not in ("conv", "pool"):
                raise ProtoError(f"{origin}: padding layer '{padding.layer.name}' feeds "
                                 f"'{v0.name}' of type '{v0.type}'; only conv and pool can take it")
            if len(connection.bottom) != 1 or len(padding.bottom) != 1 or len(padding.top) != 1:
                raise ProtoError(f"{origin}: padding layer '{padding.layer.name}' and the layer "
                                 f"'{v0.name}' it feeds must each have one bottom and one top")
            kept[-1].layer.pad = padding.layer.pad
            kept[-1].bottom[j] = padding.bottom[0]
        for blob in connection.top:
            last_producer[blob] = i
    return kept


def upgrade_v0_net(net: caffe_pb2.NetParameter, origin: str) -> None:
    """Caffe's UpgradeV0Net, in place: keeps name, inputs and force_backward, as Caffe does."""
    layers = [_upgrade_v0_layer(c, origin) for c in _fold_padding_layers(net, origin)]
    upgraded = caffe_pb2.NetParameter(layers=layers, input=net.input, input_dim=net.input_dim)
    if net.HasField("name"):
        upgraded.name = net.name
    if net.HasField("force_backward"):
        upgraded.force_backward = net.force_backward
    net.CopyFrom(upgraded)
