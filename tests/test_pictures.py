"""`astromorph._readers._pictures.read_picture` on the picture modes and frame counts its
other tests do not reach.

Each test here was written against a mutant of ``astromorph/_readers/_pictures.py`` that the
rest of the suite let pass (a mutation-testing round): it fails on that mutant and passes on
the code as it is. No model is loaded.
"""
import numpy as np
import pytest

from astromorph._flags import Flag
from astromorph._readers._pictures import read_picture

Image = pytest.importorskip("PIL.Image")


def picture(n=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, n, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode, fmt, name", [("RGBA", "PNG", "x.png"),
                                             ("CMYK", "JPEG", "x.jpg")])
def test_rgba_and_cmyk_pictures_are_read_as_rgb(tmp_path, mode, fmt, name):
    """An RGBA PNG and a CMYK JPEG are colour stamps: the picture converted to RGB."""
    Image.fromarray(picture()).convert(mode).save(tmp_path / name, format=fmt)
    with Image.open(tmp_path / name) as im:
        assert im.mode == mode
        expected = np.asarray(im.convert("RGB"))
    [stamp] = read_picture(tmp_path / name)
    assert stamp.usable and stamp.kind == "colour", stamp.reason
    np.testing.assert_array_equal(stamp.data, expected)


def test_sixteen_bit_grey_png_keeps_its_high_byte(tmp_path):
    """A 16-bit grey PNG is read as 8 bits by its high byte, in three equal channels."""
    values = np.array([[0, 255, 256], [4096, 40000, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "grey16.png")
    [stamp] = read_picture(tmp_path / "grey16.png")
    expected = np.array([[0, 0, 1], [16, 156, 255]], np.uint8)
    np.testing.assert_array_equal(stamp.data, np.repeat(expected[..., None], 3, axis=-1))


def test_integer_picture_beyond_sixteen_bits_is_clipped_not_wrapped(tmp_path):
    """32-bit integer pixels (a TIFF) beyond the 16-bit range are clipped to it before the
    high byte is taken: 70000 is white, -5 black, not wrapped round."""
    values = np.array([[70000, -5], [300, 65535]], np.int32)
    Image.fromarray(values, mode="I").save(tmp_path / "deep.tif")
    [stamp] = read_picture(tmp_path / "deep.tif")
    np.testing.assert_array_equal(stamp.data[..., 0], [[255, 0], [1, 255]])


def test_animated_webp_is_named_animated(tmp_path):
    """An animated WebP under a ``.png`` name is flagged as an animated WEBP of its frame
    count."""
    from PIL import features

    if not features.check("webp"):
        pytest.skip("Pillow without WebP")
    frames = [Image.fromarray(picture(seed=i)) for i in range(3)]
    frames[0].save(tmp_path / "anim.png", format="WEBP", save_all=True,
                   append_images=frames[1:])
    [stamp] = read_picture(tmp_path / "anim.png")
    assert stamp.flags == Flag.BAD_INPUT
    assert "animated WEBP of 3 frames" in stamp.reason[0], stamp.reason


def test_picture_too_large_for_pillow_is_a_flagged_stamp(tmp_path, monkeypatch):
    """A picture Pillow refuses as a decompression bomb (not an OSError) is a stamp flagged
    with the reason, not an exception that stops the run."""
    Image.fromarray(picture(64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    [stamp] = read_picture(tmp_path / "big.png")
    assert stamp.flags == Flag.BAD_INPUT and "cannot read image" in stamp.reason[0]
