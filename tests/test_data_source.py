"""The Data and ImageData sources: key order with wrap-around, rank shares, the same batches
for any number of prefetch workers, batches that stay valid while held, and errors that name
the database key or file (also when raised in a worker process)."""
import cv2
import lmdb
import numpy as np
import pytest
import torch
from google.protobuf import text_format

import runner.data  # noqa: F401  (registers the sources)
from runner.data.datum import DataError, encoded_datum, image_to_datum
from runner.data.lmdb_store import write_lmdb
from runner.proto import caffe_pb2
from runner.sources import source_factory

N = 10


def layer(text):
    return text_format.Parse(text, caffe_pb2.LayerParameter())


def data_layer(source, batch_size=4, transform="", extra=""):
    return layer(f'name: "data" type: "Data" top: "data" top: "label" '
                 f'data_param {{ source: "{source}" batch_size: {batch_size} backend: LMDB '
                 f'{extra} }} transform_param {{ {transform} }}')


@pytest.fixture
def constant_db(tmp_path):
    """Record i: a 1 x 4 x 5 image filled with i, label i."""
    records = [(f"{i:08d}_{i}.png",
                image_to_datum(np.full((4, 5), i, np.uint8), i).SerializeToString())
               for i in range(N)]
    write_lmdb(tmp_path / "const", records)
    return tmp_path / "const"


@pytest.fixture
def noise_db(tmp_path):
    rng = np.random.default_rng(0)
    records = [(f"{i:08d}", image_to_datum(rng.integers(0, 256, (12, 13, 3), dtype=np.uint8),
                                           i).SerializeToString()) for i in range(N)]
    write_lmdb(tmp_path / "noise", records)
    return tmp_path / "noise"


def take(source, n):
    return [next(source) for _ in range(n)]


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_reads_in_key_order_and_wraps_around(constant_db, phase):
    source = source_factory("Data")(data_layer(constant_db), phase, workers=0)
    assert source.top_shapes == {"data": (4, 1, 4, 5), "label": (4,)}
    assert source.num_records == N
    batches = take(source, 4)
    labels = torch.cat([b["label"] for b in batches])
    assert labels.tolist() == [i % N for i in range(16)]
    for batch in batches:
        assert batch["data"].dtype == torch.float32
        assert torch.equal(batch["data"], batch["label"].view(4, 1, 1, 1).expand(4, 1, 4, 5))


def test_ranks_take_disjoint_shares_that_cover_the_records(constant_db):
    shares = []
    for rank in range(3):
        source = source_factory("Data")(data_layer(constant_db, batch_size=2), "TRAIN",
                                        rank=rank, world_size=3, workers=0)
        labels = torch.cat([b["label"] for b in take(source, 2)]).int().tolist()
        assert labels == [(rank + 3 * k) % N for k in range(4)]
        shares.append({label for k, label in enumerate(labels) if rank + 3 * k < N})
    assert set.union(*shares) == set(range(N)) and sum(map(len, shares)) == N


def test_batches_do_not_depend_on_worker_count_but_on_seed(noise_db):
    lp = data_layer(noise_db, batch_size=3, transform="crop_size: 8 mirror: true scale: 0.5",
                    extra="prefetch: 2")
    streams = {}
    for workers in (0, 1, 2):
        with source_factory("Data")(lp, "TRAIN", seed=11, workers=workers) as source:
            streams[workers] = take(source, 5)
    for workers in (1, 2):
        for a, b in zip(streams[0], streams[workers]):
            assert torch.equal(a["data"], b["data"]) and torch.equal(a["label"], b["label"])
    other = take(source_factory("Data")(lp, "TRAIN", seed=12, workers=0), 5)
    assert not all(torch.equal(a["data"], b["data"]) for a, b in zip(streams[0], other))


def test_held_batches_stay_valid_and_closing_resumes(noise_db):
    lp = data_layer(noise_db, batch_size=2, transform="crop_size: 6 mirror: true",
                    extra="prefetch: 1")
    expected = take(source_factory("Data")(lp, "TRAIN", seed=3, workers=0), 9)
    source = source_factory("Data")(lp, "TRAIN", seed=3, workers=1)
    held = take(source, 4)                      # more than the ring's buffers
    source.close()                              # stops the worker; the stream goes on
    held += take(source, 5)
    source.close()
    for got, want in zip(held, expected):
        assert torch.equal(got["data"], want["data"])
        assert torch.equal(got["label"], want["label"])


def test_one_top_yields_only_data(constant_db):
    lp = layer(f'name: "d" type: "Data" top: "x" '
               f'data_param {{ source: "{constant_db}" batch_size: 2 backend: LMDB }}')
    source = source_factory("Data")(lp, "TEST", workers=0)
    assert source.top_shapes == {"x": (2, 1, 4, 5)}
    assert list(next(source)) == ["x"]


def test_relative_source_resolves_against_cwd(constant_db, monkeypatch):
    monkeypatch.chdir(constant_db.parent)
    source = source_factory("Data")(data_layer("const"), "TEST", workers=0)
    assert next(source)["label"].tolist() == [0, 1, 2, 3]


