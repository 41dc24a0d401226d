"""The SSD fork's (weiliu89/caffe) parameter messages: its prototxt parses, its field
numbers are on the wire, the forks' pooling ceil_mode becomes round_mode, and the fork's
data augmentation fields are refused rather than ignored."""
import pytest
from google.protobuf.internal.encoder import _VarintBytes

from runner.data.datum import DataError
from runner.data.transformer import DataTransformer
from runner.proto import ProtoError, caffe_pb2, parse_net_text, to_text

# Layers as the fork's SSD300 train/test/deploy prototxts write them.
FORK_TEXT = """
name: "VGG_VOC0712_SSD_300x300_train"
layer {
  name: "data" type: "AnnotatedData" top: "data" top: "label"
  include { phase: TRAIN }
  transform_param {
    mirror: true mean_value: 104 mean_value: 117 mean_value: 123
    resize_param { prob: 1 resize_mode: WARP height: 300 width: 300
                   interp_mode: LINEAR interp_mode: AREA interp_mode: NEAREST }
    emit_constraint { emit_type: CENTER }
    distort_param { brightness_prob: 0.5 brightness_delta: 32 contrast_prob: 0.5
                    contrast_lower: 0.5 contrast_upper: 1.5 hue_prob: 0.5 hue_delta: 18 }
    expand_param { prob: 0.5 max_expand_ratio: 4.0 }
  }
  data_param { source: "trainval_lmdb" batch_size: 32 backend: LMDB }
  annotated_data_param {
    batch_sampler { max_sample: 1 max_trials: 1 }
    batch_sampler {
      sampler { min_scale: 0.3 max_scale: 1.0 min_aspect_ratio: 0.5 max_aspect_ratio: 2.0 }
      sample_constraint { min_jaccard_overlap: 0.1 }
      max_sample: 1 max_trials: 50
    }
    label_map_file: "labelmap_voc.prototxt"
  }
}
layer {
  name: "conv4_3_norm" type: "Normalize" bottom: "data" top: "conv4_3_norm"
  norm_param { across_spatial: false scale_filler { type: "constant" value: 20 } channel_shared: false }
}
layer {
  name: "conv4_3_norm_mbox_loc_perm" type: "Permute" bottom: "conv4_3_norm" top: "perm"
  permute_param { order: 0 order: 2 order: 3 order: 1 }
}
layer {
  name: "conv4_3_norm_mbox_priorbox" type: "PriorBox" bottom: "conv4_3_norm" bottom: "data"
  top: "priorbox"
  prior_box_param { min_size: 30.0 max_size: 60.0 aspect_ratio: 2 flip: true clip: false
                    variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: 8 offset: 0.5 }
}
layer {
  name: "mbox_loss" type: "MultiBoxLoss" bottom: "perm" bottom: "perm" bottom: "priorbox"
  bottom: "label" top: "mbox_loss"
  propagate_down: true propagate_down: true propagate_down: false propagate_down: false
  loss_param { normalization: VALID }
  multibox_loss_param {
    loc_loss_type: SMOOTH_L1 conf_loss_type: SOFTMAX loc_weight: 1.0 num_classes: 21
    share_location: true match_type: PER_PREDICTION overlap_threshold: 0.5
    use_prior_for_matching: true background_label_id: 0 use_difficult_gt: true
    neg_pos_ratio: 3.0 neg_overlap: 0.5 code_type: CENTER_SIZE ignore_cross_boundary_bbox: false
    mining_type: MAX_NEGATIVE
  }
}
layer {
  name: "detection_out" type: "DetectionOutput" bottom: "perm" bottom: "perm"
  bottom: "priorbox" top: "detection_out"
  include { phase: TEST }
  detection_output_param {
    num_classes: 21 share_location: true background_label_id: 0
    nms_param { nms_threshold: 0.45 top_k: 400 }
    save_output_param { output_directory: "results" output_name_prefix: "comp4_det_test_"
                        output_format: "VOC" label_map_file: "labelmap_voc.prototxt"
                        name_size_file: "test_name_size.txt" num_test_image: 4952 }
    code_type: CENTER_SIZE keep_top_k: 200 confidence_threshold: 0.01
  }
}
layer {
  name: "detection_eval" type: "DetectionEvaluate" bottom: "detection_out" bottom: "label"
  top: "detection_eval"
  include { phase: TEST }
  detection_evaluate_param { num_classes: 21 background_label_id: 0 overlap_threshold: 0.5
                             evaluate_difficult_gt: false name_size_file: "test_name_size.txt" }
}
"""


