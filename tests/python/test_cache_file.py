"""A KVCache dump read without ekv: numpy and the safetensors package see the tensors,
dtypes, shapes and metadata ekv documents, every tensor's CRC-32 matches zlib's, and the
K and V of each sequence, read through its block table, are the tokens ekv_dump_sample
wrote (tests/cache/dump_sample.cpp). EKV_DUMP_SAMPLE names the sample's executable."""

import json
import os
import struct
import subprocess
import zlib

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

LAYERS, KV_HEADS, HEAD_DIM, BLOCK_LEN, BLOCKS, BATCH = 2, 2, 64, 16, 12, 3
LENGTHS = [40, 17, 5]


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    path = tmp_path_factory.mktemp("dump") / "cache.safetensors"
    subprocess.run([os.environ["EKV_DUMP_SAMPLE"], str(path)], check=True)
    return path


def test_metadata_names_the_format_and_config(dump):
    with safe_open(str(dump), framework="np") as f:
        meta = f.metadata()
        names = set(f.keys())
    assert meta["format"] == "ekv-kvcache"
    assert meta["format_version"] == "1"
    config = dict(item.split("=") for item in meta["config"].split())
    assert config["layer_num"] == "2" and config["kv_type"] == "float16" and config["block_len"] == "16"
    expected = {"lengths", "block_table", "free_list"}
    for layer in range(LAYERS):
        expected |= {f"layer.{layer}.{t}" for t in ("k", "v", "anchors", "importance")}
    assert names == expected


def test_dtypes_shapes_and_checksums(dump):
    tensors = load_file(str(dump))
    assert tensors["layer.0.k"].dtype == np.float16
    assert tensors["layer.0.k"].shape == (BLOCKS, KV_HEADS, BLOCK_LEN, HEAD_DIM)
    assert tensors["layer.1.anchors"].shape == (BLOCKS, KV_HEADS, 2 * HEAD_DIM)  # QUEST: min and max
    assert tensors["layer.1.importance"].dtype == np.float32
    assert tensors["lengths"].dtype == np.int32
    assert tensors["lengths"].tolist() == [LENGTHS, LENGTHS]
    # the header, read by hand: 8-byte length, JSON, then the data
    raw = dump.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    for name, t in header.items():
        if name == "__metadata__":
            continue
        begin, end = t["data_offsets"]
        assert f"{zlib.crc32(data[begin:end]):08x}" == header["__metadata__"]["crc32." + name]


def test_tokens_through_the_block_table(dump):
    tensors = load_file(str(dump))
    table = tensors["block_table"]
    for layer in range(LAYERS):
        k, v = tensors[f"layer.{layer}.k"], tensors[f"layer.{layer}.v"]
        for seq, length in enumerate(LENGTHS):
            t = np.arange(length)
            blocks = table[seq, t // BLOCK_LEN]
            assert (blocks >= 0).all()
            got_k = k[blocks, :, t % BLOCK_LEN, :]  # [tokens, heads, dim]
            h = np.arange(KV_HEADS)[None, :, None]
            d = np.arange(HEAD_DIM)[None, None, :]
            want = ((7 * layer + 5 * seq + 3 * t[:, None, None] + 2 * h + d) % 64) / 64.0
            np.testing.assert_array_equal(got_k.astype(np.float64), want)
            np.testing.assert_array_equal(v[blocks, :, t % BLOCK_LEN, :].astype(np.float64), want - 0.5)
    used = {int(b) for b in table.ravel() if b >= 0}
    assert used.isdisjoint(int(b) for b in tensors["free_list"])
    assert len(used) + len(tensors["free_list"]) == BLOCKS
