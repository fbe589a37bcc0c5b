"""Decoding user images into RGB PIL images, once, with clear errors.

Everything that enters the detector goes through `load_image`: files, bytes, PIL images and
numpy arrays. EXIF orientation is applied here and nowhere else, every mode becomes 8-bit RGB,
and images that are not images, are cut short, or would decompress to an absurd size are refused
with an `ImageError` that says what to do.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# 40 megapixels: a 8000x5000 photo fits; a decompression bomb (a tiny PNG that claims
# 100000x100000) does not. Callers can raise it per call.
DEFAULT_MAX_PIXELS = 40_000_000
# A strip 200000x2 cannot be resized to the model's size (its short side would round to 0 px).
MAX_ASPECT_RATIO = 50

ImageSource = str | Path | bytes | Image.Image | np.ndarray


class ImageError(ValueError):
    """An input could not be used as an image. The message says which input and why."""


def _describe(source: ImageSource) -> str:
    if isinstance(source, (str, Path)):
        return f"'{source}'"
    if isinstance(source, bytes):
        return f"the uploaded data ({len(source)} bytes)"
    if isinstance(source, np.ndarray):
        return f"the array of shape {source.shape} and dtype {source.dtype}"
    return "the image"


def _check_size(width: int, height: int, max_pixels: int, what: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"{what} has no pixels ({width}x{height}).")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageError(
            f"{what} is {width}x{height}, more than {MAX_ASPECT_RATIO} times longer than it is wide; "
            "crop it into parts the detector can see."
        )
    if width * height > max_pixels:
        raise ImageError(
            f"{what} is {width}x{height} = {width * height / 1e6:.0f} megapixels, over the limit of "
            f"{max_pixels / 1e6:.0f}; resize it first (or raise max_pixels if you trust the file)."
        )


def _open(source: str | Path | bytes, max_pixels: int) -> Image.Image:
    what = _describe(source)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{what} does not exist or is not a file.")
        stream: io.IOBase = open(path, "rb")
    else:
        stream = io.BytesIO(source)
    try:
        # PIL warns (and past 2x errors) on its own, looser, limit; ours is checked just below
        # from the header alone, before any pixel is decoded.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(stream)
            _check_size(image.width, image.height, max_pixels, what)
            image.load()
    except ImageError:
        stream.close()
        raise
    except Image.DecompressionBombError as error:
        stream.close()
        raise ImageError(f"{what} is too large to decode safely ({error}); resize it first.") from None
    except UnidentifiedImageError:
        stream.close()
        raise ImageError(
            f"{what} is not an image file PIL can read; use JPEG, PNG, WebP, BMP, GIF or TIFF."
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        stream.close()
        raise ImageError(f"{what} is damaged or truncated and could not be decoded ({error}).") from None
    stream.close()
    return image


def _array_to_image(array: np.ndarray) -> Image.Image:
    what = _describe(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"{what} is not an image: expected HxW, HxWx3 or HxWx4.")
    if array.dtype == np.uint8:
        pass
    elif array.dtype == np.uint16:
        array = (array // 257).astype(np.uint8)
    elif array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError(f"{what} contains NaN or infinite values.")
        # Floats are taken as [0, 1] (the convention of skimage and matplotlib).
        if array.min() < 0 or array.max() > 1:
            raise ImageError(f"{what} has float values outside [0, 1]; scale it or pass uint8.")
        array = np.round(array * 255).astype(np.uint8)
    else:
        raise ImageError(f"{what} has an unsupported dtype; pass uint8, uint16 or float in [0, 1].")
    return Image.fromarray(np.ascontiguousarray(array))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # PIL's convert("RGB") clips 16-bit values at 255, which turns most photos white.
        scale = 257 if image.mode.startswith("I;16") else max(int(np.asarray(image).max()) // 255, 1)
        image = Image.fromarray((np.asarray(image, dtype=np.int64) // scale).clip(0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        # Composite transparent pixels on white: their stored colour is often garbage.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


def load_image(source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``source`` into an upright 8-bit RGB PIL image.

    Args:
        source: a file path, the bytes of an image file, a PIL image, or a numpy array
            (``HxW``, ``HxWx3`` or ``HxWx4``; uint8, uint16, bool, or float in [0, 1]).
        max_pixels: refuse images with more pixels than this (decompression bombs).

    Raises:
        ImageError: the input is missing, not an image, damaged, too large, or of an
            unsupported layout; the message names the input and the fix.

    Example:
        >>> import numpy as np
        >>> load_image(np.zeros((4, 6), dtype=np.uint8)).size
        (6, 4)
    """
    if isinstance(source, (str, Path, bytes)):
        image = _open(source, max_pixels)
    elif isinstance(source, Image.Image):
        image = source
        _check_size(image.width, image.height, max_pixels, _describe(source))
    elif isinstance(source, np.ndarray):
        _check_size(*(source.shape[1::-1] if source.ndim >= 2 else (0, 0)), max_pixels, _describe(source))
        image = _array_to_image(source)
    else:
        raise ImageError(
            f"cannot read an image from a {type(source).__name__}; pass a path, bytes, a PIL image or a numpy array."
        )
    try:
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, TypeError, KeyError):
        pass  # a corrupt EXIF block must not make an otherwise readable image unusable
    return _to_rgb(image)
