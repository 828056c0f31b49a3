"""Input expansion (files, directories, globs), format sniffing and the `read_file` dispatcher."""
import glob
import os
from pathlib import Path

from .._flags import Flag
from .._io import check_input_file
from ..exceptions import InputNotFoundError, InvalidArgumentError
from ._alerts import read_alerts
from ._fits import read_fits
from ._pictures import read_picture
from ._stamp import Stamp

__all__ = ["SUPPORTED_EXTENSIONS", "expand_inputs", "sniff_format", "read_file"]

#: File-name endings picked up when a directory is expanded.
SUPPORTED_EXTENSIONS = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fz", ".fits.fz",
                        ".jpg", ".jpeg", ".png", ".avro")


def _has_magic(text):
    return any(c in text for c in "*?[")


def _supported(path):
    name = path.name.lower()
    return any(name.endswith(ext) for ext in SUPPORTED_EXTENSIONS)


def expand_inputs(inputs):
    """Paths of the input files: files as given, directories expanded, globs matched.

    Parameters
    ----------
    inputs : str, os.PathLike or iterable of them
        Files, directories (their supported files, sorted, not recursive) and
        glob patterns (``*``, ``?``, ``[...]``, ``**`` for recursion; matches
        sorted).

    Returns
    -------
    list of pathlib.Path
        In the given order, duplicates removed.

    Raises
    ------
    astromorph.exceptions.InputNotFoundError
        For a path that does not exist, a directory without supported files
        or a pattern that matches nothing (the message names it).
    astromorph.exceptions.InputError
        For a path that is neither a directory nor a regular file (e.g. a FIFO).
    astromorph.exceptions.InvalidArgumentError
        For an input that is neither a string nor a path.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    try:
        items = list(inputs)
    except TypeError:
        raise InvalidArgumentError(
            f"inputs must be a path, a glob pattern or a list of them, not "
            f"{type(inputs).__name__}") from None
    if not items:
        raise InputNotFoundError("no inputs given")
    paths, seen = [], set()

    def add(p):
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            paths.append(Path(p))

    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise InvalidArgumentError(f"input {item!r} is not a path or a glob pattern")
        text = os.path.expanduser(os.fspath(item))
        path = Path(text)
        if text and path.is_dir():  # Path("") is the working directory
            found = sorted(p for p in path.iterdir() if p.is_file() and _supported(p))
            if not found:
                raise InputNotFoundError(
                    f"directory {text!r} holds no supported files "
                    f"({', '.join(SUPPORTED_EXTENSIONS)})")
            for p in found:
                add(p)
        elif path.is_file():
            add(path)
        elif _has_magic(text):
            found = sorted(p for p in glob.glob(text, recursive=True) if os.path.isfile(p))
            if not found:
                raise InputNotFoundError(f"glob pattern {text!r} matches no file")
            for p in found:
                add(p)
        else:  # a missing path (an empty one too) or not a regular file: raises
            add(check_input_file(text))
    return paths


def sniff_format(path, head=None):
    """``"fits"``, ``"gzip"``, ``"jpeg"``, ``"png"``, ``"avro"`` or ``None``.

    Decided from the first bytes of the file (``head``, read when omitted);
    the extension is used only when the content is not recognised.
    """
    if head is None:
        with open(path, "rb") as f:
            head = f.read(16)
    if head.startswith(b"SIMPLE  ="):
        return "fits"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"Obj\x01"):
        return "avro"
    name = Path(path).name.lower()
    for ext, fmt in ((".avro", "avro"), (".png", "png"), (".jpg", "jpeg"), (".jpeg", "jpeg"),
                     (".gz", "gzip"), (".fz", "fits"), (".fits", "fits"), (".fit", "fits"),
                     (".fts", "fits")):
        if name.endswith(ext):
            return fmt
    return None


def read_file(path, *, want_scale=True, triplet_hint=False):
    """Read every stamp of one input file.

    Parameters
    ----------
    path : pathlib.Path
    want_scale : bool, optional
        Work out the pixel scale from the WCS (skip it when the model does
        not use it: it costs time).
    triplet_hint : bool, optional
        The model takes triplets: HDUs named ``SCI`` etc. are triplet members
        even if not all three are present.

    Returns
    -------
    list of Stamp
        At least one; unusable inputs give a flagged `Stamp` with a reason.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        return [Stamp(str(path), path).flag(Flag.BAD_INPUT, f"cannot open file: {exc}")]
    if not head:
        return [Stamp(str(path), path).flag(Flag.BAD_INPUT, "empty file")]
    fmt = sniff_format(path, head)
    if fmt in ("fits", "gzip"):
        return read_fits(path, want_scale=want_scale, triplet_hint=triplet_hint)
    if fmt in ("jpeg", "png"):
        return read_picture(path)
    if fmt == "avro":
        return read_alerts(path)
    return [Stamp(str(path), path).flag(
        Flag.BAD_INPUT, f"unrecognised file format (first bytes {head[:8]!r}); expected FITS, "
        "JPEG, PNG or Avro")]
