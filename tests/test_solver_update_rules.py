"""Every solver type and lr policy against a numpy transcription of Caffe's .cpp.

A two-layer linear net with a Euclidean loss is trained by our Solver; the same
updates are computed here in float64 numpy straight from sgd/nesterov/adagrad/rmsprop/
adadelta/adam_solver.cpp (GetLearningRate, ClipGradients, Normalize, Regularize,
ComputeUpdateValue), with the gradients of the net written out by hand, on the same
batches. Weights must agree to 1e-6 relative after every run.
"""
import math

import numpy as np
import pytest
import torch

from runner import Net
from runner.proto import caffe_pb2, parse_solver_text
from runner.solver import Solver, SolverOptions
from runner.solver.lr_policy import LearningRatePolicy
from runner.solver.updates import SGD, as_caffe_float

NET = """
name: "linear2"
layer { name: "data" type: "DummyData" top: "x" top: "t"
  dummy_data_param { shape { dim: 6 dim: 5 } shape { dim: 6 dim: 3 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "uniform" min: -1 max: 1 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.5 }
    bias_filler { type: "constant" value: 0.1 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "y"
  param { lr_mult: 0.5 decay_mult: 3 } param { lr_mult: 1 decay_mult: 1 }
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 }
    bias_filler { type: "constant" value: -0.2 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""
SEED = 7
ITERS = 36


# ---- the reference: Caffe's solver, transcribed -------------------------------------------

def caffe_rate(p, it, state):
    """SGDSolver::GetLearningRate; state['step'] is current_step_."""
    pol = p["lr_policy"]
    if pol == "fixed":
        return p["base_lr"]
    if pol == "step":
        state["step"] = it // p["stepsize"]
        return p["base_lr"] * p["gamma"] ** state["step"]
    if pol == "exp":
        return p["base_lr"] * p["gamma"] ** it
    if pol == "inv":
        return p["base_lr"] * (1 + p["gamma"] * it) ** (-p["power"])
    if pol == "multistep":
        if state["step"] < len(p["stepvalue"]) and it >= p["stepvalue"][state["step"]]:
            state["step"] += 1
        return p["base_lr"] * p["gamma"] ** state["step"]
    if pol == "poly":
        return p["base_lr"] * (1 - it / p["max_iter"]) ** p["power"]
    if pol == "sigmoid":
        return p["base_lr"] * (1 / (1 + math.exp(-p["gamma"] * (it - p["stepsize"]))))
    raise AssertionError(pol)


def grads(w, x, t):
    """Gradients of EuclideanLoss(ip2(ip1(x)), t) = sum((y-t)^2)/(2N) w.r.t. W1,b1,W2,b2."""
    W1, b1, W2, b2 = w
    h = x @ W1.T + b1
    y = h @ W2.T + b2
    dy = (y - t) / x.shape[0]
    dh = dy @ W2
    loss = ((y - t) ** 2).sum() / (2 * x.shape[0])
    return [dh.T @ x, dh.sum(0), dy.T @ h, dy.sum(0)], loss


def caffe_reference(p, w, batches, lr_mult, decay_mult):
    """Solver::Step + SGDSolver::ApplyUpdate + <Type>Solver::ComputeUpdateValue."""
    n = len(w)
    sets = 2 if p["type"] in ("AdaDelta", "Adam") else 1
    hist = [np.zeros_like(v) for _ in range(sets) for v in w]
    state = {"step": 0}
    m = p["momentum"]
    for it in range(p["max_iter"]):
        diff = [np.zeros_like(v) for v in w]
        for _ in range(p["iter_size"]):
            x, t = next(batches)
            g, _ = grads(w, x, t)
            diff = [d + gi for d, gi in zip(diff, g)]
        rate = caffe_rate(p, it, state)
        if p["clip_gradients"] >= 0:  # ClipGradients
            norm = math.sqrt(sum(float((d ** 2).sum()) for d in diff))
            if norm > p["clip_gradients"]:
                diff = [d * (p["clip_gradients"] / norm) for d in diff]
        for i in range(n):
            d = diff[i]
            if p["iter_size"] > 1:  # Normalize
                d = d / p["iter_size"]
            local_decay = p["weight_decay"] * decay_mult[i]  # Regularize
            if local_decay:
                d = d + local_decay * (w[i] if p["regularization_type"] == "L2" else np.sign(w[i]))
            lr = rate * lr_mult[i]
            typ = p["type"]
            if typ == "SGD":
                hist[i] = m * hist[i] + lr * d
                upd = hist[i]
            elif typ == "Nesterov":
                prev = hist[i].copy()
                hist[i] = m * hist[i] + lr * d
                upd = (1 + m) * hist[i] - m * prev
            elif typ == "AdaGrad":
                hist[i] = hist[i] + d * d
                upd = lr * d / (np.sqrt(hist[i]) + p["delta"])
            elif typ == "RMSProp":
                hist[i] = p["rms_decay"] * hist[i] + (1 - p["rms_decay"]) * d * d
                upd = lr * d / (np.sqrt(hist[i]) + p["delta"])
            elif typ == "AdaDelta":
                hist[i] = m * hist[i] + (1 - m) * d * d
                u = d * np.sqrt((hist[n + i] + p["delta"]) / (hist[i] + p["delta"]))
                hist[n + i] = m * hist[n + i] + (1 - m) * u * u
                upd = lr * u
            elif typ == "Adam":
                b1, b2, tt = m, p["momentum2"], it + 1
                hist[i] = b1 * hist[i] + (1 - b1) * d
                hist[n + i] = b2 * hist[n + i] + (1 - b2) * d * d
                corr = math.sqrt(1 - b2 ** tt) / (1 - b1 ** tt)
                upd = lr * corr * hist[i] / (np.sqrt(hist[n + i]) + p["delta"])
            w[i] = w[i] - upd
    return w, hist, state["step"]


# ---- the run ----------------------------------------------------------------------------

BASE = dict(base_lr=0.05, momentum=0.9, momentum2=0.999, delta=1e-8, rms_decay=0.99,
            weight_decay=0.01, regularization_type="L2", clip_gradients=-1.0, iter_size=1,
            gamma=0.5, power=0.75, stepsize=10, stepvalue=[5, 12, 20], max_iter=ITERS)

CASES = {
    # every type, each under a policy that changes the rate during the run
    "sgd-step": dict(type="SGD", lr_policy="step"),
    "nesterov-multistep": dict(type="Nesterov", lr_policy="multistep"),
    "adagrad-inv-l1": dict(type="AdaGrad", lr_policy="inv", momentum=0.0, base_lr=0.1,
                           regularization_type="L1", weight_decay=0.002, gamma=0.1),
    "rmsprop-exp": dict(type="RMSProp", lr_policy="exp", momentum=0.0, base_lr=0.01,
                        gamma=0.97, rms_decay=0.95),
    "adadelta-fixed-itersize": dict(type="AdaDelta", lr_policy="fixed", base_lr=1.0,
                                    momentum=0.95, delta=1e-4, iter_size=2),
    "adam-poly-clip": dict(type="Adam", lr_policy="poly", base_lr=0.01, power=2.0,
                           clip_gradients=0.5),
    # every policy under SGD
    "sgd-fixed-l1": dict(type="SGD", lr_policy="fixed", regularization_type="L1",
                         weight_decay=0.002),
    "sgd-exp": dict(type="SGD", lr_policy="exp", gamma=0.95),
    "sgd-inv-itersize": dict(type="SGD", lr_policy="inv", gamma=0.05, iter_size=3),
    "sgd-multistep-clip": dict(type="SGD", lr_policy="multistep", clip_gradients=0.3),
    "sgd-poly": dict(type="SGD", lr_policy="poly", power=0.5),
    "sgd-sigmoid": dict(type="SGD", lr_policy="sigmoid", gamma=0.2, stepsize=18),
}


def solver_text(p):
    lines = [f'net_param {{ {NET} }}', f'type: "{p["type"]}"', f'lr_policy: "{p["lr_policy"]}"',
             f'regularization_type: "{p["regularization_type"]}"', f"random_seed: {SEED}",
             "snapshot_after_train: false", "display: 0"]
    for key in ("base_lr", "momentum", "momentum2", "delta", "rms_decay", "weight_decay",
                "clip_gradients", "iter_size", "gamma", "power", "stepsize", "max_iter"):
        lines.append(f"{key}: {p[key]}")
    lines += [f"stepvalue: {v}" for v in p["stepvalue"]]
    return "\n".join(lines)


def reference_batches():
    """The batches the solver's train net draws (its DummyData seeded with random_seed)."""
    source = Net(parse_solver_text(f"net_param {{ {NET} }}").net_param, phase="TRAIN",
                 source_kwargs={"seed": SEED}).sources[0]
    for batch in source:
        yield batch["x"].double().numpy(), batch["t"].double().numpy()


