"""Write the benchmark deploy nets beside this file: googlenet, resnet50 and squeezenet
prototxts shaped like BVLC's bvlc_googlenet, KaimingHe's ResNet-50 and SqueezeNet 1.1.

    python bench/nets/write_nets.py        # rewrites bench/nets/*.prototxt

They are deploy nets (Input layer, batch 1) with no fillers: benchmarks give them seeded
He-scaled weights (bench/inference_nets.py).
"""
from __future__ import annotations

from pathlib import Path

from runner.proto import caffe_pb2, write_text

POOL = caffe_pb2.PoolingParameter


class NetBuilder:
    """Appends layers to a NetParameter; each helper returns its top's name."""

    def __init__(self, name: str, shape: tuple[int, ...]):
        self.net = caffe_pb2.NetParameter(name=name)
        lp = self.net.layer.add(name="data", type="Input", top=["data"])
        lp.input_param.shape.add(dim=shape)

    def layer(self, name, type_, bottoms, top=None):
        lp = self.net.layer.add(name=name, type=type_, bottom=list(bottoms), top=[top or name])
        return lp

    def conv(self, name, bottom, out, kernel, stride=1, pad=0, bias=True):
        p = self.layer(name, "Convolution", [bottom]).convolution_param
        p.num_output, p.bias_term = out, bias
        p.kernel_size.append(kernel)
        if stride != 1:
            p.stride.append(stride)
        if pad:
            p.pad.append(pad)
        return name

    def relu(self, name, blob):
        self.layer(name, "ReLU", [blob], blob)
        return blob

    def pool(self, name, bottom, kernel=0, stride=1, pad=0, ave=False, global_=False):
        p = self.layer(name, "Pooling", [bottom]).pooling_param
        p.pool = POOL.AVE if ave else POOL.MAX
        if global_:
            p.global_pooling = True
        else:
            p.kernel_size, p.stride = kernel, stride
            if pad:
                p.pad = pad
        return name

    def bn_scale(self, name, blob):
        """Caffe's BatchNorm (global statistics) + Scale with bias, in place."""
        self.layer(f"bn_{name}", "BatchNorm", [blob], blob).batch_norm_param.use_global_stats = True
        self.layer(f"scale_{name}", "Scale", [blob], blob).scale_param.bias_term = True
        return blob

    def lrn(self, name, bottom):
        p = self.layer(name, "LRN", [bottom]).lrn_param
        p.local_size, p.alpha, p.beta = 5, 1e-4, 0.75
        return name

    def concat(self, name, bottoms):
        self.layer(name, "Concat", bottoms)
        return name

    def head(self, bottom, classes=1000, fc=True):
        top = bottom
        if fc:
            top = "fc"
            self.layer(top, "InnerProduct", [bottom]).inner_product_param.num_output = classes
        self.layer("prob", "Softmax", [top])


def googlenet() -> caffe_pb2.NetParameter:
    b = NetBuilder("googlenet", (1, 3, 224, 224))
    x = b.relu("conv1/relu", b.conv("conv1/7x7_s2", "data", 64, 7, 2, 3))
    x = b.lrn("pool1/norm1", b.pool("pool1/3x3_s2", x, 3, 2))
    x = b.relu("conv2/relu_reduce", b.conv("conv2/3x3_reduce", x, 64, 1))
    x = b.relu("conv2/relu", b.conv("conv2/3x3", x, 192, 3, 1, 1))
    x = b.pool("pool2/3x3_s2", b.lrn("conv2/norm2", x), 3, 2)
    stages = [("3a", 64, 96, 128, 16, 32, 32), ("3b", 128, 128, 192, 32, 96, 64), "pool3",
              ("4a", 192, 96, 208, 16, 48, 64), ("4b", 160, 112, 224, 24, 64, 64),
              ("4c", 128, 128, 256, 24, 64, 64), ("4d", 112, 144, 288, 32, 64, 64),
              ("4e", 256, 160, 320, 32, 128, 128), "pool4",
              ("5a", 256, 160, 320, 32, 128, 128), ("5b", 384, 192, 384, 48, 128, 128)]
    for stage in stages:
        if isinstance(stage, str):
            x = b.pool(f"{stage}/3x3_s2", x, 3, 2)
            continue
        n, c1, r3, c3, r5, c5, proj = stage
        p = f"inception_{n}"
        branches = [
            b.relu(f"{p}/relu_1x1", b.conv(f"{p}/1x1", x, c1, 1)),
            b.relu(f"{p}/relu_3x3", b.conv(f"{p}/3x3", b.relu(
                f"{p}/relu_3x3_reduce", b.conv(f"{p}/3x3_reduce", x, r3, 1)), c3, 3, 1, 1)),
            b.relu(f"{p}/relu_5x5", b.conv(f"{p}/5x5", b.relu(
                f"{p}/relu_5x5_reduce", b.conv(f"{p}/5x5_reduce", x, r5, 1)), c5, 5, 1, 2)),
            b.relu(f"{p}/relu_pool_proj", b.conv(f"{p}/pool_proj",
                                                 b.pool(f"{p}/pool", x, 3, 1, 1), proj, 1)),
        ]
        x = b.concat(f"{p}/output", branches)
    x = b.pool("pool5/7x7_s1", x, 7, 1, ave=True)
    b.layer("pool5/drop_7x7_s1", "Dropout", [x], x).dropout_param.dropout_ratio = 0.4
    b.head(x)
    return b.net


