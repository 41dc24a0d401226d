"""ONNX forms of the sequence layers (LSTM and RNN as a Scan, LSTMUnit, ContinuationIndicator,
CTCGreedyDecoder) checked by ONNX Runtime against our forward: static input, exposed state,
cont read from an Input with resets inside the sequence, other sequence lengths, decoding
cut by indicators, and docs/ocr.md's two deploy nets."""
import re
from pathlib import Path

import numpy as np
import torch
from google.protobuf import text_format
from test_onnx_export import assert_matches, export_and_compare, run_onnx
from test_oracle_opencv import randomize

from runner import Net
from runner.onnx_export import build_model
from runner.proto import caffe_pb2

ROOT = Path(__file__).resolve().parents[1]

RECURRENT = """
layer { name: "data" type: "Input" top: "data" top: "static" top: "h0" top: "c0"
  input_param { shape { dim: 5 dim: 3 dim: 2 dim: 2 } shape { dim: 3 dim: 6 }
                shape { dim: 1 dim: 3 dim: 7 } shape { dim: 1 dim: 3 dim: 7 } } }
layer { name: "cont" type: "ContinuationIndicator" bottom: "data" top: "cont"
  continuation_indicator_param { time_step: 5 axis: 1 } }
layer { name: "lstm" type: "LSTM" bottom: "data" bottom: "cont" bottom: "static" top: "lstm"
  recurrent_param { num_output: 7 } }
layer { name: "lstm2" type: "LSTM" bottom: "lstm" bottom: "cont" bottom: "h0" bottom: "c0"
  top: "lstm2" top: "hT" top: "cT" recurrent_param { num_output: 7 expose_hidden: true } }
layer { name: "rnn" type: "RNN" bottom: "lstm2" bottom: "cont" bottom: "static" top: "rnn"
  recurrent_param { num_output: 4 } }
layer { name: "rnn2" type: "RNN" bottom: "rnn" bottom: "cont" bottom: "h0" top: "rnn2" top: "h_last"
  recurrent_param { num_output: 7 expose_hidden: true } }
"""

CONT_INPUT = """
layer { name: "data" type: "Input" top: "data" top: "cont"
  input_param { shape { dim: %(T)d dim: 4 dim: 3 } shape { dim: %(T)d dim: 4 } } }
layer { name: "lstm" type: "LSTM" bottom: "data" bottom: "cont" top: "lstm" recurrent_param { num_output: 5 } }
layer { name: "rnn" type: "RNN" bottom: "lstm" bottom: "cont" top: "rnn" recurrent_param { num_output: 3 } }
"""

UNIT = """
layer { name: "data" type: "Input" top: "c_prev" top: "gates" top: "cont"
  input_param { shape { dim: 1 dim: 3 dim: 4 } shape { dim: 1 dim: 3 dim: 16 } shape { dim: 1 dim: 3 } } }
layer { name: "unit" type: "LSTMUnit" bottom: "c_prev" bottom: "gates" bottom: "cont" top: "c" top: "h" }
"""


def _net(text: str) -> Net:
    return Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase="TEST")


def test_lstm_and_rnn_with_static_input_and_exposed_state(tmp_path):
    path = tmp_path / "recurrent.prototxt"
    path.write_text(RECURRENT)
    model = export_and_compare(path)
    assert [n.op_type for n in model.graph.node].count("Scan") == 4


def _cont(T: int, gen: torch.Generator) -> torch.Tensor:
    """0/1 cont with resets inside the sequences; streams 0 and 1 start at 0, 2 and 3 at 1."""
    cont = (torch.rand(T, 4, generator=gen) > 0.3).float()
    cont[0] = torch.tensor([0.0, 0.0, 1.0, 1.0])
    return cont


def test_cont_from_an_input_with_resets_and_other_sequence_lengths():
    """The graph starts from a zero state, as a fresh net; its time axis is free, so a graph
    exported at T = 6 runs T = 9 as a net built for 9 does (with the same weights)."""
    gen = torch.Generator().manual_seed(3)
    net6 = _net(CONT_INPUT % {"T": 6})
    randomize(net6, gen)
    model = build_model(net6, outputs=["lstm", "rnn"])
    for T in (6, 9):
        net = _net(CONT_INPUT % {"T": T})
        net.load_state_dict(net6.state_dict())
        inputs = {"data": torch.randn(T, 4, 3, generator=gen), "cont": _cont(T, gen)}
        assert_matches(net, model, inputs, f"T = {T}")