@pytest.mark.parametrize("case", sorted(CASES))
def test_weights_match_numpy_transcription(case, tmp_path):
    p = {**BASE, **CASES[case]}
    param = parse_solver_text(solver_text(p))
    param.snapshot_prefix = str(tmp_path / "snap")
    solver = Solver(param, SolverOptions(progress=False))
    learnable = solver.net.learnable_params()
    assert [name for name, *_ in learnable] == ["ip1/0", "ip1/1", "ip2/0", "ip2/1"]
    start = [w.detach().double().numpy().copy() for _, w, _, _ in learnable]
    lr_mult = [lr for _, _, lr, _ in learnable]
    decay_mult = [d for _, _, _, d in learnable]
    assert lr_mult == [1, 2, 0.5, 1] and decay_mult == [1, 0, 3, 1]

    solver.solve()

    want, want_hist, want_step = caffe_reference(p, list(start), reference_batches(), lr_mult, decay_mult)
    got = [w.detach().double().numpy() for _, w, _, _ in learnable]
    scale = max(np.abs(e).max() for e in want)  # 1e-6 relative to the net's weight scale
    for name, g, e, s in zip(["W1", "b1", "W2", "b2"], got, want, start):
        assert np.abs(e - s).max() > 1e-3 * np.abs(s).max(), f"{name} barely moved: the case tests nothing"
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-6 * scale, err_msg=f"{case}: {name}")
    assert len(solver.update.history) == len(want_hist)
    for g, e in zip(solver.update.history, want_hist):
        np.testing.assert_allclose(g.double().numpy(), e, rtol=1e-4, atol=1e-6 * np.abs(e).max())
    assert solver.lr_policy.current_step == want_step
    assert solver.iter == ITERS


