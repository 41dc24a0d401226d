"""`Net.for_inference()`: a net optimised to run forward only, with the Net's blob-dict
interface (inputs by name in, the kept blobs by name out).

1. BatchNorm/Scale/Bias (and SegNet's BN in INFERENCE mode) are folded into the Convolution/InnerProduct before them (fold.py).
2. On the CPU, 2-D convolutions and inner products become oneDNN
   primitives with prepacked weights on channels_last activations, with a following ReLU
   and residual sum fused in (packed.py). Every other layer runs as it is.
3. The result is checked against the plain net on an example input; where it differs by
   more than `tolerance` the next simpler form is used ("packed", "folded", "plain").
   What those forwards change in the layers (counters, carried RNN state, running sums:
   Layer.forward_state) is put back afterwards; files a layer wrote are written again by
   the forwards that follow.
4. A forward drops each blob after the last layer that uses it (only the kept outputs
   remain), so the next layers' tops reuse memory that is still in cache.

The weights are those of the net when this is built: rebuild after changing them.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from runner.inference import packed
from runner.inference.fold import Step, fold_affine_layers
from runner.inference.packed import fuse_post_ops, pack_layers
from runner.threads import thread_policy

TOLERANCE = 1e-4   # max |optimised - plain|, relative to max |plain| (absolute below 1)
FORMS = ("packed", "folded", "plain")


def run_steps(steps: list[Step], blobs: dict, freed: list[tuple[str, ...]] | None = None) -> dict:
    """Run steps in order over a blob dict (updated in place and returned); with `freed`
    (freed_after's), drop each blob once no later step uses it."""
    for i, step in enumerate(steps):
        blobs.update(zip(step.tops, step.layer(*[blobs[n] for n in step.bottoms])))
        for name in freed[i] if freed else ():
            del blobs[name]
    return blobs


def freed_after(steps: list[Step], keep) -> list[tuple[str, ...]]:
    """For each step, the blobs it is the last to read or write, less those in `keep`:
    dropped there, their memory (still in cache) serves the next layers' tops."""
    last_use = {}
    for i, step in enumerate(steps):
        last_use.update((name, i) for name in (*step.bottoms, *step.tops))
    freed = [[] for _ in steps]
    for name, i in last_use.items():
        if name not in keep:
            freed[i].append(name)
    return [tuple(names) for names in freed]


def max_difference(got: dict, want: dict, names) -> float:
    """max over `names` of max |got - want| / max(1, max |want|)."""
    worst = 0.0
    for name in names:
        a, b = got[name].float(), want[name].float()
        if a.shape != b.shape:
            return float("inf")
        if b.numel():
            worst = max(worst, float((a - b).abs().max()) / max(1.0, float(b.abs().max())))
    return worst


def _seeded(device: torch.device, run):
    """run() with the random generators forked and seeded alike, so that layers drawing
    random numbers at inference (Monte Carlo dropout) draw the same in each form checked."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        return run()


def saved_forward_state(layers) -> list[tuple]:
    """Copies of what each layer's forwards change (Layer.forward_state)."""
    saved = []
    for layer in layers:
        for name in getattr(layer, "forward_state", ()):
            value = getattr(layer, name)
            if isinstance(value, nn.ParameterList):
                value = [p.detach().clone() for p in value]
            elif isinstance(value, torch.Tensor):
                value = value.detach().clone()
            else:
                value = copy.deepcopy(value)
            saved.append((layer, name, value))
    return saved


def restore_forward_state(saved: list[tuple]) -> None:
    """Put back what saved_forward_state copied (tensors in place, so parameters and
    buffers stay the objects the layers hold)."""
    for layer, name, value in saved:
        current = getattr(layer, name)
        if isinstance(current, nn.ParameterList):
            for p, v in zip(current, value):
                p.data.copy_(v)
        elif isinstance(current, torch.Tensor) and current.shape == value.shape:
            current.data.copy_(value)
        else:
            setattr(layer, name, copy.deepcopy(value))


class InferenceNet(nn.Module):
    """A Net's forward, optimised (see the module docstring). `forward(inputs)` takes
    {blob: tensor} as Net does and returns {blob: tensor} for `output_names` (the net's
    outputs unless others are asked for). `threads`: "auto" runs each forward on the cores
    other processes leave free (runner/threads.py), an int fixes the count, None leaves
    torch's setting alone. `form` ("auto" = the fastest that passes the check) says what
    runs: "packed", "folded" or "plain"; `differences` holds what the check measured."""

    def __init__(self, net, outputs=None, example: dict | None = None, form: str = "auto",
                 threads: str | int | None = "auto", tolerance: float = TOLERANCE):
        super().__init__()
        if form != "auto" and form not in FORMS:
            raise ValueError(f"form must be 'auto' or one of {FORMS}, got {form!r}")
        self.origin = net.origin
        self.input_names = list(net.input_names)
        self.output_names = list(outputs) if outputs is not None else list(net.output_names)
        unknown = [n for n in self.output_names if n not in net.blob_shapes]
        if unknown:
            raise ValueError(f"{net.origin}: no blob named {unknown} to keep as an output")
        self._check_inputs = net._check_inputs
        self.threads = thread_policy(threads)
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                self._build(net, example, form, tolerance)
        finally:
            net.train(was_training)

    def _build(self, net, example, form: str, tolerance: float) -> None:
        device = next((p.device for p in net.parameters()), torch.device("cpu"))
        example = example if example is not None else {
            n: torch.randn(net.blob_shapes[n], device=device) for n in self.input_names}
        state = saved_forward_state(net.layers.values())
        try:
            want = _seeded(device, lambda: net(example))
        except (RuntimeError, ValueError, IndexError) as err:
            raise ValueError(f"{net.origin}: the plain net fails on a random example input "
                             f"({err}); pass example={{blob: tensor}} with valid inputs") from err
        finally:
            restore_forward_state(state)
        keep, shapes, inputs = self.output_names, net.blob_shapes, self.input_names
        plain = [Step(k, layer, b, t) for (k, layer), (b, t, _) in zip(net.layers.items(), net._steps)]
        folded = fold_affine_layers(plain, inputs, shapes, keep)
        builders = {
            "packed": lambda: fuse_post_ops(pack_layers(folded, shapes), inputs, shapes, keep),
            "folded": lambda: folded,
            "plain": lambda: plain,
        }
        order = list(FORMS) if form == "auto" else list(dict.fromkeys([form, "plain"]))
        if "packed" in order and (device.type != "cpu" or not packed.available()):
            order.remove("packed")
        self.differences = {}
        for name in order:
            steps = builders[name]()
            try:
                got = _seeded(device, lambda: run_steps(steps, dict(example)))
            finally:
                restore_forward_state(state)
            self.differences[name] = max_difference(got, want, keep)
            if self.differences[name] <= tolerance:
                break
        self.form = name
        self.steps = steps
        self._freed = freed_after(steps, keep)
        self.layers = nn.ModuleList(s.layer for s in steps)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The kept output blobs of one forward."""
        with torch.no_grad():
            blobs = self._check_inputs(inputs)
            with self.threads.applied():
                run_steps(self.steps, blobs, self._freed)
        return {name: blobs[name] for name in self.output_names}

    def extra_repr(self) -> str:
        return f"origin={self.origin!r}, form={self.form!r}, outputs={self.output_names}"
