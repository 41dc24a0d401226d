"""Datum records through LMDB: byte-exact round trip, Caffe's wire layout, atomic writes,
and clear errors for missing databases and records that are not Datums."""
import lmdb
import numpy as np
import pytest

from runner.data.datum import DataError, datum_to_array, image_to_datum, parse_datum
from runner.data.lmdb_store import COMMIT_EVERY, LmdbReader, write_lmdb
from runner.proto import caffe_pb2


def test_raw_datum_has_caffes_wire_bytes():
    # CVMatToDatum sets channels, height, width, data, encoded=false; then the label is set.
    image = np.arange(6, dtype=np.uint8).reshape(1, 2, 3)       # H=1, W=2, C=3 (BGR)
    wire = image_to_datum(image, 7).SerializeToString()
    chw = bytes([0, 3, 1, 4, 2, 5])                             # planes B, G, R
    assert wire == b"\x08\x03\x10\x01\x18\x02\x22\x06" + chw + b"\x28\x07\x38\x00"


def test_datums_round_trip_byte_exact_in_key_order(tmp_path):
    rng = np.random.default_rng(0)
    records = []
    for i in range(COMMIT_EVERY + 5):                # spans two transactions
        datum = image_to_datum(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8), i % 10)
        records.append((f"{i:08d}_img{i}.png", datum.SerializeToString()))
    shuffled = [records[i] for i in rng.permutation(len(records))]
    assert write_lmdb(tmp_path / "db", shuffled) == len(records)
    with LmdbReader(tmp_path / "db") as reader:
        assert list(reader) == records               # LMDB keeps keys sorted
        assert reader.record(3) == records[3]
        assert reader.record(1) == records[1]        # stepping back restarts the cursor
        datum = parse_datum(records[2][1], "x")
        np.testing.assert_array_equal(
            datum_to_array(datum, "x"),
            np.frombuffer(datum.data, np.uint8).reshape(3, 4, 5))


def test_failed_write_leaves_nothing_and_existing_db_is_refused(tmp_path):
    def records():
        yield "00000000_a", b"x"
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        write_lmdb(tmp_path / "db", records())
    assert list(tmp_path.iterdir()) == []
    write_lmdb(tmp_path / "db", [("k", b"v1")])
    with pytest.raises(DataError, match="already exists"):
        write_lmdb(tmp_path / "db", [("k", b"v2")])
    write_lmdb(tmp_path / "db", [("k", b"v2")], overwrite=True)
    with LmdbReader(tmp_path / "db") as reader:
        assert list(reader) == [("k", b"v2")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db"]


def test_missing_database_and_non_datum_record_are_named(tmp_path):
    with pytest.raises(DataError, match=r"'.*nowhere' does not exist"):
        LmdbReader(tmp_path / "nowhere")
    env = lmdb.open(str(tmp_path / "db"))
    with env.begin(write=True) as txn:
        txn.put(b"00000000_bad", b"\xff\xff\xff")
    env.close()
    with LmdbReader(tmp_path / "db") as reader:
        key, value = reader.record(0)
    with pytest.raises(DataError, match="key '00000000_bad'.*not a Datum"):
        parse_datum(value, f"key '{key}'")
    # parses as a protobuf but holds no image
    label_only = caffe_pb2.Datum(label=3).SerializeToString()
    with pytest.raises(DataError, match="not an image Datum"):
        parse_datum(label_only, "key 'k'")
