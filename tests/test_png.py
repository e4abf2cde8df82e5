"""PNG decoding through libpng gives exactly Pillow's grayscale image, and refuses what Pillow would
silently fill in; the layouts Pillow interprets in its own way stay with Pillow."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from PIL import Image

from clare_dist.scans import ScanConfig, ScanError, preprocess_scan, read_scan
from clare_dist.scans.pillow import read_pillow
from clare_dist.scans.png import png_header, read_png

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CONFIG = ScanConfig()


def _saved(image: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", **options)
    return out.getvalue()


def _random(shape: tuple[int, ...], dtype: type = np.uint8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max + 1, size=shape, dtype=dtype)


def _archive_pngs() -> list[Path]:
    """The sample's PNGs: one of each chunk layout and colour type, and the first few of the rest."""
    seen, chosen = set(), []
    for path in sorted(SHARED.rglob("*.png")):
        header = png_header(path.read_bytes())
        layout = (header.bit_depth, header.colour_type, header.chunks)
        if layout not in seen or len(chosen) < 24:
            seen.add(layout)
            chosen.append(path)
    return chosen


def test_every_layout_of_the_archive_decodes_by_libpng_to_pillows_pixels() -> None:
    paths = _archive_pngs()
    layouts = {(png_header(p.read_bytes()).colour_type) for p in paths}
    assert len(paths) >= 24 and {0, 6} <= layouts, "the shared sample should hold 8-bit gray and RGBA PNGs"
    for path in paths:
        data = path.read_bytes()
        ours = read_png(data, CONFIG)
        assert ours is not None, f"{path.name} should be decoded by libpng"
        reference = read_pillow(data, "png", CONFIG)
        assert ours.dtype == np.uint8 and np.array_equal(ours, reference), path.name


@pytest.mark.parametrize("mode, pixels", [
    ("L", _random((37, 53))),
    ("RGB", _random((37, 53, 3))),
    ("RGBA", _random((37, 53, 4))),
    ("LA", _random((37, 53, 2))),
    (None, _random((37, 53), np.uint16)),  # 16-bit gray
])
def test_each_layout_libpng_takes_equals_pillow(mode: str | None, pixels: np.ndarray) -> None:
    data = _saved(Image.fromarray(pixels, mode))
    ours = read_png(data, CONFIG)
    assert ours is not None and ours.shape == (37, 53)
    assert np.array_equal(ours, read_pillow(data, "png", CONFIG))


def test_every_rgb_value_turns_gray_as_pillow_converts_it() -> None:
    levels = np.arange(0, 256, 4, dtype=np.uint8)  # 64³ colours, the luma's rounding every way
    rgb = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(512, 512, 3)
    data = _saved(Image.fromarray(rgb, "RGB"))
    assert np.array_equal(read_png(data, CONFIG), np.asarray(Image.fromarray(rgb, "RGB").convert("L")))


def _with_chunk(data: bytes, tag: bytes, body: bytes) -> bytes:
    at = data.index(b"IDAT") - 4
    chunk = struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))
    return data[:at] + chunk + data[at:]


def _exif_orientation_6() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    return exif.tobytes()


@pytest.mark.parametrize("name, data", [
    ("palette", _saved(Image.fromarray(_random((20, 30))).convert("P"))),
    ("1-bit", _saved(Image.fromarray(_random((20, 30)) > 127))),
    ("transparency", _saved(Image.fromarray(_random((20, 30))), transparency=7)),
    ("exif orientation", _saved(Image.fromarray(_random((20, 30))), exif=_exif_orientation_6())),
    ("orientation text", _with_chunk(_saved(Image.fromarray(_random((20, 30)))), b"tEXt",
                                     b"Raw profile type exif\0\nexif\n       0\n")),
    ("16-bit colour", imagecodecs.png_encode(_random((20, 30, 3), np.uint16))),
])
def test_layouts_pillow_interprets_are_left_to_pillow(name: str, data: bytes) -> None:
    assert not png_header(data).decoded_by_libpng, name
    assert read_png(data, CONFIG) is None  # libpng found its image data whole; Pillow converts it
    assert np.array_equal(read_scan(data), read_pillow(data, "png", CONFIG))


def test_exif_orientation_is_applied_as_before() -> None:
    image = _random((20, 30))
    scan = read_scan(_saved(Image.fromarray(image), exif=_exif_orientation_6()))
    assert scan.shape == (30, 20) and np.array_equal(scan, np.rot90(image, -1))


def test_passive_chunks_keep_the_fast_path_and_the_pixels() -> None:
    data = _saved(Image.fromarray(_random((20, 30))))
    for tag, body in [(b"gAMA", struct.pack(">I", 45455)), (b"tEXt", b"Comment\0exported"), (b"pHYs", bytes(9))]:
        data = _with_chunk(data, tag, body)
    assert png_header(data).decoded_by_libpng
    assert np.array_equal(read_png(data, CONFIG), _random((20, 30)))


def test_image_data_that_stops_rows_early_is_refused_not_filled_black() -> None:
    rows = b"".join(b"\0" + bytes(range(40)) for _ in range(10))  # 10 rows of a declared 20
    ihdr = struct.pack(">IIBBBBB", 40, 20, 8, 0, 0, 0, 0)

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    assert read_pillow(data, "png", CONFIG).shape == (20, 40)  # what Pillow alone would have screened
    with pytest.raises(ScanError) as caught:
        preprocess_scan(data)
    assert caught.value.kind == "truncated" and "cut short" in caught.value.message
