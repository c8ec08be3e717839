"""Image files to 8-bit RGB, whatever their PIL mode, and file paths to printable text.

Every dataset and the image cache read pixels through `load_rgb`, so one table here decides how each
mode becomes RGB: wide integer and float grayscale is scaled (not clipped) to 0..255, and transparency is
composited over white, as image viewers and browsers show it.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from s3l.errors import S3LError

WHITE = (255, 255, 255)
# GIF decodes fine but is a palette graphics format (icons, "image not found" placeholders), not a photo.
NON_PHOTO_FORMATS = ("GIF",)


def display_path(path: str | os.PathLike) -> str:
    """`path` (or text holding one) as printable UTF-8: undecodable bytes of a file name show as `\\xff`.

    On Linux a file name that is not UTF-8 comes back from the file system as a str with surrogate
    escapes, which a UTF-8 log file or `json.dumps` cannot encode.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image file and return it decoded as 8-bit RGB (see `to_rgb`)."""
    with Image.open(path) as image:
        return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as 8-bit RGB: every mode in RGB_CONVERSIONS is converted, any other raises S3LError."""
    if image.mode in COLOUR_KEY_MODES and "transparency" in image.info:
        image = image.convert("RGBA")
    convert = RGB_CONVERSIONS.get(image.mode)
    if convert is None:
        raise S3LError(f"image mode '{image.mode}' has no RGB conversion: save the image as an 8-bit RGB PNG")
    return convert(image)


def image_problem(path: str | os.PathLike) -> str | None:
    """Why `path` is not a usable photo (unreadable, truncated, not a photo, no RGB conversion), or None."""
    try:
        with Image.open(path) as image:
            if image.format in NON_PHOTO_FORMATS:
                return f"{image.format} is a graphics format, not a photo"
            if image.mode not in RGB_CONVERSIONS:
                return f"image mode '{image.mode}' has no RGB conversion"
            # Decode the whole file: Image.verify() does not notice a truncated JPEG. JPEGs decode at 1/8
            # scale, which still reads and entropy-decodes every byte but skips most of the work.
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    # Decoders raise OSError, SyntaxError, EOFError, ValueError...: any of them means unusable.
    except Exception as error:
        # The message may quote the file name, which must stay printable in a UTF-8 log.
        return display_path(str(error) or type(error).__name__)
    return None


def _direct(image: Image.Image) -> Image.Image:
    # Pillow's own conversion is right for these (CMYK as Pillow's inverse of its RGB->CMYK, LAB via CIE).
    return image.convert("RGB")


def _over_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGB", rgba.size, WHITE)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _from_16bit(image: Image.Image) -> Image.Image:
    # value / 257 rounded half up, in integers: 65535 -> 255, 32768 -> 128 (Pillow's own conversion clips).
    return _gray((np.asarray(image).astype(np.uint32) + 128) // 257)


def _from_32bit(image: Image.Image) -> Image.Image:
    values = np.asarray(image).astype(np.int64)
    # Pillow may open a 16-bit PNG or TIFF as 32-bit "I": values that fit in 16 bits are read as such.
    if values.min() >= 0 and values.max() <= 65535:
        return _gray((values + 128) // 257)
    return _gray(_stretched(values))


def _from_float(image: Image.Image) -> Image.Image:
    # NaN and infinity carry no brightness; they become 0 rather than poisoning the min..max stretch.
    values = np.nan_to_num(np.asarray(image).astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if values.min() >= 0 and values.max() <= 1:
        return _gray(np.round(values * 255))
    return _gray(_stretched(values))


def _stretched(values: np.ndarray) -> np.ndarray:
    """`values` mapped linearly from their min..max onto 0..255 (a constant image becomes 0)."""
    low = values.min()
    return np.round((values - low) * 255 / ((values.max() - low) or 1))


def _gray(values: np.ndarray) -> Image.Image:
    return Image.fromarray(values.astype(np.uint8)).convert("RGB")


# Modes that may name one transparent colour in info["transparency"] (PNG tRNS, GIF).
COLOUR_KEY_MODES = ("P", "L", "RGB")
RGB_CONVERSIONS = {
    **dict.fromkeys(("RGB", "RGBX", "L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV"), _direct),
    **dict.fromkeys(("RGBA", "RGBa", "LA", "PA"), _over_white),
    **dict.fromkeys(("I;16", "I;16L", "I;16B", "I;16N"), _from_16bit),
    "I": _from_32bit,
    "F": _from_float,
}
