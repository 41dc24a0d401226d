"""debug_info: Caffe's per-layer statistics (net.cpp ForwardDebugInfo, BackwardDebugInfo,
Backward). Each value is checked against the same small net written out by hand in torch,
Split layers included: one blob feeds three bottoms, and two layers share a weight."""
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from runner import Net
from runner.proto import parse_net_text

from solver_helpers import classifier_net, make_lmdb, make_solver

NET = '''
name: "dbg"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" param { name: "w" }
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 }
    bias_filler { type: "gaussian" std: 1 } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" param { name: "w" }
  param { lr_mult: 0 }
  inner_product_param { num_output: 3 bias_filler { type: "gaussian" std: 1 } } }
layer { name: "sum" type: "Eltwise" bottom: "ip1" bottom: "ip2" bottom: "ip1" top: "s" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "label" top: "loss" }
'''
SPLIT = "ip1_relu1_0_split"
LINE = re.compile(r"\[(Forward|Backward)\] Layer (\S+), (top|param|bottom) blob (\S+) (data|diff): (\S+)$")


class ListLog:
    def __init__(self):
        self.lines = []

    def info(self, where, msg):
        self.lines.append(("I", where, msg))

    def error(self, where, msg):
        self.lines.append(("E", where, msg))

    def parsed(self):
        return [(m[1], m[2], m[3], m[4], float(m[6])) for _, _, msg in self.lines
                if (m := LINE.search(msg))]


def _by_hand(x, label, w, b1, b2):
    """The values Caffe's debug lines report for NET, from a functional torch pass with one
    leaf per Split top, so that each consumer's own bottom diff is seen."""
    w = w.detach().requires_grad_()
    b1 = b1.detach().requires_grad_()
    ip1 = x @ w.T + b1
    r = F.relu(ip1)
    r0, r1, r2 = (r.detach().requires_grad_() for _ in range(3))
    ip2 = r0 @ w.T + b2
    ip2_leaf = ip2.detach().requires_grad_()
    s = r1 + ip2_leaf + r2
    s_leaf = s.detach().requires_grad_()
    loss = F.cross_entropy(s_leaf, label.long())
    (ds,) = torch.autograd.grad(loss, s_leaf)
    g1, dip2, g2 = torch.autograd.grad(s, [r1, ip2_leaf, r2], ds)
    g0, dw_ip2 = torch.autograd.grad(ip2, [r0, w], dip2)
    split = g0 + g1 + g2
    dw_ip1, db1 = torch.autograd.grad(ip1, [w, b1], split * (ip1 > 0))
    m = lambda t: float(t.detach().abs().mean())  # noqa: E731
    forward = [("data", "top", "data", m(x)), ("data", "top", "label", m(label)),
               ("ip1", "top", "ip1", m(ip1)), ("ip1", "param", "w", m(w)), ("ip1", "param", "1", m(b1)),
               ("relu1", "top", "ip1", m(r))]
    forward += [(SPLIT, "top", f"{SPLIT}_{k}", m(r)) for k in range(3)]
    forward += [("ip2", "top", "ip2", m(ip2)), ("ip2", "param", "w", m(w)), ("ip2", "param", "1", m(b2)),
                ("sum", "top", "s", m(s)), ("loss", "top", "loss", float(loss.detach()))]
    backward = [("loss", "bottom", "s", m(ds)),
                ("sum", "bottom", f"{SPLIT}_1", m(g1)), ("sum", "bottom", "ip2", m(dip2)),
                ("sum", "bottom", f"{SPLIT}_2", m(g2)),
                ("ip2", "bottom", f"{SPLIT}_0", m(g0)), ("ip2", "param", "0", m(dw_ip2)),
                (SPLIT, "bottom", "ip1", m(split)), ("relu1", "bottom", "ip1", m(split * (ip1 > 0))),
                ("ip1", "param", "0", m(dw_ip1 + dw_ip2)), ("ip1", "param", "1", m(db1))]
    return forward, backward, dw_ip1 + dw_ip2, db1


def _check(lines, expected):
    """Parsed lines against (layer, top/param/bottom, blob, value) in order, values to 1e-5."""
    assert [line[1:4] for line in lines] == [e[:3] for e in expected]
    np.testing.assert_allclose([line[4] for line in lines], [e[3] for e in expected], rtol=1e-5)


def _inputs():
    gen = torch.Generator().manual_seed(3)
    return torch.randn(4, 3, generator=gen), torch.tensor([0.0, 2.0, 1.0, 2.0])


def test_runner_net_lines_equal_a_pass_written_out_by_hand():
    net = Net(parse_net_text(NET), phase="TRAIN")
    log = ListLog()
    net.set_debug_info(log)
    x, label = _inputs()
    net.objective(net({"data": x, "label": label})).backward()
    ip1, ip2 = net.layers["ip1"], net.layers["ip2"]
    forward, backward, dw, db1 = _by_hand(x, label, ip1.blobs[0], ip1.blobs[1], ip2.blobs[1])
    lines = log.parsed()
    assert [line[0] for line in lines] == ["Forward"] * len(forward) + ["Backward"] * len(backward)
    _check(lines[:len(forward)], forward)
    # the runner's autograd pass shows a shared blob's whole diff at each layer using it
    # (Caffe's shows the sum so far: ip2's own part at ip2, as the pycaffe test below checks)
    shared = [b if b[:3] != ("ip2", "param", "0") else b[:3] + (float(dw.abs().mean()),)
              for b in backward]
    _check(lines[len(forward):], shared)
    kind, where, norms = log.lines[-1]
    assert kind == "E" and where == "net.cpp:721"
    params = [p.detach() for p in (ip1.blobs[0], ip1.blobs[1], ip2.blobs[1])]
    grads = [dw, db1, torch.zeros(3)]
    l1 = re.search(r"L1 norm = \((\S+), (\S+)\); L2 norm = \((\S+), (\S+)\)", norms).groups()
    np.testing.assert_allclose([float(v) for v in l1], [
        sum(float(p.abs().sum()) for p in params), sum(float(g.abs().sum()) for g in grads),
        float(torch.cat([p.detach().reshape(-1) for p in params]).norm()),
        float(torch.cat([g.reshape(-1) for g in grads]).norm())], rtol=1e-5)


