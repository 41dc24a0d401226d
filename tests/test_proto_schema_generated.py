"""caffe_pb2.py must be what protoc generates from caffe.proto today."""
import ast
import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

from runner.proto import caffe_pb2

PROTO_DIR = Path(__file__).resolve().parents[1] / "runner" / "proto"


def _serialized_descriptor(generated_py: Path) -> bytes:
    """The bytes passed to AddSerializedFile(...) in a generated _pb2 module."""
    for node in ast.walk(ast.parse(generated_py.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile":
            return ast.literal_eval(node.args[0])
    raise AssertionError(f"no AddSerializedFile call in {generated_py}")


def test_caffe_pb2_matches_a_fresh_protoc_run(tmp_path):
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}",
                    f"--python_out={tmp_path}", str(PROTO_DIR / "caffe.proto")],
                   check=True, capture_output=True)
    fresh = _serialized_descriptor(tmp_path / "caffe_pb2.py")
    committed = _serialized_descriptor(PROTO_DIR / "caffe_pb2.py")
    if fresh != committed:
        old = descriptor_pb2.FileDescriptorProto.FromString(committed)
        new = descriptor_pb2.FileDescriptorProto.FromString(fresh)
        changed = sorted({m.name for m in new.message_type} ^ {m.name for m in old.message_type}
                         | {n.name for n, o in zip(new.message_type, old.message_type) if n != o})
        raise AssertionError("runner/proto/caffe_pb2.py is stale; regenerate with "
                             "`python -m grpc_tools.protoc -Irunner/proto --python_out=runner/proto "
                             f"runner/proto/caffe.proto` (messages that differ: {changed})")
    assert Path(caffe_pb2.__file__).resolve() == PROTO_DIR / "caffe_pb2.py"