def test_rand_skip_starts_at_a_seeded_offset(constant_db):
    starts = set()
    for seed in range(6):
        lp = data_layer(constant_db, batch_size=N, extra="rand_skip: 5")
        labels = next(source_factory("Data")(lp, "TEST", seed=seed, workers=0))["label"]
        start = int(labels[0])
        assert labels.tolist() == [(start + k) % N for k in range(N)] and start < 5
        starts.add(start)
    assert len(starts) > 1
    with pytest.raises(ValueError, match="same seed on every rank"):
        source_factory("Data")(lp, "TRAIN", world_size=2)


@pytest.mark.parametrize("workers", [0, 1])
def test_bad_record_is_reported_with_its_key(tmp_path, workers):
    records = [(f"{i:08d}", image_to_datum(np.zeros((4, 4), np.uint8), i).SerializeToString())
               for i in range(N)]
    write_lmdb(tmp_path / "db", records)
    env = lmdb.open(str(tmp_path / "db"))
    with env.begin(write=True) as txn:
        txn.put(b"00000006", b"\x0a\xff")
    env.close()
    source = source_factory("Data")(data_layer(tmp_path / "db"), "TRAIN", workers=workers)
    next(source)
    with pytest.raises(DataError, match=r"layer 'data': LMDB '.*db' key '00000006': record "
                                        r"is not a Datum"):
        next(source)
    source.close()


def test_bad_configuration_is_refused_with_the_reason(constant_db, tmp_path):
    make = source_factory("Data")
    leveldb = layer(f'name: "data" type: "Data" top: "data" '
                    f'data_param {{ source: "{constant_db}" batch_size: 2 }}')
    with pytest.raises(DataError, match=r"'.*const' is an LMDB database, not a LevelDB: set "
                                        r"`backend: LMDB` in data_param \(LEVELDB is Caffe's default\)"):
        make(leveldb, "TRAIN")   # backend left at Caffe's default on an LMDB
    with pytest.raises(DataError, match=r"LMDB database '.*missing' does not exist"):
        make(data_layer(tmp_path / "missing"), "TRAIN")
    with pytest.raises(DataError, match=r"key '00000000_0.png': image is 4 x 5, smaller than "
                                        r"crop_size 6"):
        make(data_layer(constant_db, transform="crop_size: 6"), "TRAIN")
    blob = caffe_pb2.BlobProto(num=1, channels=3, height=4, width=5, data=[0.0] * 60)
    (tmp_path / "m.binaryproto").write_bytes(blob.SerializeToString())
    with pytest.raises(DataError, match=r"key '00000000_0.png': image is 1 x 4 x 5 but mean "
                                        r"file '.*m.binaryproto' is 3 x 4 x 5"):
        make(data_layer(constant_db, transform=f'mean_file: "{tmp_path}/m.binaryproto"'),
             "TRAIN")


def test_encoded_records_decode_natively_or_as_forced(tmp_path):
    rng = np.random.default_rng(2)
    gray = rng.integers(0, 256, (6, 7), dtype=np.uint8)
    color = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    png = [cv2.imencode(".png", image)[1].tobytes() for image in (gray, color)]
    write_lmdb(tmp_path / "enc", [(f"{i:08d}", encoded_datum(data, i).SerializeToString())
                                  for i, data in enumerate(png)])
    make = source_factory("Data")
    native = make(data_layer(tmp_path / "enc", batch_size=2), "TEST", workers=0)
    assert native.top_shapes["data"] == (2, 1, 6, 7)
    with pytest.raises(DataError, match="key '00000001': image is 3 x 6 x 7, which does not "
                                        "give the batch's 1 x 6 x 7"):
        next(native)
    forced = next(make(data_layer(tmp_path / "enc", 2, "force_color: true"), "TEST",
                       workers=0))["data"]
    as_bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    assert torch.equal(forced[0], torch.from_numpy(as_bgr.transpose(2, 0, 1)).float())
    assert torch.equal(forced[1], torch.from_numpy(color.transpose(2, 0, 1)).float())
    forced = next(make(data_layer(tmp_path / "enc", 2, "force_gray: true"), "TEST",
                       workers=0))["data"]
    as_gray = cv2.imdecode(np.frombuffer(png[1], np.uint8), cv2.IMREAD_GRAYSCALE)
    assert torch.equal(forced[0, 0], torch.from_numpy(gray).float())
    assert torch.equal(forced[1, 0], torch.from_numpy(as_gray).float())


def write_images(folder, count):
    folder.mkdir()
    rng = np.random.default_rng(5)
    lines = []
    for i in range(count):
        cv2.imwrite(str(folder / f"im {i}.png"), rng.integers(0, 256, (7, 9, 3), np.uint8))
        lines.append(f"im {i}.png {i}")
    return lines


def image_layer(tmp_path, extra="", transform=""):
    return layer(f'name: "images" type: "ImageData" top: "data" top: "label" '
                 f'image_data_param {{ source: "{tmp_path}/list.txt" '
                 f'root_folder: "{tmp_path}/img/" batch_size: 3 {extra} }} '
                 f'transform_param {{ {transform} }}')