def test_pycaffe_net_shows_caffe_partial_sums_and_no_norms_outside_a_solver(capsys):
    import caffe

    net = caffe.Net(_write(NET.replace('name: "dbg"', 'name: "dbg"\ndebug_info: true')), caffe.TRAIN)
    x, label = _inputs()
    net.blobs["data"].data[...] = x.numpy()
    net.blobs["label"].data[...] = label.numpy()
    net.forward()
    net.backward()
    err = capsys.readouterr().err
    log = ListLog()
    log.lines = [("I", "", line) for line in err.splitlines()]
    w = torch.from_numpy(net.params["ip1"][0].data.copy())
    b1 = torch.from_numpy(net.params["ip1"][1].data.copy())
    b2 = torch.from_numpy(net.params["ip2"][1].data.copy())
    forward, backward, _, _ = _by_hand(x, label, w, b1, b2)
    lines = log.parsed()
    _check(lines, forward + backward)
    assert "All net params" not in err   # BackwardFromTo, not Net::Backward
    assert re.search(r"^I\d{4} [\d:.]+ +\d+ net\.cpp:593\]     \[Forward\] Layer data, top blob data data: ",
                     err, re.M)


def _write(text):
    import tempfile

    f = tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False)
    f.write(text)
    f.close()
    return f.name


def test_net_parameter_debug_info_writes_to_stderr(capsys):
    net = Net(parse_net_text(NET.replace('name: "dbg"', 'name: "dbg"\ndebug_info: true')), phase="TRAIN")
    x, label = _inputs()
    with torch.no_grad():
        net({"data": x, "label": label})
    err = capsys.readouterr().err
    assert err.count("[Forward] Layer") == 14 and "[Backward]" not in err
    net.set_debug_info(None)
    with torch.no_grad():
        net({"data": x, "label": label})
    assert "[Forward]" not in capsys.readouterr().err


# ---- the solver --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lmdb_dir(tmp_path_factory):
    return make_lmdb(tmp_path_factory.mktemp("debuginfo") / "train_lmdb", 24, side=9)


def _three_consumers(lmdb_dir):
    """pool1 feeds ip, ip_ds1 and ip_c: a Split with three tops."""
    return classifier_net(lmdb_dir, batch=4, aux=0.3, test_source=lmdb_dir) + '''
layer { name: "ip_c" type: "InnerProduct" bottom: "pool1" top: "ip_c"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss_c" type: "SoftmaxWithLoss" bottom: "ip_c" bottom: "label" top: "loss_c"
  loss_weight: 0.5 }'''


def _solve(lmdb_dir, root, **fields):
    solver = make_solver(_three_consumers(lmdb_dir), root / "s", max_iter=5, display=2, iter_size=2,
                         test_interval=4, test_iter=2, test_initialization="false", **fields)
    solver.solve()
    return solver, (root / "s.log").read_text()


def test_solver_logs_displayed_iterations_and_trains_the_same(lmdb_dir, tmp_path):
    plain, plain_log = _solve(lmdb_dir, tmp_path / "plain")
    debug, log = _solve(lmdb_dir, tmp_path / "debug", debug_info="true")
    for (name, a, _, _), (_, b, _, _) in zip(plain.net.learnable_params(), debug.net.learnable_params()):
        assert torch.equal(a, b), name
    assert "[Forward]" not in plain_log and "All net params" not in plain_log
    # iterations 0, 2 and 4 are displayed, each with iter_size 2 passes; the final display
    # forward after iteration 5 (not displayed) writes none; the test at 4 logs forward
    # lines for each of its 2 iterations
    assert log.count("All net params") == 6
    train_forward = len(re.findall(r"\[Forward\] Layer loss_c, top blob loss_c", log))
    assert train_forward == 6 + 2   # the test net has loss_c too
    assert "[Backward] Layer pool1_pool1_0_split, bottom blob pool1 diff: " in log
    for k in range(3):
        assert f"[Forward] Layer pool1_pool1_0_split, top blob pool1_pool1_0_split_{k} data: " in log


def test_pycaffe_solver_logs_norms_per_pass(lmdb_dir, tmp_path):
    import caffe

    path = tmp_path / "solver.prototxt"
    path.write_text(f'net_param {{ {_three_consumers(lmdb_dir)} }}\nbase_lr: 0.05\n'
                    f'lr_policy: "fixed"\nmax_iter: 5\ndisplay: 1\ndebug_info: true\n'
                    f'snapshot_prefix: "{tmp_path}/s"\nrandom_seed: 1\n')
    solver = caffe.SGDSolver(str(path))
    solver.step(1)
    log = (tmp_path / "s.log").read_text()
    assert log.count("All net params") == 1
    assert "[Backward] Layer conv1, param blob 0 diff: " in log
    assert "[Backward] Layer conv1, bottom blob" not in log   # data needs no diff
