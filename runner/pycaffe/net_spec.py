"""pycaffe's NetSpec: write nets as Python calls (`L.Convolution(n.data, kernel_size=3)`)
and get Caffe's NetParameter back.

`layers.<Type>(*bottoms, **fields)` returns a Top (a tuple of Tops for ntop > 1, the layer
itself for ntop=0). Keyword fields go into the layer's own `<type>_param` when that message
has them, else into LayerParameter (`name`, `loss_weight`, `include`, `param`, ...);
`ntop` and `in_place` are NetSpec's own. `params.<Type>.<ENUM>` reads enum values
(`params.Pooling.MAX`). Names a NetSpec is given become top and layer names; the rest are
generated as `<Type><n>`, exactly as pycaffe does.
"""
from __future__ import annotations

from collections import Counter, OrderedDict

from .proto import caffe_pb2


def _param_field_names() -> dict[str, str]:
    """Layer type -> its LayerParameter field stem, read off the schema: ConvolutionParameter
    lives in `convolution_param`, so 'Convolution' -> 'convolution'."""
    names = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if field.name.endswith("_param") and field.message_type is not None:
            type_name = field.message_type.name
            if type_name.endswith("Parameter"):
                names[type_name[:-len("Parameter")]] = field.name[:-len("_param")]
    return names


# Types whose parameters live in another type's message (pycaffe has no such aliases).
_PARAM_FIELDS = {**_param_field_names(), "Deconvolution": "convolution", "Im2col": "convolution"}


def assign_proto(proto, name: str, value) -> None:
    """Set field `name` of `proto` from a Python value, recursively: dicts fill messages,
    lists (or tuples) fill repeated fields; a lone value in one becomes a one-item list."""
    field = getattr(proto, name)
    repeated = hasattr(field, "extend")
    if repeated and not isinstance(value, (list, tuple)):
        value = [value]
    if isinstance(value, (list, tuple)):
        if value and isinstance(value[0], dict):
            for item in value:
                message = field.add()
                for key, sub in item.items():
                    assign_proto(message, key, sub)
        else:
            field.extend(value)
    elif isinstance(value, dict):
        for key, sub in value.items():
            assign_proto(field, key, sub)
    else:
        setattr(proto, name, value)


def _assign_layer_field(layer, type_name: str, key: str, value) -> None:
    """pycaffe's rule: `*param` keys go to LayerParameter, others to the type's own
    parameter message when it has that field, else to LayerParameter."""
    own = None
    if not key.endswith("param") and type_name in _PARAM_FIELDS:
        own = getattr(layer, _PARAM_FIELDS[type_name] + "_param")
        if key in own.DESCRIPTOR.fields_by_name:
            assign_proto(own, key, value)
            return
    if key not in layer.DESCRIPTOR.fields_by_name:
        raise AttributeError("no such field in LayerParameter"
                             + (f" nor in {own.DESCRIPTOR.name}" if own is not None else ""))
    assign_proto(layer, key, value)


