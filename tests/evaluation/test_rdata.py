"""R serialization reader: a real R-written index, and round trips through our own writer."""

import base64
import gzip
import struct
import zlib

import numpy as np
import pytest

from evaluation.rdata import LazyLoadDB, RDataError, RVector, read_rds, unserialize
from tests.evaluation import rwriter

# janeaustenr 1.0.0's data/Rdata.rdx as R wrote it (re-gzipped with mtime 0): the lazy-load
# index of the six novels. Sizes and offsets below are those of the Debian package's Rdata.rdb.
_JANEAUSTENR_RDX = (
    "H4sIAAAAAAACA1WQ0UrDMBSG/6apsEJnxT3BLhXvBYeXPoGCFxNJ2zMXbdKSbMIewjfxAQTxKXwcQU3TkLGLk/z/d8LJ"
    "n9znAFJwliDNnER2d3tzcQmwU98Y9yNXhSsGf+TxPPpBZ8u36PPPD7D3ZfTFegb2fRZ9eXUNPv+KfvbwA36ygEvgfAKO"
    "yXCDFoqsE6W/fISclBJBF0pou5LUNr0wLwEe685s1kI/kRFVRbuA856M3QorOx3ItDeyod7Q87aRNQVaWtKWhkVWspWb"
    "nWO/4QMwBkz+QiaMPeQ+tK+DfhpmTl6FkaJq3WNCGEMrMqTrPak75aJYS80w9B/7URx+kQEAAA=="
)
_JANEAUSTENR_OFFSETS = {
    "emma": (0, 352043),
    "mansfieldpark": (352043, 351373),
    "northangerabbey": (703416, 175196),
    "persuasion": (878612, 185130),
    "prideprejudice": (1063742, 271037),
    "sensesensibility": (1334779, 266556),
}


def test_reads_the_real_janeaustenr_index(tmp_path):
    path = tmp_path / "Rdata.rdx"
    path.write_bytes(base64.b64decode(_JANEAUSTENR_RDX))
    index = read_rds(path).to_dict()
    assert set(index) == {"variables", "references", "compressed"}
    variables = index["variables"].to_dict()
    offsets = {name: tuple(int(x) for x in v.values) for name, v in variables.items()}
    assert offsets == _JANEAUSTENR_OFFSETS
    assert index["compressed"].kind == "logical" and list(index["compressed"].values) == [1]
    assert index["references"].kind == "list" and len(index["references"]) == 0
    # LazyLoadDB needs only the index to list names.
    assert LazyLoadDB(path).names == tuple(_JANEAUSTENR_OFFSETS)


@pytest.mark.parametrize("version", [2, 3])
def test_round_trip_of_vectors_and_attributes(version):
    rng = np.random.default_rng(7)
    ints = rng.integers(-1000, 1000, size=17).tolist() + [-(2**31)]  # NA_integer_ last
    doubles = rng.normal(size=9).tolist()
    obj = rwriter.List(
        {
            "text": rwriter.Chars(["Emma Woodhouse,", None, "", "naïve café"], names=list("abcd")),
            "latin": rwriter.Chars(["Ã©tÃ©", "fiancé"], latin1=True),
            "ints": rwriter.Ints(ints),
            "flags": rwriter.Ints([1, 0, -(2**31)], logical=True),
            "doubles": rwriter.Doubles(doubles),
            "nested": rwriter.List([rwriter.Chars(["x"]), None]),
            "seq": rwriter.IntSeq(length=6, start=3),
        }
    )
    value = unserialize(rwriter.serialize(obj, version=version)).to_dict()
    text = value["text"]
    assert text.values == ["Emma Woodhouse,", None, "", "naïve café"]
    assert text.names == ["a", "b", "c", "d"]
    assert value["latin"].values == ["Ã©tÃ©", "fiancé"]
    assert value["ints"].kind == "integer"
    np.testing.assert_array_equal(value["ints"].values, ints)
    assert value["flags"].kind == "logical"
    np.testing.assert_array_equal(value["flags"].values, [1, 0, -(2**31)])
    np.testing.assert_array_equal(value["doubles"].values, doubles)
    nested = value["nested"]
    assert nested.kind == "list" and nested.names is None
    assert nested.values[0].values == ["x"] and nested.values[1] is None
    np.testing.assert_array_equal(value["seq"].values, [3, 4, 5, 6, 7, 8])


def test_symbol_back_references_and_pairlists():
    # The second `names` symbol and the repeated tag are written as back-references.
    obj = rwriter.Pairs(
        [
            ("alpha", rwriter.Chars(["a"], names=["n1"])),
            ("beta", rwriter.Ints([2], names=["n2"])),
            ("alpha", rwriter.Doubles([1.5])),
            (None, rwriter.Chars(["untagged"])),
        ]
    )
    value = unserialize(rwriter.serialize(obj))
    assert [tag for tag, _ in value.items] == ["alpha", "beta", "alpha", None]
    assert value.items[0][1].names == ["n1"] and value.items[1][1].names == ["n2"]
    with pytest.raises(RDataError):
        value.to_dict()  # an untagged cell


@pytest.mark.parametrize("compression", [1, 2, 3])
def test_lazy_load_db_round_trip(tmp_path, compression):
    novels = {
        "first": rwriter.Chars(["CHAPTER 1", "", "It is a truth universally acknowledged."]),
        "second": rwriter.Chars(["Line one", "Line two"] * 50),
    }
    index = rwriter.write_lazy_load_db(tmp_path, novels, compression=compression)
    db = LazyLoadDB(index)
    assert db.names == ("first", "second")
    first = db.load("first")
    assert isinstance(first, RVector) and first.kind == "character"
    assert first.values == ["CHAPTER 1", "", "It is a truth universally acknowledged."]
    assert db.load("second").values == ["Line one", "Line two"] * 50
    with pytest.raises(KeyError, match="first"):
        db.load("third")


def test_rejects_malformed_streams(tmp_path):
    with pytest.raises(RDataError, match="XDR"):
        unserialize(b"A\n" + bytes(20))
    good = rwriter.serialize(rwriter.Chars(["abcdef"]))
    with pytest.raises(RDataError, match="truncated"):
        unserialize(good[:-3])
    # A closure (type 3) is not data.
    header = rwriter.serialize(None)[:-4]  # everything before the NULL's flags
    with pytest.raises(NotImplementedError, match="type 3"):
        unserialize(header + struct.pack(">i", 3))
    # An .rdb entry whose header disagrees with its payload.
    index = rwriter.write_lazy_load_db(tmp_path, {"x": rwriter.Chars(["y"])})
    rdb = index.with_suffix(".rdb")
    payload = zlib.decompress(rdb.read_bytes()[4:])
    rdb.write_bytes(struct.pack(">I", len(payload) + 1) + zlib.compress(payload))
    with pytest.raises(RDataError, match="header says"):
        LazyLoadDB(index).load("x")
    # An .rds that is a character vector, not an index.
    (tmp_path / "plain.rdx").write_bytes(gzip.compress(rwriter.serialize(rwriter.Chars(["a"]))))
    with pytest.raises(RDataError, match="lazy-load index"):
        LazyLoadDB(tmp_path / "plain.rdx")
