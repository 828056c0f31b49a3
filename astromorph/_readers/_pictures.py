"""JPEG and PNG cutouts, read with Pillow (extra ``images``).

A picture of several frames (an animated PNG, an animated GIF under a ``.png`` or ``.jpg``
name) holds several images, and which one is the stamp is unknown, as for several FITS files
joined in one: it is flagged `Flag.BAD_INPUT`, the reason naming its frame count. A
multi-picture JPEG (MPO, as cameras and phones write) is not: its first picture is the
primary image by its standard (CIPA DC-007), the others previews or a stereo pair, and it is
what every JPEG reader shows, so it is the stamp.
"""
import warnings

import numpy as np

from .._flags import Flag
from ..exceptions import MissingDependencyError
from ._stamp import Stamp
from .._warnings import catch_warnings

__all__ = ["read_picture"]


def _pillow():
    try:
        from PIL import Image
    except ImportError as exc:
        raise MissingDependencyError(
            "reading JPEG/PNG stamps needs Pillow; install it with "
            "`pip install 'astromorph[images]'`") from exc
    return Image


def _animated(im):
    """Words for a Pillow image of several frames (an APNG, an animated GIF), or None."""
    frames = getattr(im, "n_frames", 1)
    if frames <= 1 or im.format == "MPO":  # an MPO's first picture is its primary image
        return None
    kind = "animated" if im.format in ("PNG", "GIF", "WEBP") else "multi-frame"
    return (f"{kind} {im.format or 'picture'} of {frames} frames: which frame is the stamp "
            "is unknown; save the one meant as a still PNG or JPEG")


def read_picture(path):
    """The stamp of the JPEG/PNG (or other picture Pillow reads) at ``path``, in a list:
    8-bit colour, a grey picture repeated into three channels; one flagged `Flag.BAD_INPUT`
    with the reason where it cannot be read, its mode is not a picture's, or it has several
    frames (`_animated`)."""
    image_mod = _pillow()
    source = str(path)
    try:
        with catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning etc. -> errors below
            with image_mod.open(path) as im:
                animated = _animated(im)
                if animated:
                    return [Stamp(source, path).flag(Flag.BAD_INPUT, animated)]
                im.load()
                mode = im.mode
                if mode in ("RGB", "L"):
                    arr = np.asarray(im)
                elif mode.startswith("I"):
                    arr = np.asarray(im).astype(np.int64)
                    arr = (np.clip(arr, 0, 65535) >> 8).astype(np.uint8)
                elif mode in ("RGBA", "P", "PA", "LA", "CMYK", "YCbCr", "1", "LAB", "HSV"):
                    conv = im.convert("L" if mode in ("LA", "1") else "RGB")
                    arr = np.asarray(conv)
                else:
                    return [Stamp(source, path).flag(
                        Flag.BAD_INPUT, f"unsupported image mode {mode!r}")]
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ...
        return [Stamp(source, path).flag(Flag.BAD_INPUT, f"cannot read image: {exc}")]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return [Stamp(source, path, "colour", np.ascontiguousarray(arr, dtype=np.uint8))]
