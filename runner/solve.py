"""Train, score and time Caffe nets as Caffe's `caffe` tool does (`caffe-ds`).

  caffe-ds solver.prototxt [--weights W[,W2]] [--snapshot S] [--gpu G] ...
  caffe-ds train --solver solver.prototxt ...     (same, Caffe's spelling; -solver, -weights,
                                                    -gpu=0 ... as Caffe's gflags take them too)
  caffe-ds test --model M --weights W --iterations N [--gpu G]
  caffe-ds time --model M --iterations N [--gpu G]
  caffe-ds device_query -gpu G                    (python -m runner.tools.device_query)
  torchrun --nproc_per_node=K runner/solve.py solver.prototxt ...   (data parallel)

`python runner/solve.py ...` is the same command (runner is imported as the installed
package). train and test write a JSON result (docs/results.md).
"""
import argparse
import sys

from runner import console

PATHS_NOTE = ("Paths on the command line and inside the prototxt files (net, snapshot_prefix, "
              "data sources, mean files) resolve relative to the working directory, as Caffe's.")


def _flag(parser: argparse.ArgumentParser, name: str, *more: str, **kw) -> None:
    """--name, and -name as Caffe's gflags spell it (`caffe train -solver s.prototxt`)."""
    parser.add_argument(f"--{name}", f"-{name}", *more, **kw)


def _common(parser: argparse.ArgumentParser) -> None:
    _flag(parser, "gpu", help="GPU ids: 0, 0,1 or all (default: the CPU; a solver's "
                        "solver_mode: GPU picks device_id when this is absent)")


def train_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Train a net with Caffe's solver semantics (caffe train). "
        + PATHS_NOTE + " The log goes to stderr and to <snapshot_prefix>.log; the curves "
        "to <snapshot_prefix>_training.png.",
        epilog="Other commands: `test --model M --weights W --iterations N` (caffe test), "
               "`time --model M --iterations N` (caffe time) and `device_query --gpu G`; "
               "see `<command> --help`. "
               "Data parallel: torchrun --nproc_per_node=K runner/solve.py solver.prototxt "
               "(gloo on the CPU, nccl with --gpu), or --gpu 0,1 to start one process per GPU.")
    p.add_argument("solver", nargs="?", help="solver prototxt")
    _flag(p, "solver", dest="solver_flag", help="solver prototxt (Caffe's spelling)")
    _flag(p, "weights", help="comma-separated .caffemodel (or .caffemodel.h5) files to fine-tune "
          "from, in order")
    _flag(p, "snapshot", help=".solverstate (or .solverstate.h5) to resume from")
    _flag(p, "iterations", type=console.at_least(0), help="override max_iter")
    p.add_argument("--aux-decay", choices=["eq2", "linear", "none"], default="eq2",
                   help="decay of auxiliary loss weights per epoch (default eq2: "
                        "alpha <- alpha * (1 - t/N))")
    p.add_argument("--aux-loss", nargs="+", default=[], metavar="TOP",
                   help="auxiliary loss tops (default: tops named like *_ds<k>)")
    p.add_argument("--result", help="JSON result file (default <snapshot_prefix>_result.json)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--channels-last", action="store_true",
                   help="channels_last (NHWC) memory format; on the CPU only where a timed "
                        "training pass of the net is at least 5%% faster in it")
    p.add_argument("--compile", action="store_true", help="torch.compile the nets")
    p.add_argument("--tensorboard", metavar="DIR", help="also write TensorBoard scalars (loss, lr, "
                   "test outputs, auxiliary weights) to DIR; needs the tensorboard extra")
    for sig, default in (("sigint", "stop"), ("sighup", "snapshot")):
        _flag(p, f"{sig}_effect", f"--{sig}-effect", default=default,
                       choices=["stop", "snapshot", "none"],
                       help=f"what {sig.upper()} does (default {default})")
    _common(p)
    return p


def model_parser(prog: str, command: str) -> argparse.ArgumentParser:
    what = {"test": "Score trained weights on a net (caffe test): outputs per batch and averaged.",
            "time": "Time a net's forward and backward passes per layer (caffe time)."}[command]
    p = argparse.ArgumentParser(prog=f"{prog} {command}", description=what + " " + PATHS_NOTE)
    _flag(p, "model", required=True, help="net prototxt")
    _flag(p, "weights", required=command == "test",
          help="comma-separated .caffemodel (or .caffemodel.h5) files")
    _flag(p, "iterations", type=console.at_least(1), default=50, help="batches (default 50)")
    _flag(p, "phase", choices=["TRAIN", "TEST"], default="TEST" if command == "test" else "TRAIN")
    _flag(p, "stage", default="", help="comma-separated stages")
    _flag(p, "level", type=int, default=0)
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="load weights holding NaN or inf (with a warning) instead of refusing them")
    if command == "test":
        p.add_argument("--result", help="JSON result file (default: beside the first weights "
                       "file, <name>_test.json for <name>.caffemodel)")
    _common(p)
    return p


