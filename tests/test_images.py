"""Image decoding: every input kind and mode becomes upright RGB; bad files get a clear error."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from core.images import ImageError, load_image


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def photo() -> Image.Image:
    array = np.zeros((30, 40, 3), dtype=np.uint8)
    array[..., 0] = np.arange(40, dtype=np.uint8)[None] * 6
    array[..., 1] = 200
    return Image.fromarray(array)


def test_sources_agree(tmp_path, photo):
    path = tmp_path / "photo.png"
    photo.save(path)
    expected = np.asarray(photo)
    for source in [path, str(path), path.read_bytes(), photo, expected]:
        image = load_image(source)
        assert image.mode == "RGB" and image.size == (40, 30)
        assert np.array_equal(np.asarray(image), expected)


@pytest.mark.parametrize(
    "mode",
    ["L", "LA", "RGBA", "P", "CMYK", "I;16", "1"],
)
def test_modes_become_rgb(photo, mode):
    converted = photo.convert(mode) if mode != "I;16" else Image.fromarray(
        (np.asarray(photo.convert("L")).astype(np.uint16) * 257)
    )
    image = load_image(png_bytes(converted) if mode not in ("CMYK",) else converted)
    assert image.mode == "RGB" and image.size == photo.size


def test_sixteen_bit_is_scaled_not_clipped():
    # A mid-grey 16-bit image must stay mid-grey (PIL's own convert would clip it to white).
    grey = Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16))
    assert np.asarray(load_image(png_bytes(grey)))[0, 0].tolist() == [127, 127, 127]
    assert np.asarray(load_image(np.full((4, 4, 3), 65535, dtype=np.uint16)))[0, 0].tolist() == [255, 255, 255]


def test_transparent_pixels_become_white():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)  # fully transparent black
    assert np.asarray(load_image(rgba))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied(photo):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", exif=exif.tobytes())
    assert load_image(buffer.getvalue()).size == (30, 40)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((10, 10, 2), dtype=np.uint8),  # two channels
        np.zeros((10,), dtype=np.uint8),  # not 2-D
        np.full((4, 4), np.nan, dtype=np.float32),  # NaN
        np.full((4, 4), 3.0),  # float out of [0, 1]
        np.zeros((4, 4), dtype=np.complex64),  # unsupported dtype
    ],
)
def test_bad_arrays(array):
    with pytest.raises(ImageError, match="array"):
        load_image(array)


def test_float_arrays_are_unit_range():
    assert np.asarray(load_image(np.full((2, 2, 3), 0.5)))[0, 0].tolist() == [128, 128, 128]


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "nope.jpg")


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is text, not a JPEG")
    with pytest.raises(ImageError, match="not an image file"):
        load_image(path)


def test_truncated_file(photo):
    buffer = io.BytesIO()
    photo.resize((400, 300)).save(buffer, format="JPEG")
    with pytest.raises(ImageError, match="damaged or truncated"):
        load_image(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def test_decompression_bomb_refused_from_header():
    # A valid PNG header claiming 100000 x 100000 pixels: refused before any decoding.
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    with pytest.raises(ImageError, match="too large to decode safely|over the limit"):
        load_image(bomb)


def test_pixel_limit_is_configurable(photo):
    with pytest.raises(ImageError, match="over the limit"):
        load_image(photo, max_pixels=100)


def test_unsupported_type():
    with pytest.raises(ImageError, match="cannot read an image from a int"):
        load_image(42)
