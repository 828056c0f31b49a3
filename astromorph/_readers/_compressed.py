"""Whole-file compressions of FITS files that astropy reads (gzip, bzip2, xz, zip): how
each is recognised (its first bytes), its stream reader, and decompression into memory,
the one table of them for the stamp readers and for `astromorph._images`."""
import bz2
import gzip
import importlib.util
import io
import lzma
import zipfile
import zlib

__all__ = ["COMPRESSIONS", "COMPRESSED_MAGIC", "LZW_MAGIC", "STREAM_OPENERS", "UNCOMPRESS",
           "ArchiveError", "CorruptStream", "TrailingBytes",
           "check_stream", "compression_of", "decompress", "first_bytes", "open_stream",
           "zip_member"]

#: ``(first bytes, name, stream opener)`` of each whole-file compression astropy reads
#: (a zip archive, read by `zip_member`, has no stream opener of its own; Unix compress,
#: ``.Z``, has no reader in the standard library and is not one of them).
COMPRESSIONS = ((b"\x1f\x8b", "gzip", gzip.open), (b"BZh", "bzip2", bz2.open),
                (b"\xfd7zXZ", "xz", lzma.open), (b"PK\x03\x04", "zip", None),
                (b"PK\x05\x06", "zip", None))  # (an empty zip archive: its end record)
#: First bytes of each of `COMPRESSIONS`.
COMPRESSED_MAGIC = tuple(magic for magic, _, _ in COMPRESSIONS)
#: ``(first bytes, opener)`` of the compressions whose decompressed bytes a stream gives
#: (gzip, bzip2, xz), e.g. to read the pixels of a large file as they are needed.
STREAM_OPENERS = tuple((magic, opener) for magic, _, opener in COMPRESSIONS if opener)
#: First bytes of a Unix-compressed (``.Z``, LZW) file: astropy reads one with the optional
#: package uncompresspy, `open_stream` too (for `astromorph._images`' truncation walk); the
#: stamp readers read none.
LZW_MAGIC = b"\x1f\x9d"
#: The command that decompresses each, for advice.
UNCOMPRESS = {"gzip": "gunzip", "bzip2": "bunzip2", "xz": "unxz", "zip": "unzip"}
#: What the decompressors raise for corrupt or truncated data.
_ERRORS = (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError, zipfile.BadZipFile,
           NotImplementedError, RuntimeError)


class ArchiveError(ValueError):
    """Compressed data that give no FITS file: corrupt or truncated, or a zip archive that
    does not hold exactly one file; the message says which."""


class CorruptStream(ArchiveError):
    """A compressed stream its decompressor found corrupt where the words of a large file's
    stream reader (`_fits`) can be given: a gzip file that fails its CRC or length check
    (``detail``: Python's gzip reader's words, ``"CRC check failed 0x... != 0x..."``), or
    one with `TrailingBytes`. ``compression``: its name (``"gzip"``)."""

    def __init__(self, compression, detail):
        self.compression, self.detail = compression, detail
        super().__init__(f"corrupt {compression} stream: {detail}")

    def reason(self, name=None):
        """The reason, naming the FITS file ``name`` where there is one, as `_fits`'s stream
        reader words it of a large file."""
        where = f" in FITS file {name}" if name else ""
        return f"corrupt {self.compression} stream{where}: {self.detail}"


class TrailingBytes(CorruptStream):
    """A gzip file with bytes after its last member that are neither another member nor zero
    padding (the NUL bytes of a tape block, which ``gzip -d`` and Python's reader skip): a
    member whose first bytes are damaged may hold HDUs (a MASK) that would be lost, so the
    file is refused as a corrupt stream. ``head``: the first two of those bytes, as Python's
    gzip reader shows them (``b'ju'``, after the zero padding)."""

    def __init__(self, head):
        super().__init__("gzip", trailing_bytes(head))


def trailing_bytes(head):
    """Words for the bytes after the last member of a gzip file, ``head`` their first bytes
    (a repr, or bytes shown as their repr)."""
    shown = head if isinstance(head, str) else repr(bytes(head))
    return ("bytes after its last member that are neither another gzip member nor zero "
            f"padding (they begin {shown})")