def run_train(args) -> None:
    from runner.solver import SolverOptions, load_solver_param
    from runner.solver import distributed
    from runner.solver.caffe_log import CaffeLog

    path = args.solver or args.solver_flag
    if not path:
        raise ValueError("give a solver prototxt (solve.py solver.prototxt or --solver)")
    if args.snapshot and args.weights:
        raise ValueError("Give a snapshot to resume training or weights to finetune but not both.")
    param = load_solver_param(path)
    if args.iterations is not None:
        param.max_iter = args.iterations
    gpus, warning = distributed.parse_gpus(args.gpu, param)
    if warning:
        CaffeLog().warning("caffe.cpp:203", warning)
    options = SolverOptions(
        weights=args.weights.split(",") if args.weights else [], aux_decay=args.aux_decay,
        aux_loss=args.aux_loss, amp=args.amp, channels_last=args.channels_last,
        compile=args.compile, sigint_effect=args.sigint_effect,
        sighup_effect=args.sighup_effect, append_log=bool(args.snapshot),
        tensorboard=args.tensorboard)
    result = (path, args.result)
    if len(gpus) > 1 and not distributed.launched_by_torchrun():
        distributed.spawn(train_rank, len(gpus), param.SerializeToString(), options, gpus,
                          args.snapshot, result)
    else:
        train_process(param, options, gpus, args.snapshot, result)


def train_process(param, options, gpus, resume, result=(None, None)) -> None:
    """One rank of training (the only one without torch.distributed); the root rank
    writes the JSON result, `result` = (solver file, result path or None: the default)."""
    from runner.results import ProcessClock
    from runner.solver import Solver
    from runner.solver import distributed
    from runner.solver.command_results import train_result_path, write_train_result

    ctx = distributed.init_process_group(gpus)
    clock = ProcessClock()
    try:
        solver = Solver(param, options, ctx)
        status = "failed"
        try:
            solver.solve(resume)
            status = "stopped" if solver.requested_early_exit else "done"
        finally:
            if ctx.is_root:
                solver_file, path = result
                write_train_result(path or train_result_path(param.snapshot_prefix), solver,
                                   solver_file, status, clock, resumed=bool(resume))
    finally:
        distributed.shutdown()


def train_rank(serialized_param: bytes, options, gpus, resume, result=(None, None)) -> None:
    """train_process for a spawned rank (a SolverParameter travels as its bytes)."""
    from runner.proto import caffe_pb2

    train_process(caffe_pb2.SolverParameter.FromString(serialized_param), options, gpus,
                  resume, result)


def run_model_command(command: str, args) -> None:
    from runner import Net
    from runner.results import ProcessClock
    from runner.solver import distributed
    from runner.solver.caffe_log import CaffeLog
    from runner.solver.command_results import test_result_path, write_test_result
    from runner.solver.evaluate import score_net
    from runner.solver.timing import time_net

    clock = ProcessClock()
    gpus, warning = distributed.parse_gpus(args.gpu)
    log = CaffeLog()
    if warning:
        log.warning("caffe.cpp:203", warning)
    device = distributed.pick_device(gpus, 0)
    stages = [s for s in args.stage.split(",") if s]
    weights = args.weights.split(",") if args.weights else None
    net = Net(args.model, phase=args.phase, stages=stages, level=args.level, weights=weights,
              allow_nonfinite=args.allow_nonfinite)
    log.info("caffe.cpp:249", "Use CPU." if device.type == "cpu" else f"Use GPU with device ID {device.index}")
    if command == "test":
        scores = score_net(net, args.iterations, device, log)
        write_test_result(args.result or test_result_path(weights[0]), args.model, weights,
                          args.phase, args.iterations, scores, clock)
    else:
        time_net(net, args.iterations, device, log)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = console.prog("python runner/solve.py")
    command = argv[0] if argv and argv[0] in ("train", "test", "time", "device_query") else "train"
    if argv and argv[0] == command:
        argv = argv[1:]
    if command == "device_query":   # Caffe's fourth command; its home is runner.tools
        from runner.tools import device_query
        return device_query.main(argv)
    parser = train_parser(prog) if command == "train" else model_parser(prog, command)
    args = parser.parse_args(argv)
    from runner.graph import LayerMemoryError
    from runner.solver.errors import SolverDiverged
    try:
        if command == "train":
            run_train(args)
        else:
            run_model_command(command, args)
    except (ValueError, OSError, SolverDiverged, LayerMemoryError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        if not type(err).__module__.startswith(("torch._dynamo", "torch._inductor")):
            raise
        # --compile met a torch.compile failure (seen: an InductorError in torch 2.11)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        print(f"{prog}: error: torch.compile failed ({type(err).__name__}: {first}); "
              "run without --compile", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
