"""Run Caffe prototxt as PyTorch graphs and train them with Caffe's solver semantics."""


def __getattr__(name):
    if name == "Net":
        from runner.net import Net
        return Net
    raise AttributeError(name)