def compression_of(head):
    """The name of the compression (``"gzip"``, ``"bzip2"``, ``"xz"``, ``"zip"``) whose
    first bytes ``head`` starts with, or None."""
    return next((name for magic, name, _ in COMPRESSIONS if head.startswith(magic)), None)


def zip_member(archive):
    """The one file (`zipfile.ZipInfo`) of the open `zipfile.ZipFile` ``archive``, as
    astropy reads it; `ArchiveError` saying so for an archive of more files or none."""
    members = [m for m in archive.infolist() if not m.is_dir()]
    if len(members) != 1:
        names = ", ".join(repr(m.filename) for m in members[:3])
        more = ", ..." if len(members) > 3 else ""
        raise ArchiveError(f"zip archive holds {len(members)} files"
                           f"{f' ({names}{more})' if members else ''}; expected one FITS file")
    return members[0]


def _streams(buf, magic, decompressor, error, *, junk=None):
    """The whole content of compressed bytes, every stream of them, as ``gzip -d`` (``bunzip2``,
    ``unxz``) gives it: a file compressed in blocks (bgzip, ``pigz --independent``, pbzip2,
    ``xz -T``) is one file. Zero bytes after the last stream (padding, the NUL bytes a
    fixed-width table cell ends with) are ignored; other bytes that start no other stream
    are passed to ``junk`` (bzip2 and xz: ignored, as Python's readers of them do).
    ``decompressor()``: a decompressor of one stream; ``error``: the exception raised for
    an incomplete one; ``junk(rest)``: called with the bytes after the last stream, where
    they are not all zero (gzip: `TrailingBytes`)."""
    parts = []
    while True:
        d = decompressor()
        parts.append(d.decompress(buf))
        if not d.eof:
            raise error("incomplete or truncated stream")
        buf = d.unused_data
        if not buf.startswith(magic):
            rest = buf.lstrip(b"\0")
            if rest and junk is not None:
                junk(rest)
            return parts[0] if len(parts) == 1 else b"".join(parts)


def _gunzip(buf):
    """The whole content of gzipped bytes, every member of them (`_streams`; ``zlib.decompress``
    stops after the first member: a FITS file gzipped in blocks read as truncated). Raises
    `zlib.error`, or `TrailingBytes` for bytes after the last member that are neither another
    member nor zero padding."""
    try:
        return _streams(buf, b"\x1f\x8b", lambda: zlib.decompressobj(31), zlib.error,
                        junk=_junk)
    except zlib.error as exc:  # zlib's "incorrect data check": worded as gzip's reader does
        if "check" in str(exc):  # (read again: on this failure only, the data are lost)
            detail = _gzip_check_failed(buf)
            if detail:
                raise CorruptStream("gzip", detail) from None
        raise


#: How Python's gzip reader begins its words for a member that fails its CRC or length check.
_CHECK_FAILED = ("CRC check failed", "Incorrect length of data produced")


