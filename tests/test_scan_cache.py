"""The decoded-scan cache (clare_dist/scan_cache.py): a hit is the array the decoder made, read
without decoding; a changed file, another preprocessing or another size misses; a damaged entry
is decoded again and replaced; a failure is never kept and reads as without the cache."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image
from scan_files import gradient, png_bytes

import clare_dist.scan_cache as scan_cache
from clare_dist.batch import decode_batch
from clare_dist.scan_cache import ScanCache, preprocess_cached
from clare_dist.scans import ScanConfig, ScanError, preprocess_scan

CONFIG = ScanConfig(size=32)


@pytest.fixture
def scan(tmp_path):
    path = tmp_path / "scan.png"
    path.write_bytes(png_bytes(Image.fromarray(gradient(96, 80))))
    return path


def no_decoding(*args, **kwargs):
    raise AssertionError("decoded although the cache holds the scan")


def test_a_miss_decodes_and_keeps_the_scan_and_a_hit_reads_it_without_decoding(scan, tmp_path, monkeypatch):
    cache = ScanCache(tmp_path / "cache")
    first, hit = preprocess_cached(str(scan), CONFIG, cache)
    assert not hit and np.array_equal(first, preprocess_scan(str(scan), CONFIG))
    assert cache.entries(CONFIG) == 1
    monkeypatch.setattr(scan_cache, "preprocess_scan", no_decoding)
    again, hit = preprocess_cached(str(scan), CONFIG, cache)
    assert hit and np.array_equal(again, first)
    moved = scan.rename(tmp_path / "renamed.png")  # the key is the content, not the name
    assert preprocess_cached(str(moved), CONFIG, cache)[1]


def test_a_changed_file_another_preprocessing_or_size_misses(scan, tmp_path):
    cache = ScanCache(tmp_path / "cache")
    preprocess_cached(str(scan), CONFIG, cache)
    scan.write_bytes(png_bytes(Image.fromarray(np.flipud(gradient(96, 80)))))  # changed in place, same name
    changed, hit = preprocess_cached(str(scan), CONFIG, cache)
    assert not hit and np.array_equal(changed, preprocess_scan(str(scan), CONFIG))
    lanczos = ScanConfig(size=32, preprocessing="lanczos/1")
    assert not preprocess_cached(str(scan), lanczos, cache)[1]
    assert not preprocess_cached(str(scan), ScanConfig(size=16), cache)[1]
    assert {p.name for p in (tmp_path / "cache").iterdir()} == {"area-1-32", "lanczos-1-32", "area-1-16"}
    assert cache.entries(CONFIG) == 2 and cache.entries(lanczos) == 1


@pytest.mark.parametrize("damage", ["truncated", "wrong shape", "not numpy"])
def test_a_damaged_entry_is_decoded_again_and_replaced(scan, tmp_path, damage):
    cache = ScanCache(tmp_path / "cache")
    expected, _ = preprocess_cached(str(scan), CONFIG, cache)
    (entry,) = cache.folder(CONFIG).glob("*/*.npy")
    if damage == "truncated":
        entry.write_bytes(entry.read_bytes()[:100])
    elif damage == "wrong shape":
        np.save(entry, np.zeros((16, 16), np.uint8))
    else:
        entry.write_bytes(b"not an array at all")
    got, hit = preprocess_cached(str(scan), CONFIG, cache)
    assert not hit and np.array_equal(got, expected)
    assert np.array_equal(np.load(entry), expected)


def test_a_failure_is_never_kept_and_reads_as_without_the_cache(tmp_path):
    cache = ScanCache(tmp_path / "cache")
    broken = tmp_path / "broken.png"
    whole = png_bytes(Image.fromarray(gradient(96, 80)))
    broken.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ScanError) as plain:
        preprocess_scan(str(broken), CONFIG)
    with pytest.raises(ScanError) as cached:
        preprocess_cached(str(broken), CONFIG, cache)
    assert (cached.value.kind, cached.value.message) == (plain.value.kind, plain.value.message)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ScanError, match="named pipe"):
        preprocess_cached(str(fifo), CONFIG, cache)
    assert cache.entries(CONFIG) == 0


def test_a_cache_that_cannot_be_written_costs_the_cache_not_the_scan(scan, tmp_path, caplog):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    got, hit = preprocess_cached(str(scan), CONFIG, ScanCache(blocker))
    assert not hit and np.array_equal(got, preprocess_scan(str(scan), CONFIG))
    assert "screening goes on without it" in caplog.text


def test_a_batch_through_the_cache_equals_one_without(scan, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    batch = {"scan_id": np.array(["a", "b"], dtype=object), "path": np.array([str(scan), str(empty)], dtype=object)}
    plain = decode_batch(batch, CONFIG)
    cache = ScanCache(tmp_path / "cache")
    for _ in range(2):  # a miss, then a hit
        cached = decode_batch(batch, CONFIG, cache)
        assert np.array_equal(cached["scan"], plain["scan"])
        assert list(cached["status"]) == list(plain["status"]) == ["ok", "error"]
        assert list(cached["error_kind"]) == list(plain["error_kind"])
    assert cache.entries(CONFIG) == 1