def test_a_carried_state_is_harmless_where_cont_starts_at_zero():
    """Caffe carries h_T into the next forward; cont 0 at t = 0 cancels it, so every forward
    of the net equals the graph."""
    gen = torch.Generator().manual_seed(4)
    net = _net(CONT_INPUT % {"T": 5})
    randomize(net, gen)
    model = build_model(net, outputs=["rnn"])
    for _ in range(3):
        inputs = {"data": torch.randn(5, 4, 3, generator=gen), "cont": _cont(5, gen)}
        inputs["cont"][0] = 0
        assert_matches(net, model, inputs, "a later forward")


def test_lstm_unit(tmp_path):
    path = tmp_path / "unit.prototxt"
    path.write_text(UNIT)
    export_and_compare(path)


def _doc_net(name: str, batch: int) -> str:
    doc = (ROOT / "docs" / "ocr.md").read_text()
    (text,) = re.findall(rf"```prototxt\n# ocr/{name}\n(.*?)```", doc, re.S)
    return text.replace("dim: 1 dim: 1 dim: 24 dim: 96", f"dim: {batch} dim: 1 dim: 24 dim: 96")


def test_the_ocr_guides_deploy_nets_export_up_to_their_scores():
    """docs/ocr.md's CRNN and BLSTM deploy nets (random weights) up to `fc`, at batch 1 and
    3 (the Permute to T x N x C fixes the graph's batch at the net's)."""
    gen = torch.Generator().manual_seed(5)
    for name in ("deploy.prototxt", "blstm_deploy.prototxt"):
        for batch in (1, 3):
            net = _net(_doc_net(name, batch))
            randomize(net, gen)
            model = build_model(net, outputs=["fc"])
            assert "layer 'sequence' moves the batch axis" in model.doc_string
            assert [n.op_type for n in model.graph.node].count("Scan") == (1 if name == "deploy.prototxt" else 2)
            assert_matches(net, model, {"data": torch.randn(batch, 1, 24, 96, generator=gen)},
                           f"{name} at batch {batch}")
            scores = run_onnx(model, {"data": torch.zeros(batch, 1, 24, 96)})["fc"]
            assert scores.shape == (24, batch, 11) and np.isfinite(scores).all()


DECODER = """
layer { name: "data" type: "Input" top: "scores" top: "cont"
  input_param { shape { dim: 12 dim: 4 dim: 5 } shape { dim: 12 dim: 4 } } }
layer { name: "decoder" type: "CTCGreedyDecoder" bottom: "scores" bottom: "cont" top: "decoded" top: "score"
  ctc_decoder_param { %s } }
"""


def test_ctc_greedy_decoder(tmp_path):
    """Sequences cut at a sample's next 0 indicator (at t = 5, at t = 1, none), repeats
    merged or kept, the blank last or given; few classes so that repeats and blanks abound."""
    gen = torch.Generator().manual_seed(9)
    cont = torch.ones(12, 4)
    cont[0] = 0
    cont[5, 1], cont[1, 2], cont[8, 2] = 0, 0, 0
    for param in ("", "ctc_merge_repeated: false", "blank_index: 0"):
        net = _net(DECODER % param)
        model = build_model(net)
        inputs = {"scores": torch.randn(12, 4, 5, generator=gen), "cont": cont}
        with torch.no_grad():
            ours = net(inputs)
        theirs = run_onnx(model, inputs)
        np.testing.assert_array_equal(theirs["decoded"], ours["decoded"].numpy(), err_msg=param)
        np.testing.assert_allclose(theirs["score"], ours["score"].numpy(), rtol=1e-6, err_msg=param)
        lengths = (ours["decoded"].numpy().reshape(4, 12) >= 0).sum(1)
        assert lengths[2] <= 1 and lengths[1] <= 5 and lengths.max() > 5, param