def test_fork_prototxt_parses_and_round_trips_through_text_and_binary():
    net = parse_net_text(FORK_TEXT, "ssd_train.prototxt")
    layers = {lp.name: lp for lp in net.layer}
    assert layers["conv4_3_norm"].norm_param.scale_filler.value == 20
    assert list(layers["conv4_3_norm_mbox_loc_perm"].permute_param.order) == [0, 2, 3, 1]
    prior = layers["conv4_3_norm_mbox_priorbox"].prior_box_param
    assert list(prior.min_size) == [30] and list(prior.variance) == pytest.approx([0.1, 0.1, 0.2, 0.2])
    det = layers["detection_out"].detection_output_param
    assert det.code_type == caffe_pb2.PriorBoxParameter.CENTER_SIZE and det.nms_param.top_k == 400
    assert layers["mbox_loss"].multibox_loss_param.num_classes == 21
    assert layers["data"].annotated_data_param.batch_sampler[1].sampler.min_scale == pytest.approx(0.3)
    again = parse_net_text(to_text(net), "again")
    assert again == net
    assert caffe_pb2.NetParameter.FromString(net.SerializeToString()) == net


@pytest.mark.parametrize("field,number", [
    ("annotated_data_param", 200), ("multibox_loss_param", 201), ("permute_param", 202),
    ("prior_box_param", 203), ("detection_output_param", 204), ("detection_evaluate_param", 205),
    ("norm_param", 206), ("video_data_param", 207)])
def test_layer_fields_use_the_fork_numbers_on_the_wire(field, number):
    lp = caffe_pb2.LayerParameter()
    getattr(lp, field).SetInParent()
    # a length-delimited field: tag = number << 3 | 2, then the (empty) length
    assert lp.SerializeToString() == _VarintBytes(number << 3 | 2) + b"\x00"


def test_nested_fork_field_numbers():
    p = caffe_pb2.DetectionOutputParameter(keep_top_k=1, confidence_threshold=0.5, visualize=True)
    p.nms_param.eta = 0.5
    wire = p.SerializeToString()
    assert _VarintBytes(7 << 3 | 0) + b"\x01" in wire          # keep_top_k = 7
    assert _VarintBytes(9 << 3 | 5) in wire                    # confidence_threshold = 9 (float)
    assert _VarintBytes(10 << 3 | 0) + b"\x01" in wire         # visualize = 10
    assert caffe_pb2.NormalizeParameter().eps == pytest.approx(1e-10)
    assert caffe_pb2.PriorBoxParameter().offset == 0.5 and not caffe_pb2.PriorBoxParameter().clip


def _pool_net(pooling: str) -> str:
    return f"""layer {{ name: "in" type: "Input" top: "x"
         input_param {{ shape {{ dim: 1 dim: 1 dim: 6 dim: 6 }} }} }}
layer {{ name: "pool" type: "Pooling" bottom: "x" top: "y"
         pooling_param {{ pool: MAX kernel_size: 3 stride: 2 {pooling} }} }}"""


@pytest.mark.parametrize("ceil_mode,round_mode", [("false", "FLOOR"), ("true", None)])
def test_ceil_mode_becomes_round_mode(ceil_mode, round_mode):
    P = caffe_pb2.PoolingParameter
    param = parse_net_text(_pool_net(f"ceil_mode: {ceil_mode}")).layer[1].pooling_param
    assert not param.HasField("ceil_mode")
    assert param.HasField("round_mode") == (round_mode is not None)
    assert param.round_mode == (P.FLOOR if round_mode == "FLOOR" else P.CEIL)


def test_ceil_mode_disagreeing_with_round_mode_is_an_error():
    with pytest.raises(ProtoError, match="layer 'pool' sets ceil_mode: false and round_mode: CEIL"):
        parse_net_text(_pool_net("ceil_mode: false round_mode: CEIL"), "pool.prototxt")


def test_fork_augmentation_fields_are_refused_by_the_data_transformer():
    param = caffe_pb2.TransformationParameter(mirror=True)
    param.resize_param.height = 300
    param.expand_param.prob = 0.5
    with pytest.raises(DataError, match="layer 'data': transform_param.resize_param, expand_param"):
        DataTransformer(param, "TRAIN", layer="data")