def resnet50() -> caffe_pb2.NetParameter:
    b = NetBuilder("resnet50", (1, 3, 224, 224))
    x = b.relu("conv1_relu", b.bn_scale("conv1", b.conv("conv1", "data", 64, 7, 2, 3, bias=False)))
    x = b.pool("pool1", x, 3, 2)
    for stage, (blocks, width) in enumerate([(3, 64), (4, 128), (6, 256), (3, 512)], start=2):
        for i in range(blocks):
            n = f"{stage}{chr(ord('a') + i)}"
            stride = 2 if i == 0 and stage > 2 else 1
            shortcut = x
            if i == 0:
                shortcut = b.bn_scale(f"{n}_branch1", b.conv(f"res{n}_branch1", x, 4 * width, 1,
                                                             stride, bias=False))
            y = b.conv(f"res{n}_branch2a", x, width, 1, stride, bias=False)
            y = b.relu(f"res{n}_branch2a_relu", b.bn_scale(f"{n}_branch2a", y))
            y = b.conv(f"res{n}_branch2b", y, width, 3, 1, 1, bias=False)
            y = b.relu(f"res{n}_branch2b_relu", b.bn_scale(f"{n}_branch2b", y))
            y = b.bn_scale(f"{n}_branch2c", b.conv(f"res{n}_branch2c", y, 4 * width, 1, bias=False))
            b.layer(f"res{n}", "Eltwise", [shortcut, y])
            x = b.relu(f"res{n}_relu", f"res{n}")
    b.head(b.pool("pool5", x, 7, 1, ave=True))
    return b.net


def squeezenet() -> caffe_pb2.NetParameter:
    b = NetBuilder("squeezenet1.1", (1, 3, 227, 227))
    x = b.pool("pool1", b.relu("relu_conv1", b.conv("conv1", "data", 64, 3, 2)), 3, 2)
    fires = [(2, 16, 64), (3, 16, 64), "pool3", (4, 32, 128), (5, 32, 128), "pool5",
             (6, 48, 192), (7, 48, 192), (8, 64, 256), (9, 64, 256)]
    for fire in fires:
        if isinstance(fire, str):
            x = b.pool(fire, x, 3, 2)
            continue
        n, squeeze, expand = fire
        p = f"fire{n}"
        s = b.relu(f"{p}/relu_squeeze1x1", b.conv(f"{p}/squeeze1x1", x, squeeze, 1))
        e1 = b.relu(f"{p}/relu_expand1x1", b.conv(f"{p}/expand1x1", s, expand, 1))
        e3 = b.relu(f"{p}/relu_expand3x3", b.conv(f"{p}/expand3x3", s, expand, 3, 1, 1))
        x = b.concat(f"{p}/concat", [e1, e3])
    b.layer("drop9", "Dropout", [x], x).dropout_param.dropout_ratio = 0.5
    x = b.relu("relu_conv10", b.conv("conv10", x, 1000, 1))
    b.head(b.pool("pool10", x, ave=True, global_=True), fc=False)
    return b.net


NETS = {"googlenet": googlenet, "resnet50": resnet50, "squeezenet": squeezenet}


def main() -> None:
    here = Path(__file__).resolve().parent
    for name, build in NETS.items():
        write_text(build(), here / f"{name}.prototxt")
        print(f"wrote {here / name}.prototxt")


if __name__ == "__main__":
    main()