def test_clipping_actually_triggers():
    """The clip cases above would be vacuous if the gradient norm never exceeded the limit."""
    p = {**BASE, **CASES["sgd-multistep-clip"]}
    w = [np.random.default_rng(0).normal(0, 0.5, s) for s in ((4, 5), (4,), (3, 4), (3,))]
    x, t = next(reference_batches())
    g, _ = grads(w, x, t)
    assert math.sqrt(sum(float((d ** 2).sum()) for d in g)) > p["clip_gradients"]


def test_adagrad_rejects_momentum(tmp_path):
    p = {**BASE, "type": "AdaGrad", "lr_policy": "fixed", "momentum": 0.9}
    param = parse_solver_text(solver_text(p))
    param.snapshot_prefix = str(tmp_path / "snap")
    with pytest.raises(ValueError, match="momentum cannot be used with AdaGrad"):
        Solver(param, SolverOptions(progress=False))


def test_unknown_policy_is_named(tmp_path):
    p = {**BASE, "type": "SGD", "lr_policy": "cosine"}
    param = parse_solver_text(solver_text(p))
    param.snapshot_prefix = str(tmp_path / "snap")
    with pytest.raises(ValueError, match="lr_policy 'cosine'"):
        Solver(param, SolverOptions(progress=False))


def test_legacy_solver_type_enum_selects_the_rule(tmp_path):
    """solver_type: ADAM (pre-type Caffe) builds the Adam update."""
    text = solver_text({**BASE, "type": "SGD", "lr_policy": "fixed"}).replace('type: "SGD"', "solver_type: ADAM")
    param = parse_solver_text(text)
    param.snapshot_prefix = str(tmp_path / "snap")
    solver = Solver(param, SolverOptions(progress=False))
    assert type(solver.update).__name__ == "Adam"
    assert len(solver.update.history) == 2 * len(solver.net.learnable_params())


def test_rates_past_float_range_overflow_to_inf_as_caffes_floats_do():
    """GetLearningRate computes in C floats: what overflows there is inf (or 0 under the
    sigmoid's 1 / (1 + inf)), where Python's float power and exp raise OverflowError."""
    def policy(**fields):
        return LearningRatePolicy(caffe_pb2.SolverParameter(**fields))
    with np.errstate(over="ignore"):
        want_exp = float(np.float32(0.01) * np.float32(10.0) ** 400)
        want_sigmoid = float(np.float32(0.01) / (1 + np.exp(np.float32(1000.0))))
    assert want_exp == math.inf and want_sigmoid == 0.0
    assert policy(base_lr=0.01, lr_policy="exp", gamma=10).rate(400) == want_exp
    assert policy(base_lr=-0.01, lr_policy="exp", gamma=10).rate(400) == -math.inf
    assert policy(base_lr=0.01, lr_policy="sigmoid", gamma=1000, stepsize=2).rate(1) == want_sigmoid
    assert policy(base_lr=0.01, lr_policy="exp", gamma=10).rate(3) == pytest.approx(10.0)


def test_a_local_rate_past_float_range_updates_with_inf_as_caffe_does():
    """base_lr 3.4e38 (a float) times lr_mult 2 is inf in Caffe's float product; the
    update goes on with it (the solver then stops on the non-finite weights)."""
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    w.grad = torch.tensor([0.5, -0.5])
    update = SGD([("b", w, 2.0, 0.0)], caffe_pb2.SolverParameter(momentum=0.9))
    update.apply(3.4e38, 0)
    assert w.detach().tolist() == [-math.inf, math.inf]
    assert as_caffe_float(3.4e38) == 3.4e38 and as_caffe_float(-6.8e38) == -math.inf