def test_image_data_reads_the_list_resizes_and_shuffles_each_pass(tmp_path):
    lines = write_images(tmp_path / "img", 4)
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    lp = image_layer(tmp_path, extra="new_height: 5 new_width: 6")
    source = source_factory("ImageData")(lp, "TEST", workers=0)
    assert source.top_shapes == {"data": (3, 3, 5, 6), "label": (3,)}
    assert source.num_records == 4
    first, second = take(source, 2)
    assert torch.cat([first["label"], second["label"]]).tolist() == [0, 1, 2, 3, 0, 1]
    image = cv2.resize(cv2.imread(str(tmp_path / "img" / "im 1.png")), (6, 5))
    assert torch.equal(first["data"][1], torch.from_numpy(image.transpose(2, 0, 1)).float())

    shuffled = image_layer(tmp_path, extra="shuffle: true", transform="crop_size: 4")
    with source_factory("ImageData")(shuffled, "TRAIN", seed=1, workers=1) as source:
        labels = torch.cat([b["label"] for b in take(source, 8)]).int().tolist()
    passes = [labels[i:i + 4] for i in range(0, 24, 4)]
    assert all(sorted(p) == [0, 1, 2, 3] for p in passes)
    assert len({tuple(p) for p in passes}) > 1          # a fresh order every pass


def test_image_data_names_an_unreadable_image(tmp_path):
    lines = write_images(tmp_path / "img", 2)
    (tmp_path / "list.txt").write_text("\n".join(lines + ["gone.png 2"]) + "\n")
    source = source_factory("ImageData")(image_layer(tmp_path), "TEST", workers=1)
    with pytest.raises(DataError, match=r"image '.*img/gone.png' \(listed in .*list.txt\): "
                                        "OpenCV cannot read it"):
        next(source)
    source.close()


def write_mean(path, mean):
    blob = caffe_pb2.BlobProto(num=1, channels=mean.shape[0], height=mean.shape[1],
                               width=mean.shape[2], data=mean.ravel())
    path.write_bytes(blob.SerializeToString())
    return path


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("device_finish", [False, True], ids=["one-stage", "two-stage"])
def test_batches_equal_caffes_transform_of_each_record(noise_db, tmp_path, workers,
                                                       device_finish):
    """Transformed in the worker, or cropped and mirrored there and finished (mean_file at
    the crop offset, scale) in this process: Caffe's loop on each record, with the batch's
    Rand draws."""
    from test_data_transformer import caffe_reference
    from runner.data.source import BATCH_STREAM, generator
    mean = np.random.default_rng(2).uniform(0, 255, (3, 12, 13)).astype(np.float32)
    mean_file = write_mean(tmp_path / "mean.binaryproto", mean)
    transform = f'crop_size: 7 mirror: true scale: 0.0078125 mean_file: "{mean_file}"'
    lp = data_layer(noise_db, batch_size=3, transform=transform)
    images = [np.frombuffer(caffe_pb2.Datum.FromString(v).data, np.uint8).reshape(3, 12, 13)
              for _, v in lmdb.open(str(noise_db), readonly=True).begin().cursor()]
    with source_factory("Data")(lp, "TRAIN", seed=9, workers=workers) as source:
        source.device_finish = device_finish
        for index in range(5):                       # wraps around the 10 records
            batch, rng = next(source), generator(9, BATCH_STREAM, 0, index)
            for k in range(3):
                want, _ = caffe_reference(images[(index * 3 + k) % N],
                                          lp.transform_param, True, mean, rng)
                np.testing.assert_array_equal(batch["data"][k].numpy(), want)
            assert batch["label"].tolist() == [(index * 3 + k) % N for k in range(3)]


def float_datum(values, label):
    c, h, w = values.shape
    return caffe_pb2.Datum(channels=c, height=h, width=w, float_data=values.ravel(),
                           label=label).SerializeToString()


def test_float_datums_stay_float_and_a_mixed_database_is_refused(tmp_path):
    rng = np.random.default_rng(3)
    values = rng.normal(0, 1, (4, 2, 5, 6)).astype(np.float32)
    write_lmdb(tmp_path / "float", [(f"{i:08d}", float_datum(v, i)) for i, v in enumerate(values)])
    lp = data_layer(tmp_path / "float", batch_size=4, transform="scale: 0.5 mean_value: 1")
    for device_finish in (False, True):
        source = source_factory("Data")(lp, "TEST", workers=0)
        source.device_finish = device_finish
        np.testing.assert_array_equal(next(source)["data"].numpy(),
                                      (values - np.float32(1)) * np.float32(0.5))
    records = [(f"{i:08d}", image_to_datum(np.zeros((5, 6, 2), np.uint8), i).SerializeToString())
               for i in range(3)] + [("00000003", float_datum(values[3], 3))]
    write_lmdb(tmp_path / "mixed", records)
    mixed = source_factory("Data")(data_layer(tmp_path / "mixed", batch_size=4), "TEST",
                                   workers=0)
    mixed.device_finish = True
    with pytest.raises(DataError, match="key '00000003': pixels are float32, the batch's are "
                                        "uint8"):
        next(mixed)