def _gzip_check_failed(buf):
    """Python's gzip reader's words (``"CRC check failed 0x... != 0x..."``, which a large
    file's stream reader gives) for the gzipped bytes ``buf`` that fail a CRC or length
    check, or None where it finds no such failure."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(buf)) as f:
            while f.read(1 << 22):
                pass
    except gzip.BadGzipFile as exc:
        if str(exc).startswith(_CHECK_FAILED):
            return str(exc)
    except _ERRORS:
        pass
    return None


def _junk(rest):
    """`TrailingBytes` for the bytes ``rest`` after the last member of a gzip file (its zero
    padding stripped)."""
    raise TrailingBytes(rest[:2])


def decompress(buf):
    """``(content, compression)``: the decompressed content of the bytes ``buf`` and the
    name of their compression (`compression_of`), or ``(buf, None)`` for bytes of none.
    Every stream of a gzip, bzip2 or xz file is read (streams joined, as ``gzip -d`` and
    the others give them); a zip archive must hold one file.

    Raises
    ------
    ArchiveError
        For corrupt or truncated data (``"corrupt or truncated bzip2: ..."``; a gzip file
        with bytes after its last member that are neither another member nor zero padding:
        `TrailingBytes`; one that fails its CRC or length check: `CorruptStream`) or a zip
        archive of more files than one, or none.
    """
    name = compression_of(buf[:6])
    try:
        if name == "gzip":
            return _gunzip(buf), name
        if name == "bzip2":
            return _streams(buf, b"BZh", bz2.BZ2Decompressor, EOFError), name
        if name == "xz":
            return _streams(buf, b"\xfd7zXZ", lzma.LZMADecompressor, EOFError), name
        if name == "zip":
            with zipfile.ZipFile(io.BytesIO(buf)) as archive:
                return archive.read(zip_member(archive)), name
    except ArchiveError:
        raise
    except _ERRORS as exc:
        raise ArchiveError(f"corrupt or truncated {name}: {exc}") from None
    return buf, None


def open_stream(path):
    """A binary file object of the decompressed content of the file ``path`` (the file
    itself where it is not compressed) and the name of its compression or None: one of
    `COMPRESSIONS`, or ``"compress"`` for a Unix-compressed file (`LZW_MAGIC`) where the
    package uncompresspy is installed (without it, the file as it is).

    Raises
    ------
    OSError
        Where the file cannot be opened.
    ArchiveError
        For a zip archive that is not one of a single file, or is corrupt.
    """
    f = open(path, "rb")
    try:
        head = f.read(6)
        name = compression_of(head)
        f.seek(0)
        if head.startswith(LZW_MAGIC) and importlib.util.find_spec("uncompresspy"):
            import uncompresspy

            f.close()
            return uncompresspy.LZWFile(path, "rb"), "compress"
        if name == "zip":
            try:
                archive = zipfile.ZipFile(f)
                stream = archive.open(zip_member(archive))
            except ArchiveError:
                raise
            except _ERRORS as exc:
                raise ArchiveError(f"corrupt or truncated zip: {exc}") from None
            return _Closing(stream, f), name
        opener = next((o for magic, n, o in COMPRESSIONS if n == name), None)
        if opener is not None:
            f.close()
            return opener(path, "rb"), name
        return f, None
    except BaseException:
        f.close()
        raise


class _Closing:
    """A stream that closes ``also`` (the archive's file) when it is closed."""

    def __init__(self, stream, also):
        self._stream, self._also = stream, also

    def __getattr__(self, attr):
        return getattr(self._stream, attr)

    def close(self):
        try:
            self._stream.close()
        finally:
            self._also.close()


def first_bytes(path, n):
    """``(head, compression)``: the first ``n`` decompressed bytes of the file ``path`` (fewer
    for a shorter file) and its compression or None.

    Raises
    ------
    OSError
        Where the file cannot be opened.
    ArchiveError
        For a corrupt or truncated stream that gives fewer bytes than it should, or a zip
        archive that is not one of a single file.
    """
    f, name = open_stream(path)
    try:
        return f.read(n), name
    except _ERRORS as exc:
        raise ArchiveError(f"corrupt or truncated {name}: {exc}") from None
    finally:
        f.close()


def check_stream(path, *, max_bytes=None):
    """Read the whole decompressed stream of the file ``path`` (in pieces, none of it kept),
    as `decompress` reads a small file's bytes: a corrupt stream is found so (a bad CRC is
    checked at its end only, its first bytes may be read without a word). ``max_bytes``:
    where given, no more than that many decompressed bytes are read (a stream corrupt
    further on, or in its CRC, passes).

    Raises
    ------
    OSError
        Where the file cannot be opened.
    ArchiveError
        For a corrupt or truncated stream (``"corrupt or truncated bzip2: ..."``; a gzip
        file that fails its CRC or length check: `CorruptStream`; as `decompress` words
        them), or a zip archive that is not one of a single file.
    """
    f, name = open_stream(path)
    left = float("inf") if max_bytes is None else max_bytes
    try:
        while left > 0:
            got = len(f.read(int(min(left, 1 << 20))))
            if not got:
                break
            left -= got
    except gzip.BadGzipFile as exc:
        if str(exc).startswith(_CHECK_FAILED):  # (as `decompress` words it)
            raise CorruptStream(name, str(exc)) from None
        raise ArchiveError(f"corrupt or truncated {name}: {exc}") from None
    except _ERRORS as exc:
        raise ArchiveError(f"corrupt or truncated {name}: {exc}") from None
    finally:
        f.close()
