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
           "CUT_SHORT", "ArchiveError", "CorruptStream", "TrailingBytes", "TruncatedStream",
           "check_stream", "compression_of", "decompress", "first_bytes", "open_stream",
           "zip_member"]

#: ``(first bytes, name, stream opener)`` of each whole-file compression astropy reads
#: (a zip archive, read by `zip_member`, has no stream opener of its own; Unix compress,
#: ``.Z``, has no reader in the standard library and is not one of them).
COMPRESSIONS = ((b"\x1f\x8b", "gzip", gzip.open),
                (b"BZh", "bzip2", lambda path, mode="rb": _open_streams(path, "bzip2")),
                (b"\xfd7zXZ", "xz", lambda path, mode="rb": _open_streams(path, "xz")),
                (b"PK\x03\x04", "zip", None),
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
    """A compressed stream its decompressor found corrupt, worded alike in memory and by a
    large file's stream reader (`_fits`): bad data (``detail``: the decompressor's words,
    ``"Corrupt input data"``, ``"Invalid data stream"``, ``"Bad CRC-32 for file 'x.fits'"``),
    a gzip file that fails its CRC or length check (Python's gzip reader's words,
    ``"CRC check failed 0x... != 0x..."``), or `TrailingBytes`. ``compression``: its name
    (``"gzip"``). (A stream cut short is no `CorruptStream`: `TruncatedStream`.)"""

    def __init__(self, compression, detail):
        self.compression, self.detail = compression, detail
        super().__init__(f"corrupt {compression} stream: {detail}")

    def reason(self, name=None):
        """The reason, naming the FITS file ``name`` where there is one, as `_fits`'s stream
        reader words it of a large file."""
        where = f" in FITS file {name}" if name else ""
        return f"corrupt {self.compression} stream{where}: {self.detail}"


#: What Python's gzip, bzip2 and xz readers say of a stream that ends before its end marker
#: (`EOFError`): the words of a `TruncatedStream` on every path.
CUT_SHORT = "Compressed file ended before the end-of-stream marker was reached"


class TruncatedStream(ArchiveError):
    """A compressed stream (gzip, bzip2, xz, a zip archive's member) that ends before its end
    marker, worded alike in memory (`decompress`) and by a large file's stream reader
    (`_fits.truncated_file`, where every HDU is whole: one cut inside an HDU's data is
    said so by both, from ``content``). ``compression``: its name; ``detail``: the
    reader's words (`CUT_SHORT` of gzip, bzip2 and xz, in memory too); ``content``: the
    bytes decompressed before the cut, where known (`decompress`), else None."""

    def __init__(self, compression, detail=CUT_SHORT, content=None):
        self.compression, self.detail, self.content = compression, detail, content
        super().__init__(f"truncated {compression} stream: {detail}")

    def reason(self, name=None):
        """The reason, naming the FITS file ``name`` where there is one: ``"truncated xz
        stream in FITS file x.fits.xz: Compressed file ended before the end-of-stream
        marker was reached"``."""
        where = f" in FITS file {name}" if name else ""
        return f"truncated {self.compression} stream{where}: {self.detail}"


class TrailingBytes(CorruptStream):
    """A gzip, bzip2 or xz file (``compression``) with bytes after its last member (stream)
    that are neither another member nor zero padding (the NUL bytes of a tape block, which
    ``gzip -d``, ``unxz`` and Python's readers skip): a member whose first bytes are damaged
    may hold HDUs (a MASK) that would be lost, so the file is refused as a corrupt stream, as
    ``unxz`` refuses it (``gzip -d`` and ``bunzip2`` warn of "trailing garbage", Python's
    readers ignore it). A file of several streams (pbzip2, ``xz -T``, ``cat a.xz b.xz``)
    is read as one. A bzip2 or xz stream after zero padding (``stream``) is refused too, in
    words of its own: Python's readers of them (astropy's) stop at the padding, the HDUs
    after it lost (a gzip member after zero padding is read, as Python's gzip reader reads
    it). ``head``: the first two of those bytes, as Python's gzip reader shows them
    (``b'ju'``, after the zero padding)."""

    def __init__(self, compression, head, *, stream=False):
        super().__init__(compression, trailing_bytes(compression, head, stream=stream))


def trailing_bytes(compression, head, *, stream=False):
    """Words for the bytes after the last member (stream) of a ``compression`` file (gzip,
    bzip2, xz), ``head`` their first bytes (a repr, or bytes shown as their repr);
    ``stream``: they are another stream after zero padding (bzip2, xz)."""
    shown = head if isinstance(head, str) else repr(bytes(head))
    if stream:
        return (f"another {compression} stream after zero padding, which Python's "
                f"{compression} reader (astropy's) stops at, leaving out the HDUs in it "
                f"(it begins {shown})")
    unit = "member" if compression == "gzip" else "stream"
    return (f"bytes after its last {unit} that are neither another {compression} {unit} "
            f"nor zero padding (they begin {shown})")


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


def _streams(buf, compression, magic, decompressor):
    """The whole content of compressed bytes, every stream of them, as ``gzip -d`` (``bunzip2``,
    ``unxz``) gives it: a file compressed in blocks (bgzip, ``pigz --independent``, pbzip2,
    ``xz -T``) is one file. Zero bytes after the last stream (padding, the NUL bytes a
    fixed-width table cell ends with) are ignored; other bytes that start no other stream
    are `TrailingBytes`. A gzip member after zero padding is read, as Python's gzip reader
    (a large file's, astropy's) reads it; a bzip2 or xz stream after it is `TrailingBytes`
    (Python's readers of them stop at the padding). ``decompressor()``: a decompressor of
    one stream of the ``compression`` (its name) whose first bytes are ``magic``. Raises
    `TruncatedStream` for a stream cut short (the bytes before the cut its ``content``), the
    decompressor's error for bad data."""
    parts = []
    while True:
        d = decompressor()
        parts.append(d.decompress(buf))
        if not d.eof:
            raise TruncatedStream(compression, content=b"".join(parts))
        buf = d.unused_data
        if not buf.startswith(magic):
            rest = buf.lstrip(b"\0")
            if rest.startswith(magic) and compression == "gzip":
                buf = rest
                continue
            if rest:
                raise TrailingBytes(compression, rest[:2], stream=rest.startswith(magic))
            return parts[0] if len(parts) == 1 else b"".join(parts)


#: The first bytes of a stream of each compression.
_MAGIC = {name: magic for magic, name, _ in reversed(COMPRESSIONS)}
#: The decompressor of one stream of bzip2 and xz.
_DECOMPRESSORS = {"bzip2": bz2.BZ2Decompressor, "xz": lzma.LZMADecompressor}
#: Compressed bytes read at once by `_Streams`.
_CHUNK = 1 << 16


class _Streams(io.RawIOBase):
    """The decompressed content of the bzip2 or xz file ``path`` (``compression``), every
    stream of it, read as `decompress` reads its bytes (`_streams`): bytes after the last
    stream that are neither another stream nor zero padding raise `TrailingBytes`, a stream
    cut short `EOFError`, bad data the decompressor's error (as `bz2.open` and `lzma.open`
    do, which ignore such bytes, and stop at zero padding: an xz file padded so is "cut
    short" to them). Seekable as those are: forwards by reading, backwards from the start.
    A decompressor is never fed again after its error (libbz2 can crash the interpreter):
    the error is raised again until the stream is rewound."""

    def __init__(self, path, compression):
        self._fp = open(path, "rb")
        self._compression = compression
        self._magic, self._new = _MAGIC[compression], _DECOMPRESSORS[compression]
        self._start()

    def _start(self):
        self._fp.seek(0)
        self._decompressor, self._pos, self._end, self._failed = self._new(), 0, False, None

    def readable(self):
        return True

    def seekable(self):
        return True

    def close(self):
        try:
            self._fp.close()
        finally:
            super().close()

    def readinto(self, b):
        with memoryview(b) as view, view.cast("B") as out:
            data = self.read(len(out))
            out[:len(data)] = data
        return len(data)

    def readall(self):
        parts = []
        while data := self.read(1 << 22):
            parts.append(data)
        return b"".join(parts)

    def read(self, size=-1):
        if size is None or size < 0:
            return self.readall()
        if self._failed is not None:
            raise self._failed
        if not size or self._end:
            return b""
        try:
            data = self._decompressed(size)
        except (*_ERRORS, ArchiveError) as exc:
            self._failed = exc
            raise
        if not data:
            self._end = True
        self._pos += len(data)
        return data

    def _decompressed(self, size):
        """Up to ``size`` decompressed bytes, none at the end of the last stream."""
        while True:
            d = self._decompressor
            if d.eof:  # another stream, zero padding to the end, or bytes that are neither
                rest = d.unused_data or self._fp.read(_CHUNK)
                while 0 < len(rest) < len(self._magic) and (more := self._fp.read(_CHUNK)):
                    rest += more
                if not rest:
                    return b""
                if not rest.startswith(self._magic):
                    rest = rest.lstrip(b"\0")
                    while len(rest) < len(self._magic) and (more := self._fp.read(_CHUNK)):
                        rest = (rest + more).lstrip(b"\0")
                    if rest:
                        raise TrailingBytes(self._compression, rest[:2],
                                            stream=rest.startswith(self._magic))
                    return b""
                self._decompressor = self._new()
                data = self._decompressor.decompress(rest, size)
            else:
                raw = self._fp.read(_CHUNK) if d.needs_input else b""
                if d.needs_input and not raw:
                    raise EOFError(CUT_SHORT)
                data = d.decompress(raw, size)
            if data:
                return data

    def seek(self, offset, whence=io.SEEK_SET):
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence == io.SEEK_END:
            while self.read(1 << 22):
                pass
            offset += self._pos
        if offset < self._pos:
            self._start()
        while self._pos < offset and self.read(min(offset - self._pos, 1 << 22)):
            pass
        return self._pos

    def tell(self):
        return self._pos


def _open_streams(path, compression):
    """A buffered reader of `_Streams` of the bzip2 or xz file ``path``."""
    return io.BufferedReader(_Streams(path, compression))


def _gunzip(buf):
    """The whole content of gzipped bytes, every member of them (`_streams`; ``zlib.decompress``
    stops after the first member: a FITS file gzipped in blocks read as truncated). Raises
    `zlib.error`, or `TrailingBytes` for bytes after the last member that are neither another
    member nor zero padding."""
    try:
        return _streams(buf, "gzip", b"\x1f\x8b", lambda: zlib.decompressobj(31))
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


def decompress(buf):
    """``(content, compression)``: the decompressed content of the bytes ``buf`` and the
    name of their compression (`compression_of`), or ``(buf, None)`` for bytes of none.
    Every stream of a gzip, bzip2 or xz file is read (streams joined, as ``gzip -d`` and
    the others give them); a zip archive must hold one file.

    Raises
    ------
    ArchiveError
        For a zip archive that cannot be opened (``"corrupt or truncated zip: ..."``), or of
        more files than one, or none.
    TruncatedStream
        For a stream cut short, in the words of a large file's stream reader (``"truncated
        xz stream: Compressed file ended before the end-of-stream marker was reached"``).
    CorruptStream
        For corrupt data (bad data, a failed CRC check: `_corrupt`, in the words of a large
        file's stream reader); `TrailingBytes` for a gzip, bzip2 or xz file with bytes after
        its last stream that are neither another stream nor zero padding.
    """
    name = compression_of(buf[:6])
    try:
        if name == "gzip":
            with _corrupt(name):
                return _gunzip(buf), name
        if name in _DECOMPRESSORS:
            with _corrupt(name):
                return _streams(buf, name, _MAGIC[name], _DECOMPRESSORS[name]), name
        if name == "zip":
            with zipfile.ZipFile(io.BytesIO(buf)) as archive:
                member = archive.open(zip_member(archive))  # (its local header read)
                with _corrupt("zip"), member:
                    return member.read(), name
    except ArchiveError:
        raise
    except EOFError as exc:  # (a zip member cut short)
        raise TruncatedStream(name, str(exc) or CUT_SHORT) from None
    except _ERRORS as exc:
        raise ArchiveError(f"corrupt or truncated {name}: {exc}") from None
    return buf, None


class _corrupt:
    """Context in which the decompressor's errors, but `EOFError` (a stream cut short) and
    `ArchiveError`, are `CorruptStream` of the ``compression``, its words the detail: as
    `_fits`'s stream reader of a large file words them (``"corrupt xz stream in FITS file
    x.fits.xz: Corrupt input data"``)."""

    def __init__(self, compression):
        self.compression = compression

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if kind is None or issubclass(kind, (EOFError, ArchiveError)) \
                or not issubclass(kind, _ERRORS):
            return False
        raise _stream_error(self.compression, exc) from None


#: How Python's gzip reader begins its words for bytes after a member that start no other.
_NOT_GZIP = "Not a gzipped file ("


def _stream_error(compression, exc):
    """The `ArchiveError` for the error ``exc`` of a decompressing reader of a
    ``compression`` file, worded as `decompress` words it: a stream cut short
    (`TruncatedStream`), `TrailingBytes` (Python's gzip reader's "Not a gzipped file" of
    bytes after a member), else `CorruptStream`."""
    if isinstance(exc, ArchiveError):
        return exc
    if isinstance(exc, EOFError):
        return TruncatedStream(compression, str(exc) or CUT_SHORT)
    said = str(exc) or type(exc).__name__
    if compression == "gzip" and said.startswith(_CHECK_FAILED):  # (`_gzip_check_failed`)
        return CorruptStream(compression, said)
    if compression == "gzip" and said.startswith(_NOT_GZIP):
        return TrailingBytes(compression, said[len(_NOT_GZIP):-1])
    return CorruptStream(compression, said)


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
        For a corrupt or truncated stream that gives fewer bytes than it should (as
        `check_stream` words it: `CorruptStream`, `TruncatedStream`), or a zip archive that
        is not one of a single file.
    """
    f, name = open_stream(path)
    try:
        return f.read(n), name
    except _ERRORS as exc:
        raise _stream_error(name, exc) from None
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
        For a stream cut short (`TruncatedStream`), a corrupt one (`CorruptStream`,
        `TrailingBytes`; as `decompress` words them), or a zip archive that is not one of a
        single file.
    """
    f, name = open_stream(path)
    left = float("inf") if max_bytes is None else max_bytes
    try:
        while left > 0:
            got = len(f.read(int(min(left, 1 << 20))))
            if not got:
                break
            left -= got
    except _ERRORS as exc:  # (as `decompress` words it)
        raise _stream_error(name, exc) from None
    finally:
        f.close()
