"""Every PIL mode to 8-bit RGB (`to_rgb`, `load_rgb`), `image_problem` and printable paths."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from s3l.data.datasets import load_rgb as load_rgb_from_datasets
from s3l.data.images import display_path, image_problem, load_rgb, to_rgb
from s3l.errors import S3LError


def _row(mode: str, values, dtype=None) -> Image.Image:
    """A one-row image of `mode` holding `values` (one per pixel, or one tuple per pixel)."""
    array = np.asarray([values], dtype=dtype)
    return Image.frombytes(mode, (len(values), 1), array.tobytes())


def _pixels(image: Image.Image) -> list:
    assert image.mode == "RGB"
    return np.asarray(image)[0].tolist()


def _over_white(colour: tuple[int, ...], alpha: int) -> list[int]:
    """`colour` at opacity alpha/255 over white, rounded to nearest: what a browser shows."""
    return [int(np.floor(c * alpha / 255 + 255 * (1 - alpha / 255) + 0.5)) for c in colour]


def test_load_rgb_is_importable_from_datasets():
    assert load_rgb_from_datasets is load_rgb


@pytest.mark.parametrize("mode, dtype", [("I;16", "<u2"), ("I;16L", "<u2"), ("I;16B", ">u2")])
def test_16bit_gray_is_scaled_by_257_not_clipped(mode, dtype):
    values = [0, 128, 129, 257, 32768, 65535]
    rgb = _pixels(to_rgb(_row(mode, values, dtype)))
    expected = [int(np.floor(v / 257 + 0.5)) for v in values]
    assert expected == [0, 0, 1, 1, 128, 255]
    assert rgb == [[v, v, v] for v in expected]


def test_16bit_png_file_is_scaled(tmp_path):
    path = tmp_path / "depth.png"
    Image.fromarray(np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)).save(path)
    assert _pixels(load_rgb(path)) == [[v] * 3 for v in (0, 4, 128, 255)]  # 1000 / 257 = 3.9


def test_32bit_values_within_16_bits_are_read_as_16bit():
    rgb = _pixels(to_rgb(_row("I", [0, 32768, 65535], "<i4")))
    assert rgb == [[0] * 3, [128] * 3, [255] * 3]


def test_32bit_values_beyond_16_bits_are_stretched_from_min_to_max():
    rgb = _pixels(to_rgb(_row("I", [-1000, 0, 100000], "<i4")))
    # (0 - -1000) * 255 / 101000 = 2.52
    assert rgb == [[0] * 3, [3] * 3, [255] * 3]


def test_float_within_unit_range_is_multiplied_by_255():
    rgb = _pixels(to_rgb(_row("F", [0.0, 0.25, 1.0], "<f4")))
    assert rgb == [[0] * 3, [64] * 3, [255] * 3]  # 0.25 * 255 = 63.75


def test_float_beyond_unit_range_is_stretched_and_nan_counts_as_zero():
    rgb = _pixels(to_rgb(_row("F", [-1.0, 0.0, 3.0, np.nan], "<f4")))
    assert rgb == [[0] * 3, [64] * 3, [255] * 3, [64] * 3]  # (0 - -1) * 255 / 4 = 63.75


def test_constant_wide_image_does_not_divide_by_zero():
    assert _pixels(to_rgb(_row("I", [-5, -5], "<i4"))) == [[0] * 3, [0] * 3]


@pytest.mark.parametrize("alpha", [0, 1, 127, 128, 254, 255])
def test_rgba_is_composited_over_white(alpha):
    rgb = _pixels(to_rgb(_row("RGBA", [(255, 0, 0, alpha), (10, 200, 30, alpha)], np.uint8)))
    assert rgb == [_over_white((255, 0, 0), alpha), _over_white((10, 200, 30), alpha)]


def test_half_transparent_red_looks_pink():
    assert _pixels(to_rgb(_row("RGBA", [(255, 0, 0, 128)], np.uint8))) == [[255, 127, 127]]


def test_premultiplied_rgba_is_composited_over_white():
    # (128, 0, 0) premultiplied by alpha 128 is full red at half opacity.
    assert _pixels(to_rgb(_row("RGBa", [(128, 0, 0, 128)], np.uint8))) == [_over_white((255, 0, 0), 128)]


def test_gray_with_alpha_is_composited_over_white():
    rgb = _pixels(to_rgb(_row("LA", [(0, 128), (100, 255), (0, 0)], np.uint8)))
    assert rgb == [[127] * 3, [100] * 3, [255] * 3]


def test_palette_with_alpha_is_composited_over_white():
    image = _row("PA", [(0, 128), (1, 0), (2, 255)], np.uint8)
    image.putpalette([255, 0, 0, 0, 0, 255, 0, 255, 0])
    assert _pixels(to_rgb(image)) == [_over_white((255, 0, 0), 128), [255, 255, 255], [0, 255, 0]]


def _palette_png(path, **save_options) -> None:
    image = _row("P", [0, 1, 2], np.uint8)
    image.putpalette([255, 0, 0, 0, 0, 255, 0, 255, 0])
    image.save(path, **save_options)


def test_palette_without_transparency_uses_its_colours(tmp_path):
    _palette_png(tmp_path / "p.png")
    assert _pixels(load_rgb(tmp_path / "p.png")) == [[255, 0, 0], [0, 0, 255], [0, 255, 0]]


def test_palette_transparent_index_becomes_white(tmp_path):
    _palette_png(tmp_path / "p.png", transparency=1)
    assert _pixels(load_rgb(tmp_path / "p.png")) == [[255, 0, 0], [255, 255, 255], [0, 255, 0]]


def test_palette_alpha_per_entry_is_composited_over_white(tmp_path):
    _palette_png(tmp_path / "p.png", transparency=bytes([128, 0, 255]))
    assert _pixels(load_rgb(tmp_path / "p.png")) == [_over_white((255, 0, 0), 128), [255] * 3, [0, 255, 0]]


@pytest.mark.parametrize("mode, key, other", [("L", 7, 9), ("RGB", (1, 2, 3), (9, 8, 7))])
def test_transparent_colour_key_becomes_white(tmp_path, mode, key, other):
    image = Image.new(mode, (2, 1), key)
    image.putpixel((1, 0), other)
    image.save(tmp_path / "keyed.png", transparency=key)
    expected_other = [other] * 3 if mode == "L" else list(other)
    assert _pixels(load_rgb(tmp_path / "keyed.png")) == [[255, 255, 255], expected_other]


def test_cmyk_jpeg_saved_by_pillow_round_trips_to_its_colours(tmp_path):
    colours = [(0, 255, 255, 0), (0, 0, 0, 128), (255, 0, 0, 0), (64, 32, 16, 8)]
    image = Image.new("CMYK", (8 * len(colours), 8))
    for index, colour in enumerate(colours):
        image.paste(colour, (8 * index, 0, 8 * index + 8, 8))
    image.save(tmp_path / "cmyk.jpg", quality=100)
    with Image.open(tmp_path / "cmyk.jpg") as saved:
        assert saved.mode == "CMYK" and "adobe" in saved.info  # stored inverted, Adobe style
    rgb = np.asarray(load_rgb(tmp_path / "cmyk.jpg"))[4, 4::8].astype(int)
    # Pillow's CMYK -> RGB: each channel is (255 - ink) * (255 - K) / 255.
    expected = [[(255 - ink) * (255 - k) / 255 for ink in (c, m, y)] for c, m, y, k in colours]
    assert np.abs(rgb - np.array(expected)).max() <= 2  # JPEG rounding
    assert rgb[0].tolist() == [255, 0, 0]


def test_ycbcr_uses_the_jpeg_full_range_formula():
    y, cb, cr = 100, 150, 90
    red, blue = y + 1.402 * (cr - 128), y + 1.772 * (cb - 128)
    expected = [red, y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128), blue]
    rgb = _pixels(to_rgb(_row("YCbCr", [(y, cb, cr)], np.uint8)))[0]
    assert np.abs(np.array(rgb) - np.array(expected)).max() <= 1  # 46.7, 119.6, 139.0


def test_hsv_converts_to_its_colours():
    rgb = _pixels(to_rgb(_row("HSV", [(0, 255, 255), (85, 255, 255), (0, 0, 128)], np.uint8)))
    assert rgb == [[255, 0, 0], [0, 255, 0], [128, 128, 128]]


def test_lab_gray_axis_converts_to_srgb():
    # L* = 128 / 255 * 100 = 50.2, a* = b* = 0: Y = ((L* + 16) / 116) ** 3, then the sRGB curve.
    luminance = ((128 / 255 * 100 + 16) / 116) ** 3
    gray = 255 * (1.055 * luminance ** (1 / 2.4) - 0.055)
    rgb = _pixels(to_rgb(_row("LAB", [(128, 0, 0), (0, 0, 0)], np.uint8)))
    assert abs(rgb[0][0] - gray) <= 2 and rgb[0][0] == rgb[0][1] == rgb[0][2]
    assert max(rgb[1]) <= 1  # black, up to the 8-bit LAB quantization


def test_one_bit_and_gray_become_gray_rgb():
    one_bit = Image.frombytes("1", (3, 1), bytes([0b10100000]))  # pixels 1, 0, 1
    assert _pixels(to_rgb(one_bit)) == [[255] * 3, [0] * 3, [255] * 3]
    assert _pixels(to_rgb(_row("L", [0, 77, 255], np.uint8))) == [[0] * 3, [77] * 3, [255] * 3]


def test_rgb_keeps_its_pixels(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "photo.png")), pixels)


def test_mode_without_conversion_raises_one_line():
    with pytest.raises(S3LError, match="image mode 'La' has no RGB conversion"):
        to_rgb(Image.new("La", (2, 2)))


def test_image_problem_reports_undecodable_and_graphics_files(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    Image.new("P", (4, 4)).save(tmp_path / "icon.gif")
    Image.new("RGB", (4, 4)).save(tmp_path / "good.png")
    assert "cannot identify image file" in image_problem(tmp_path / "bad.jpg")
    assert image_problem(tmp_path / "icon.gif") == "GIF is a graphics format, not a photo"
    assert image_problem(tmp_path / "good.png") is None


def test_display_path_shows_undecodable_bytes_as_escapes(tmp_path):
    name = os.fsdecode(b"bad\xff.jpg")  # what os.listdir returns for this file name
    shown = display_path(tmp_path / name)
    assert shown == f"{tmp_path}/bad\\xff.jpg"
    assert json.dumps(shown, ensure_ascii=False).encode("utf-8")
    assert display_path("café/ant photos.jpg") == "café/ant photos.jpg"
