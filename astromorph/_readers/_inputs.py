"""Input expansion (files, directories, globs), format sniffing and the `read_file` dispatcher."""
import glob
import os
from pathlib import Path

from .._flags import Flag
from .._io import check_input_file
from ..exceptions import InputNotFoundError, InvalidArgumentTypeError
from ._alerts import SCHEMALESS_ADVICE, confluent_schema_id, read_alerts
from ._compressed import COMPRESSIONS, LZW_MAGIC
from ._fits import read_fits
from ._pictures import read_picture
from ._stamp import Stamp

__all__ = ["SUPPORTED_EXTENSIONS", "expand_inputs", "sniff_format", "read_file"]

#: File-name endings picked up when a directory is expanded.
SUPPORTED_EXTENSIONS = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fits.bz2", ".fit.bz2",
                        ".fits.xz", ".fit.xz", ".fits.zip", ".fit.zip", ".fz", ".fits.fz",
                        ".jpg", ".jpeg", ".png", ".avro")


def _has_magic(text):
    return any(c in text for c in "*?[")


#: The whole-file compressions, each taken for a compressed FITS file (`_compressed`).
_COMPRESSED = tuple(name for _, name, _ in COMPRESSIONS)
#: First bytes of each accepted format (a gzip, bzip2 or xz stream or a zip archive is
#: taken for compressed FITS).
_MAGIC = ((b"SIMPLE  =", "fits"), *((magic, name) for magic, name, _ in COMPRESSIONS),
          (b"\xff\xd8\xff", "jpeg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"Obj\x01", "avro"))
#: File-name endings -> format, for files whose content says nothing (first match wins).
_ENDINGS = ((".avro", "avro"), (".png", "png"), (".jpg", "jpeg"), (".jpeg", "jpeg"),
            (".fits.gz", "gzip"), (".fit.gz", "gzip"), (".gz", "gzip"), (".fits.fz", "fits"),
            (".fits.bz2", "bzip2"), (".fit.bz2", "bzip2"), (".fits.xz", "xz"),
            (".fit.xz", "xz"), (".fits.zip", "zip"), (".fit.zip", "zip"),
            (".fz", "fits"), (".fits", "fits"), (".fit", "fits"), (".fts", "fits"))
#: Words for each format; FITS and compressed FITS are one family.
_NAMES = {"fits": "FITS", "jpeg": "JPEG", "png": "PNG", "avro": "Avro",
          **{name: f"{name}-compressed data" for name in _COMPRESSED}}
_FAMILY = {name: "fits" for name in _COMPRESSED}
#: Extensions that say nothing of a file's format (a Kafka message dumped as ``x.bin``): a
#: directory's files with one of these are read when their content is of an accepted format.
_GENERIC_EXTENSIONS = ("bin", "dat", "raw", "msg")
#: Bytes read to recognise a file.
_HEAD = 16


def _supported(path):
    name = path.name.lower()
    return any(name.endswith(ext) for ext in SUPPORTED_EXTENSIONS)


def _content_format(head):
    """The format the first bytes say, or None."""
    return next((fmt for magic, fmt in _MAGIC if head.startswith(magic)), None)


def describe_content(head):
    """The format the first bytes say, in words (``"Avro"``), or None."""
    fmt = _content_format(head)
    return None if fmt is None else _NAMES[fmt]


def _ending(path):
    """``(ending, format)`` the file name says, or ``(None, None)``."""
    name = Path(path).name.lower()
    return next(((ext, fmt) for ext, fmt in _ENDINGS if name.endswith(ext)), (None, None))


def _recognised(path):
    """A file a directory contributes: not hidden (as for a shell's ``*``: no ``.DS_Store``
    or ``._x.fits`` AppleDouble files), and a supported ending, or no extension (an alert
    saved as ``alert-0000011``; a numeric one or one of `_GENERIC_EXTENSIONS` counts as
    none) and content of an accepted format (its first bytes only are read). Other
    extensions are left out: ``x.fits.bak`` or ``x.fits~`` is a backup, not one more input
    (nor a file to write results into)."""
    if path.name.startswith("."):
        return False
    if _supported(path):
        return True
    extension = path.suffix[1:].lower()
    if extension and not extension.isdigit() and extension not in _GENERIC_EXTENSIONS:
        return False
    try:
        with open(path, "rb") as f:
            return _content_format(f.read(_HEAD)) is not None
    except OSError:
        return False


def expand_inputs(inputs):
    """Paths of the input files: files as given, directories expanded, globs matched.

    Parameters
    ----------
    inputs : str, os.PathLike or iterable of them
        Files, directories (their files, hidden ones excepted, of a supported
        extension, or of none (or .bin, .dat, .raw, .msg, a number) and whose
        first bytes are of an accepted format;
        sorted, not recursive) and
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
    astromorph.exceptions.InvalidArgumentTypeError
        For an input that is neither a string nor a path (an `InvalidArgumentError` and a
        `TypeError` both).
    """
    if isinstance(inputs, (bytes, bytearray)):  # (not iterated: its items are ints)
        raise InvalidArgumentTypeError(
            f"inputs must be a path, a glob pattern or a list of them (str), got {inputs!r}")
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    try:
        items = list(inputs)
    except TypeError:
        raise InvalidArgumentTypeError(
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
            raise InvalidArgumentTypeError(f"input {item!r} is not a path or a glob pattern")
        text = os.path.expanduser(os.fspath(item))
        path = Path(text)
        # (os.path's checks: False for a name too long or under a folder that cannot be
        # searched, which pathlib's raise as OSError; check_input_file says it then)
        if text and os.path.isdir(text):  # Path("") is the working directory
            found = sorted(p for p in path.iterdir() if p.is_file() and _recognised(p))
            if not found:
                raise InputNotFoundError(
                    f"directory {text!r} holds no supported files "
                    f"({', '.join(SUPPORTED_EXTENSIONS)}, or FITS, JPEG, PNG or Avro content "
                    "in a file without extension; hidden files are left out)")
            for p in found:
                add(p)
        elif os.path.isfile(text):
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
    """``"fits"``, ``"gzip"``, ``"bzip2"``, ``"xz"``, ``"zip"`` (compressed FITS),
    ``"jpeg"``, ``"png"``, ``"avro"`` or ``None``.

    Decided from the first bytes of the file (``head``, read when omitted);
    the extension is used only when the content is not recognised.
    """
    if head is None:
        with open(path, "rb") as f:
            head = f.read(_HEAD)
    return _content_format(head) or _ending(path)[1]


def _disagreement(path, head):
    """Words for a file whose name ends in one format and whose bytes start another, or
    None (compressed and plain FITS are one format here)."""
    content = _content_format(head)
    ending, named = _ending(path)
    if content is None or named is None \
            or _FAMILY.get(content, content) == _FAMILY.get(named, named):
        return None
    return (f"content is {_NAMES[content]} (first bytes {head[:8]!r}) but the extension "
            f"{ending!r} says {_NAMES[named]}: read as {_NAMES[content]}")


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
            head = f.read(_HEAD)
    except OSError as exc:
        return [Stamp(str(path), path).flag(Flag.BAD_INPUT, f"cannot open file: {exc}")]
    if not head:
        return [Stamp(str(path), path).flag(Flag.BAD_INPUT, "empty file")]
    fmt = sniff_format(path, head)
    if fmt == "zip" and path.suffix.lower() == ".npz":  # NumPy's arrays: said so below
        fmt = None
    if fmt == "fits" or fmt in _COMPRESSED:
        stamps = read_fits(path, want_scale=want_scale, triplet_hint=triplet_hint)
    elif fmt in ("jpeg", "png"):
        stamps = read_picture(path)
    elif fmt == "avro":
        stamps = read_alerts(path)
    else:
        reason = (f"unrecognised file format (first bytes {head[:8]!r}); expected FITS, JPEG, "
                  "PNG or Avro")
        if head.startswith(LZW_MAGIC):
            reason += ("; it is Unix-compressed (.Z), which predict_files does not read: "
                       "uncompress it (uncompress, gzip -d)")
        if head.startswith(b"\x93NUMPY") or (head.startswith(b"PK\x03\x04")
                                              and path.suffix.lower() == ".npz"):
            reason += ("; it is a NumPy array file: load it with numpy.load and score its "
                       "stamps with astromorph.annotate_stamps(astropy.table.Table("
                       "{'stamp': array}), model=...)")
        schema_id = confluent_schema_id(head)
        if schema_id is not None:  # five bytes are too few to claim it, enough to suggest it
            reason += (f"; if it is a Kafka message in the Confluent wire format (schema id "
                       f"{schema_id}), {SCHEMALESS_ADVICE}")
        return [Stamp(str(path), path).flag(Flag.BAD_INPUT, reason)]
    note = _disagreement(path, head)
    if note:
        for stamp in stamps:
            stamp.reason.insert(0, note)
            if stamp.usable:
                stamp.misnamed = note
    return stamps