class Top:
    """One output blob of a layer (output `n` of Function `fn`)."""

    def __init__(self, fn: "Function", n: int):
        self.fn = fn
        self.n = n

    def to_proto(self) -> caffe_pb2.NetParameter:
        """A NetParameter with every layer needed to compute this top."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames) -> None:
        self.fn._to_proto(layers, names, autonames)


class Function:
    """One layer: its type, its bottoms (Tops) and its fields."""

    def __init__(self, type_name: str, inputs, params: dict):
        for index, bottom in enumerate(inputs):
            if not isinstance(bottom, Top):
                raise TypeError(f"{type_name} input {index} is not a Top (type is {type(bottom)})")
        self.type_name = type_name
        self.inputs = tuple(inputs)
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        if self.in_place and len(self.inputs) < self.ntop:
            raise ValueError(f"{type_name}: in_place writes each top over the bottom at its "
                             f"index, but it has {len(self.inputs)} bottoms for {self.ntop} tops")
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _top_name(self, top: Top, names, autonames) -> str:
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = top.fn.type_name + str(autonames[top.fn.type_name])
        return names[top]

    def _name(self, names, autonames) -> str:
        """The layer takes its first top's name; a top-less layer gets its own."""
        if self not in names:
            if self.ntop > 0:
                names[self] = self._top_name(self.tops[0], names, autonames)
            else:
                autonames[self.type_name] += 1
                names[self] = self.type_name + str(autonames[self.type_name])
        return names[self]

    def _to_proto(self, layers, names, autonames) -> None:
        if self in layers:
            return
        bottoms = []
        for bottom in self.inputs:
            bottom._to_proto(layers, names, autonames)
            bottoms.append(layers[bottom.fn].top[bottom.n])
        layer = caffe_pb2.LayerParameter(type=self.type_name, bottom=bottoms)
        if self.in_place:
            layer.top.extend(bottoms[:self.ntop])
        else:
            layer.top.extend(self._top_name(top, names, autonames) for top in self.tops)
        layer.name = self._name(names, autonames)
        for key, value in self.params.items():
            try:
                _assign_layer_field(layer, self.type_name, key, value)
            except (AttributeError, TypeError, ValueError) as exc:
                raise type(exc)(f"layer '{layer.name}' ({self.type_name}) field '{key}': "
                                f"{exc}") from None
        layers[self] = layer


def _check_part(name: str, value) -> None:
    if isinstance(value, tuple):
        raise TypeError(f"NetSpec '{name}' holds a tuple of {len(value)} tops; name each: "
                        "n.a, n.b = L.Type(..., ntop=2)")
    if not isinstance(value, (Top, Function)):
        raise TypeError(f"NetSpec '{name}' holds a {type(value).__name__}, not a layer's top")


def to_proto(*tops) -> caffe_pb2.NetParameter:
    """A NetParameter with every layer needed to compute `tops`; blob and layer names are
    generated (`<Type><n>`)."""
    layers, autonames = OrderedDict(), Counter()
    for top in tops:
        top.fn._to_proto(layers, {}, autonames)
    return caffe_pb2.NetParameter(layer=layers.values())


class NetSpec:
    """Tops assigned as attributes (`n.conv1 = L.Convolution(...)`) or items; to_proto()
    writes every layer they need, named after the attributes."""

    def __init__(self):
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name, value):
        self.tops[name] = value

    def __getattr__(self, name):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(f"NetSpec has no top '{name}'") from None

    def __setitem__(self, key, value):
        self.tops[key] = value

    def __getitem__(self, key):
        return self.tops[key]

    def to_proto(self) -> caffe_pb2.NetParameter:
        for name, top in self.tops.items():
            _check_part(name, top)
        names = {top: name for name, top in self.tops.items()}
        layers, autonames = OrderedDict(), Counter()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        return caffe_pb2.NetParameter(layer=layers.values())


class Layers:
    """`layers.<Type>(*bottoms, **fields)`: a layer of any type string."""

    def __getattr__(self, type_name):
        if type_name.startswith("__"):
            raise AttributeError(type_name)

        def layer_fn(*bottoms, **fields):
            fn = Function(type_name, bottoms, fields)
            if fn.ntop == 0:
                return fn
            return fn.tops[0] if fn.ntop == 1 else fn.tops
        layer_fn.__name__ = type_name
        return layer_fn


class _EnumValues:
    """The enum values of one `<Type>Parameter` message, as attributes."""

    def __init__(self, message):
        self._message = message

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return getattr(self._message, name)
        except AttributeError:
            values = sorted(v.name for e in self._message.DESCRIPTOR.enum_types for v in e.values)
            raise AttributeError(f"{self._message.DESCRIPTOR.name} has no value '{name}'; "
                                 f"it has: {', '.join(values) or 'none'}") from None


class Parameters:
    """`params.<Type>.<VALUE>`: enum constants of `<Type>Parameter`, e.g. Pooling.MAX."""

    def __getattr__(self, type_name):
        if type_name.startswith("__"):
            raise AttributeError(type_name)
        message = getattr(caffe_pb2, type_name + "Parameter", None)
        if message is None:
            raise AttributeError(f"caffe.proto has no message {type_name}Parameter")
        return _EnumValues(message)


layers = Layers()
params = Parameters()
