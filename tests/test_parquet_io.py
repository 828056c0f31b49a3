"""Parquet tables: numeric array columns (an embedding) written and read as one flat buffer.

astropy's own Parquet code turns a ``(N, 256)`` column into N numpy arrays to write it
(``np.split``) and N arrays back to read it (``np.stack``): 35 s and 18 s for a million
embeddings. astromorph writes and reads such columns through pyarrow in one piece, in the
layout astropy writes (fixed-size lists, the same header), so that files read the same by
astropy, pandas and pyarrow, and old files read the same by astromorph.
"""
import warnings

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("pandas")

import astropy.io.misc.parquet as astropy_parquet  # noqa: E402
import astropy.units as u  # noqa: E402
from astropy.table import Column, MaskedColumn, QTable, Table  # noqa: E402
from astropy.time import Time  # noqa: E402
from astropy.utils.exceptions import AstropyUserWarning  # noqa: E402

from astromorph._io import read_parquet, restore_parquet_shapes, write_table  # noqa: E402
from astromorph.exceptions import InvalidArgumentError, LossyOutputWarning  # noqa: E402


def _tables():
    """{name: table} of the kinds of columns an astromorph table holds."""
    rng = np.random.default_rng(3)
    n = 7
    emb = rng.normal(size=(n, 5)).astype(np.float32)
    tables = {}
    t = QTable({"id": np.arange(n), "embedding": emb},
               meta={"astromorph_model": "embedding", "n": 3, "comments": ["a", "b"]})
    t["embedding"].info.description = "unit vector"
    t["embedding"].unit = "pix"
    t["embedding"].info.format = ".3f"
    t["embedding"].info.meta = {"ucd": "meta.code"}
    tables["plain"] = t
    t = QTable({"name": np.array(["a", "bcd", "é"] + ["x"] * (n - 3)),
                "ra": np.linspace(0, 1, n) * u.deg,
                "embedding": MaskedColumn(emb, mask=np.zeros(emb.shape, bool)),
                "vec64": MaskedColumn(rng.normal(size=(n, 3)),
                                      mask=rng.random((n, 3)) < 0.3),
                "flags": rng.random((n, 4)) < 0.5,
                "counts": rng.integers(-5, 5, size=(n, 2)).astype(np.int16),
                "u8": rng.integers(0, 255, size=(n, 3)).astype(np.uint8),
                "score": MaskedColumn(rng.random(n), mask=[1, 0] * 3 + [0]),
                "q": rng.random((n, 2)) * u.mJy,
                "when": Time(58000 + rng.random((n, 2)), format="mjd"),
                "labels": np.array([["a", "b"]] * n)},
               meta={"k": {"nested": [1, 2]}})
    t["vec64"].info.description = "masked vectors"
    t["vec64"].unit = "m"
    tables["mixed"] = t
    tables["cube"] = QTable({"id": np.arange(n), "stamp": rng.random((n, 3, 2, 4)),
                             "cube": MaskedColumn(np.ones((n, 2, 2), np.float32),
                                                  mask=np.eye(2, dtype=bool)[None].repeat(n, 0))})
    tables["only_vector"] = QTable({"embedding": emb[:, :2]})
    tables["zero_rows"] = QTable({"id": np.zeros(0, np.int64),
                                  "embedding": np.zeros((0, 4), np.float32),
                                  "m": MaskedColumn(np.zeros((0, 2)), mask=np.zeros((0, 2), bool))},
                                 meta={"n": 0})
    tables["no_vector"] = QTable({"id": [1, 2], "x": MaskedColumn([1.0, 2.0], mask=[0, 1])})
    return tables


def _write_quietly(table, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LossyOutputWarning)  # (3-D columns are flattened)
        write_table(table, path)


def _astropy_read(path):
    """How astromorph read a Parquet file before: astropy, then the shapes restored."""
    return restore_parquet_shapes(QTable.read(path, format="parquet"), path)


def assert_tables_equal(got, want):
    """Same columns, classes, dtypes, shapes, values, masks, units, descriptions, formats,
    column meta and table meta."""
    assert got.colnames == want.colnames
    assert dict(got.meta) == dict(want.meta)
    assert list(got.meta) == list(want.meta)
    for name in want.colnames:
        g, w = got[name], want[name]
        assert type(g) is type(w), (name, type(g), type(w))
        assert g.shape == w.shape, name
        if isinstance(w, Time):
            assert np.array_equal(g.jd1, w.jd1) and np.array_equal(g.jd2, w.jd2), name
            continue
        assert g.dtype.newbyteorder("=") == w.dtype.newbyteorder("="), name
        assert np.array_equal(np.ma.getmaskarray(g), np.ma.getmaskarray(w)), name
        gv, wv = np.ma.getdata(g), np.ma.getdata(w)
        if isinstance(w, u.Quantity):
            assert g.unit == w.unit, name
            gv, wv = g.value, w.value
        assert np.array_equal(np.asarray(gv), np.asarray(wv)), name
        for attr in ("unit", "description", "format", "meta"):
            assert getattr(g.info, attr) == getattr(w.info, attr), (name, attr)


@pytest.mark.parametrize("kind", list(_tables()))
def test_round_trip(tmp_path, kind):
    """write_table then read_parquet gives the table back, 3-D shapes included."""
    table = _tables()[kind]
    _write_quietly(table, tmp_path / "t.parquet")
    back = read_parquet(tmp_path / "t.parquet")
    assert isinstance(back, QTable)
    # astropy reads a MaskedColumn with nothing masked as a MaskedColumn, a plain unitless
    # column of a QTable as a Column: compare with what the old reading gave
    assert_tables_equal(back, _astropy_read(tmp_path / "t.parquet"))
    for name in table.colnames:
        want = table[name]
        if isinstance(want, Time):
            assert np.array_equal(back[name].mjd, want.mjd)
            continue
        assert back[name].shape == want.shape
        assert np.array_equal(np.ma.getmaskarray(back[name]), np.ma.getmaskarray(want))
        assert np.array_equal(np.ma.getdata(back[name]), np.ma.getdata(want))
    assert dict(back.meta) == dict(table.meta)


@pytest.mark.parametrize("kind", list(_tables()))
def test_new_files_are_the_files_astropy_writes(tmp_path, kind):
    """The columns, types and header of a file write_table writes are those of the file
    astropy's Table.write writes: any reader of the old files reads the new ones."""
    table = _tables()[kind]
    _write_quietly(table, tmp_path / "new.parquet")
    table.write(tmp_path / "old.parquet", format="parquet")
    new, old = pq.read_table(tmp_path / "new.parquet"), pq.read_table(tmp_path / "old.parquet")
    assert new.schema.equals(old.schema, check_metadata=True), (new.schema, old.schema)
    assert new.equals(old, check_metadata=True)
    # and plain astropy reads the new file as the old one
    assert_tables_equal(QTable.read(tmp_path / "new.parquet"),
                        QTable.read(tmp_path / "old.parquet"))
    assert_tables_equal(Table.read(tmp_path / "new.parquet"),
                        Table.read(tmp_path / "old.parquet"))


@pytest.mark.parametrize("kind", list(_tables()))
def test_old_files_read_as_before(tmp_path, kind):
    """A file astropy wrote (astromorph's writing until now) reads as astropy + the shapes
    restored read it."""
    table = _tables()[kind]
    table.write(tmp_path / "old.parquet", format="parquet")
    assert_tables_equal(read_parquet(tmp_path / "old.parquet"),
                        _astropy_read(tmp_path / "old.parquet"))


def test_pandas_and_pyarrow_read_new_files(tmp_path):
    table = _tables()["mixed"]
    write_table(table, tmp_path / "t.parquet")
    import pandas as pd

    frame = pd.read_parquet(tmp_path / "t.parquet")
    assert np.array_equal(np.stack(frame["embedding"]), table["embedding"].data)
    assert np.array_equal(np.stack(frame["vec64.mask"]), table["vec64"].mask)
    arrow = pq.read_table(tmp_path / "t.parquet")["embedding"].combine_chunks()
    assert np.array_equal(arrow.flatten().to_numpy().reshape(-1, 5), table["embedding"].data)


def test_reads_row_groups_and_slices(tmp_path):
    """A file of several row groups (pyarrow's writer with a small row_group_size, as other
    tools write them) reads as astropy reads it."""
    table = _tables()["mixed"]
    table.write(tmp_path / "one.parquet", format="parquet")
    arrow = pq.read_table(tmp_path / "one.parquet")
    pq.write_table(arrow.slice(1), tmp_path / "groups.parquet", row_group_size=2)
    assert pq.ParquetFile(tmp_path / "groups.parquet").num_row_groups == 3
    assert_tables_equal(read_parquet(tmp_path / "groups.parquet"),
                        _astropy_read(tmp_path / "groups.parquet"))


def test_null_vectors_fall_back_to_astropy(tmp_path):
    """A fixed-size list column with null rows (astropy never writes one) is left to
    astropy, which fails on it as before, not read as garbage."""
    arr = pa.array([[1.0, 2.0], None, [3.0, 4.0]], type=pa.list_(pa.float64(), 2))
    pq.write_table(pa.table({"v": arr, "id": [1, 2, 3]}), tmp_path / "nulls.parquet")
    try:
        want = _astropy_read(tmp_path / "nulls.parquet")
    except Exception as exc:  # noqa: BLE001 - astropy's np.stack of None
        with pytest.raises(type(exc)):
            read_parquet(tmp_path / "nulls.parquet")
    else:
        assert_tables_equal(read_parquet(tmp_path / "nulls.parquet"), want)


def test_read_vectors_are_writable_views_of_one_buffer(tmp_path):
    """The embedding comes back as one contiguous, writable array (not N arrays stacked)."""
    table = _tables()["plain"]
    write_table(table, tmp_path / "t.parquet")
    emb = read_parquet(tmp_path / "t.parquet")["embedding"]
    assert emb.flags.c_contiguous and emb.flags.writeable
    emb[0, 0] = 42 * u.pix  # a catalogue's column can be changed in place, as before
    assert emb[0, 0].value == 42


class _NoRowByRow:
    """numpy as astropy's parquet module sees it, with the per-row paths refused."""

    def __getattr__(self, name):
        if name in ("split", "stack"):
            raise AssertionError(f"astropy's per-row np.{name} was used")
        return getattr(np, name)


def test_vector_columns_do_not_go_row_by_row(tmp_path, monkeypatch):
    """Writing and reading numeric array columns bypasses astropy's np.split / np.stack of
    one array per row; the other columns still go through astropy's code."""
    table = _tables()["mixed"]
    del table["labels"]  # a text array column is left to astropy, row by row
    monkeypatch.setattr(astropy_parquet, "np", _NoRowByRow())
    write_table(table, tmp_path / "t.parquet")
    back = read_parquet(tmp_path / "t.parquet")
    monkeypatch.undo()
    assert_tables_equal(back, _astropy_read(tmp_path / "t.parquet"))


def test_astropy_reads_3d_columns_flattened_from_new_files(tmp_path):
    """As before: plain astropy reads a 3-D column's rows flattened (the warning says so),
    astromorph restores the shape."""
    table = _tables()["cube"]
    with pytest.warns(LossyOutputWarning, match="stamp"):
        write_table(table, tmp_path / "t.parquet")
    assert Table.read(tmp_path / "t.parquet")["stamp"].shape == (7, 24)
    assert read_parquet(tmp_path / "t.parquet")["stamp"].shape == (7, 3, 2, 4)
    assert isinstance(read_parquet(tmp_path / "t.parquet")["id"], Column)


@pytest.mark.parametrize("chunk", [1, 12, 60])
def test_row_groups_and_batches_of_any_size(tmp_path, monkeypatch, chunk):
    """Written in row groups and read in batches of about ``_PARQUET_CHUNK_VALUES`` array
    values (a row at a time, a few rows, more than a row group): the same file contents and
    the same table."""
    import astromorph._io

    monkeypatch.setattr(astromorph._io, "_PARQUET_CHUNK_VALUES", chunk)
    table = _tables()["mixed"]
    write_table(table, tmp_path / "new.parquet")
    table.write(tmp_path / "old.parquet", format="parquet")
    groups = pq.ParquetFile(tmp_path / "new.parquet").num_row_groups
    assert groups == (7 if chunk < 60 else 4)  # each row holds 26 array values
    assert pq.read_table(tmp_path / "new.parquet").equals(pq.read_table(tmp_path / "old.parquet"),
                                                          check_metadata=True)
    for name in ("new", "old"):
        assert_tables_equal(read_parquet(tmp_path / f"{name}.parquet"),
                            _astropy_read(tmp_path / "old.parquet"))



def test_mixin_meta_holding_a_name_key(tmp_path):
    """The meta of a time or quantity column, which astropy's header records beside the
    names of its serialized columns, names no column: a meta {'name': 'id'} does not drop
    the column 'id' (astropy itself reads it, out of its place; a name that no column has
    makes astropy's reader fail, and so read_parquet, which reads such columns with it)."""
    rng = np.random.default_rng(5)
    table = QTable({"when": Time(58000 + rng.random(4), format="mjd"),
                    "embedding": rng.random((4, 3)).astype(np.float32), "id": np.arange(4),
                    "q": rng.random((4, 2)) * u.deg})
    table["when"].info.meta = {"name": "id", "deeper": {"name": "id"}}
    table["q"].info.meta = {"name": "id"}
    write_table(table, tmp_path / "t.parquet")
    assert_tables_equal(read_parquet(tmp_path / "t.parquet"), table)


@pytest.mark.parametrize("drop", [["vec64.mask"], ["when.jd1", "when.jd2"]])
def test_header_naming_columns_the_file_lacks(tmp_path, drop):
    """A file whose header names serialized columns that it lacks (columns dropped with
    pyarrow, the header kept) fails as astropy fails on it (a ValueError, which the
    commands report as a table that cannot be read), not with a KeyError."""
    _write_quietly(_tables()["mixed"], tmp_path / "t.parquet")
    pq.write_table(pq.read_table(tmp_path / "t.parquet").drop(drop), tmp_path / "d.parquet")
    with pytest.raises(ValueError) as astropy_error:
        _astropy_read(tmp_path / "d.parquet")
    with pytest.raises(type(astropy_error.value)):
        read_parquet(tmp_path / "d.parquet")


def _pandas_file(path):
    """A Parquet file as pandas writes one: text, a column of variable-length lists, no
    astropy header (so no ``table::len::<name>`` key for the text column)."""
    import pandas as pd

    rng = np.random.default_rng(7)
    pd.DataFrame({"id": np.arange(4), "label": ["a", "bcd", "é", "x"],
                  "embedding": list(rng.random((4, 3)))}).to_parquet(path)
    assert not any(key.startswith(b"table::len::")
                   for key in pq.read_schema(path).metadata or {})
    return path


def test_pandas_files_read_without_astropy_warning(tmp_path):
    """astropy warns "No table::len::label found in metadata" for any text column of a file
    it did not write, and sizes the column by its longest string (nothing is cut): not the
    user's business when astromorph reads a pandas file; the values are astropy's."""
    path = _pandas_file(tmp_path / "pandas.parquet")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = read_parquet(path)
    assert back["label"].tolist() == ["a", "bcd", "é", "x"]
    assert back["label"].dtype == np.dtype("U3")
    # astropy itself still warns, outside read_parquet (the filter is local to it)
    with pytest.warns(AstropyUserWarning, match="No table::len::label found"):
        want = QTable.read(path, format="parquet")
    assert back.colnames == want.colnames
    assert back["label"].tolist() == want["label"].tolist()


def test_other_astropy_warnings_still_given_for_pandas_files(tmp_path, monkeypatch):
    """Only that one message of astropy's Parquet reader is left out."""
    path = _pandas_file(tmp_path / "pandas.parquet")
    real = astropy_parquet.get_pyarrow

    def get_pyarrow():
        warnings.warn("something else in metadata", AstropyUserWarning)
        return real()

    monkeypatch.setattr(astropy_parquet, "get_pyarrow", get_pyarrow)
    with pytest.warns(AstropyUserWarning) as record:
        read_parquet(path)
    assert [str(w.message) for w in record] == ["something else in metadata"]


def test_large_table_in_row_groups_astropy_reads(tmp_path):
    """A table of more array values than `_PARQUET_CHUNK_VALUES` (the default one) is
    written in several row groups, which astropy's own reader reads back as the table:
    values, units, descriptions and meta."""
    import astromorph._io

    rng = np.random.default_rng(11)
    rows = astromorph._io._PARQUET_CHUNK_VALUES // 256 + 1000
    table = Table({"id": np.arange(rows), "ra": rng.uniform(0, 360, rows),
                   "embedding": rng.standard_normal((rows, 256), dtype=np.float32)},
                  meta={"astromorph_model": "embedding", "n": 2})
    table["ra"].unit = "deg"
    table["embedding"].info.description = "unit vector"
    write_table(table, tmp_path / "t.parquet")
    assert pq.ParquetFile(tmp_path / "t.parquet").num_row_groups == 2
    assert_tables_equal(Table.read(tmp_path / "t.parquet", format="parquet"), table)
    assert_tables_equal(Table(read_parquet(tmp_path / "t.parquet")), table)


# ------------------------------------------------- null cells in files pandas or pyarrow wrote
def _pandas_nulls_file(path):
    """A catalogue as pandas writes it, with a null in each column that holds one."""
    import pandas as pd

    pd.DataFrame({
        "ra": [10.5, 11.25, np.nan, 12.0],
        "name": ["NGC 1", None, "é", "M 31"],  # object str column: pyarrow large_string
        "source_id": pd.array([2**62 + 1, None, 7, -3], dtype="Int64"),  # > 2**53
        "flag": pd.array([True, None, False, True], dtype="boolean"),
        "kind": pd.Categorical(["spiral", None, "elliptical", "spiral"]),
        "kind_full": pd.Categorical(["a", "b", "a", "a"]),  # a categorical without a null
        "when": pd.to_datetime(["2020-01-01T00:00:00", None, "2021-02-03T04:05:06",
                                "2022-01-01T00:00:00"]),
        "n": [1, 2, 3, 4],
    }).to_parquet(path)
    return path


def test_pandas_file_with_null_cells(tmp_path):
    """A null in a text column (astropy: ``TypeError: object of type 'NoneType' has no
    len()``), a nullable integer or boolean (astropy: float64 with NaN, losing the digits of
    a 64-bit id; an object column of True/None) and a categorical column (astropy:
    NotImplementedError) read as masked columns of their own type, masked where null; the
    other columns as astropy reads them, in the file's order."""
    path = _pandas_nulls_file(tmp_path / "nulls.parquet")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = read_parquet(path)
    assert t.colnames == ["ra", "name", "source_id", "flag", "kind", "kind_full", "when", "n"]
    assert isinstance(t["name"], MaskedColumn) and t["name"].dtype == np.dtype("U5")
    assert t["name"].mask.tolist() == [False, True, False, False]
    assert t["name"].filled("?").tolist() == ["NGC 1", "?", "é", "M 31"]
    assert isinstance(t["source_id"], MaskedColumn) and t["source_id"].dtype == np.int64
    assert t["source_id"].mask.tolist() == [False, True, False, False]
    assert t["source_id"][0] == 2**62 + 1 and t["source_id"][3] == -3
    assert isinstance(t["flag"], MaskedColumn) and t["flag"].dtype == bool
    assert t["flag"].filled(False).tolist() == [True, False, False, True]
    assert t["flag"].mask.tolist() == [False, True, False, False]
    assert isinstance(t["kind"], MaskedColumn) and t["kind"].dtype.kind == "U"
    assert t["kind"].filled("").tolist() == ["spiral", "", "elliptical", "spiral"]
    assert t["kind"].mask.tolist() == [False, True, False, False]
    assert type(t["kind_full"]) is Column and t["kind_full"].tolist() == ["a", "b", "a", "a"]
    # a null float or time is masked too (pandas writes a NaN of a float64 column as null)
    assert isinstance(t["ra"], MaskedColumn) and t["ra"].mask.tolist() == [0, 0, 1, 0]
    assert t["ra"][1] == 11.25 and np.isnan(np.ma.getdata(t["ra"])[2])
    assert isinstance(t["when"], MaskedColumn) and t["when"].mask.tolist() == [0, 1, 0, 0]
    assert np.isnat(np.ma.getdata(t["when"])[1])
    assert str(t["when"][2]) == "2021-02-03T04:05:06.000000"
    assert type(t["n"]) is Column and t["n"].tolist() == [1, 2, 3, 4]
    # the masked text column is one every output format holds
    write_table(t["name", "source_id", "flag", "kind"], tmp_path / "out.ecsv")
    back = Table.read(tmp_path / "out.ecsv")
    assert back["name"].mask.tolist() == [False, True, False, False]
    assert back["source_id"][0] == 2**62 + 1


def test_null_text_beside_a_vector_column(tmp_path):
    """The same in a file whose vector column astromorph reads through pyarrow; a column
    of nothing but nulls (pyarrow's null type) reads as a fully masked float64 column."""
    emb = np.arange(12, dtype=np.float32).reshape(4, 3)
    pq.write_table(pa.table({
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), 3),
        "name": pa.array(["a", None, None, "bb"]),
        "id": pa.array([None, 1, 2, 3], pa.uint64()),
        "empty": pa.array([None] * 4)}), tmp_path / "t.parquet")
    t = read_parquet(tmp_path / "t.parquet")
    assert t.colnames == ["embedding", "name", "id", "empty"]
    np.testing.assert_array_equal(t["embedding"], emb)
    assert t["name"].mask.tolist() == [False, True, True, False]
    assert t["name"].filled("").tolist() == ["a", "", "", "bb"]
    assert t["id"].dtype == np.uint64 and t["id"].mask.tolist() == [True, False, False, False]
    assert t["empty"].dtype == np.float64 and t["empty"].mask.all()


def test_zero_row_text_column(tmp_path):
    """A text column of a file pyarrow wrote with no rows (astropy: ``max() arg is an empty
    sequence``) reads as an empty text column."""
    pq.write_table(pa.table({"name": pa.array([], pa.string()), "ra": pa.array([], pa.float64())}),
                   tmp_path / "t.parquet")
    t = read_parquet(tmp_path / "t.parquet")
    assert t.colnames == ["name", "ra"] and len(t) == 0 and t["name"].dtype.kind == "U"


@pytest.mark.parametrize("kind", ["struct", "time"])
def test_column_astropy_cannot_read_is_named(tmp_path, kind):
    """A column of a type astropy does not read (a struct, a time of day) is an InputError
    naming the file, the column and its type, not astropy's NotImplementedError."""
    from astromorph.exceptions import InputError

    column = {"struct": pa.array([{"a": 1}, None]),
              "time": pa.array([1, None], pa.time64("us"))}[kind]
    pq.write_table(pa.table({"ra": [1.0, 2.0], "odd": column, "name": ["a", None]}),
                   tmp_path / "t.parquet")
    with pytest.raises(InputError, match=r"t\.parquet.*column 'odd'") as info:
        read_parquet(tmp_path / "t.parquet")
    assert str(column.type) in str(info.value)


def test_cli_reads_a_pandas_catalogue_with_null_cells(tmp_path, capsys):
    """``astromorph similar`` (which reads its table as annotate, cluster, classify and
    evaluate do) on a catalogue pandas wrote with null text, Int64 and categorical cells
    beside an embedding column: the nulls are masked in the output, the ids exact; a column
    astropy cannot read is an error naming it (exit 2), not a traceback."""
    import pandas as pd

    from astromorph.cli import main

    n = 12
    emb = np.random.default_rng(5).normal(size=(n, 4)).astype(np.float32)
    frame = pd.DataFrame({
        "name": [None if i % 3 == 1 else f"G{i}" for i in range(n)],
        "source_id": pd.array([None if i % 4 == 2 else 2**60 + i for i in range(n)],
                              dtype="Int64"),
        "kind": pd.Categorical([None if i % 5 == 0 else "sp" for i in range(n)])})
    arrow = pa.Table.from_pandas(frame, preserve_index=False).append_column(
        "embedding", pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), 4))
    pq.write_table(arrow, tmp_path / "cat.parquet")
    out = tmp_path / "nn.ecsv"
    assert main(["similar", str(tmp_path / "cat.parquet"), "--query", "0", "-k", str(n),
                 "--include-query", "-o", str(out), "-q"]) == 0
    res = Table.read(out)
    res.sort("row")
    assert res["row"].tolist() == list(range(n))
    assert res["name"].mask.tolist() == [i % 3 == 1 for i in range(n)]
    assert res["source_id"].mask.tolist() == [i % 4 == 2 for i in range(n)]
    assert res["source_id"][3] == 2**60 + 3
    assert res["kind"].mask.tolist() == [i % 5 == 0 for i in range(n)]
    capsys.readouterr()
    pq.write_table(arrow.append_column("odd", pa.array([{"a": 1}] * n)),
                   tmp_path / "odd.parquet")
    assert main(["similar", str(tmp_path / "odd.parquet"), "--query", "0", "-k", "2"]) == 2
    err = capsys.readouterr().err
    assert "odd.parquet" in err and "column 'odd'" in err and "Traceback" not in err


# ------------------------------ null floats and times, time zones, all-null columns (round trips)
def _masks_and_values_equal(got, want):
    """``got`` and ``want`` (columns) have the same mask and the same unmasked values, NaN
    and NaT included, where they are not masked."""
    mask = np.ma.getmaskarray(want)
    assert np.ma.getmaskarray(got).tolist() == mask.tolist()
    a, b = np.ma.getdata(got)[~mask], np.ma.getdata(want)[~mask]
    if a.dtype.kind in "fMm":
        assert (np.isnan(a) if a.dtype.kind == "f" else np.isnat(a)).tolist() == \
            (np.isnan(b) if b.dtype.kind == "f" else np.isnat(b)).tolist()
    np.testing.assert_array_equal(a, b)


def _tables_equal(got, want):
    """Every column of ``want`` is in ``got`` with its dtype, mask and values."""
    for name in want.colnames:
        _masks_and_values_equal(got[name], want[name])
        assert got[name].dtype == want[name].dtype, name


def test_null_floats_are_masked_and_nan_is_kept(tmp_path):
    """A null float cell (pyarrow's null, pandas' ``Float64`` ``pd.NA``) is a masked entry,
    astropy gives it as NaN; a NaN the file holds as a value stays an unmasked NaN. Written
    back and read again, the masks and the NaN are the same (astropy reads the file so
    too); a float column without a null is a plain column, as before."""
    import pandas as pd

    nan = float("nan")
    pq.write_table(pa.table({
        "f8": pa.array([1.5, None, nan, -2.0], pa.float64()),
        "f4": pa.array([None, 2.5, 3.0, nan], pa.float32()),
        "plain": pa.array([1.0, nan, 2.0, 3.0])}), tmp_path / "arrow.parquet")
    t = read_parquet(tmp_path / "arrow.parquet")
    assert isinstance(t["f8"], MaskedColumn) and t["f8"].dtype == np.float64
    assert t["f8"].mask.tolist() == [False, True, False, False]
    assert np.isnan(t["f8"].data[2]) and t["f8"][0] == 1.5 and t["f8"][3] == -2.0
    assert isinstance(t["f4"], MaskedColumn) and t["f4"].dtype == np.float32
    assert t["f4"].mask.tolist() == [True, False, False, False] and np.isnan(t["f4"].data[3])
    assert type(t["plain"]) is Column and np.isnan(t["plain"][1])
    pd.DataFrame({"x": pd.array([0.5, None, 2.0], dtype="Float64")}).to_parquet(
        tmp_path / "pandas.parquet")
    x = read_parquet(tmp_path / "pandas.parquet")["x"]
    assert x.mask.tolist() == [False, True, False] and x.filled(-1.0).tolist() == [0.5, -1, 2]
    write_table(t, tmp_path / "back.parquet")
    for back in (read_parquet(tmp_path / "back.parquet"),
                 Table.read(tmp_path / "back.parquet", format="parquet")):
        _tables_equal(back, t)


def test_timezones_are_recorded_and_written_back(tmp_path, caplog):
    """A time-zone-aware timestamp column reads as times in UTC (numpy and astropy's Time
    have no zones), its zone in the column's meta ``timezone`` and said at INFO; a null
    time (NaT) is masked. Written back, the file holds the column in its zone again (pandas
    reads the same times as from the original file) and astromorph reads it as before."""
    import logging

    import pandas as pd

    when = pd.to_datetime(["2020-01-01T00:30:00", None, "2021-07-01T12:00:00"]).tz_localize(
        "Europe/Paris")
    pd.DataFrame({"when": when, "n": [1, 2, 3]}).to_parquet(tmp_path / "tz.parquet")
    with caplog.at_level(logging.INFO, logger="astromorph"):
        t = read_parquet(tmp_path / "tz.parquet")
    col = t["when"]
    assert isinstance(col, MaskedColumn) and col.dtype.kind == "M"
    assert col.mask.tolist() == [False, True, False]
    assert str(col[0]) == "2019-12-31T23:30:00.000000"  # UTC
    assert str(col[2]) == "2021-07-01T10:00:00.000000"
    assert col.info.meta["timezone"] == "Europe/Paris"
    said = [r.getMessage() for r in caplog.records if "Europe/Paris" in r.getMessage()]
    assert len(said) == 1 and "'when'" in said[0] and "UTC" in said[0]
    assert Time(col[0]).isot == "2019-12-31T23:30:00.000"
    write_table(t, tmp_path / "back.parquet")
    assert pq.read_schema(tmp_path / "back.parquet").field("when").type == pa.timestamp(
        "us", tz="Europe/Paris")
    frame = pd.read_parquet(tmp_path / "back.parquet")
    assert frame["when"][0] == when[0] and pd.isna(frame["when"][1]) \
        and frame["when"][2] == when[2]
    back = read_parquet(tmp_path / "back.parquet")
    _masks_and_values_equal(back["when"], col)
    assert back["when"].info.meta["timezone"] == "Europe/Paris"
    assert back["n"].tolist() == [1, 2, 3]


def test_naive_times_with_nulls_are_masked_and_written_back(tmp_path):
    """A null cell of a timestamp column without a zone (NaT in pandas) is masked, and
    datetime64 columns (masked or not) are written to Parquet as timestamps, read back
    equal; no zone is recorded for them."""
    import pandas as pd

    pd.DataFrame({"when": pd.to_datetime(["2020-01-01T00:00:00", None, "2021-02-03T04:05:06"]),
                  "full": pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-03"])}
                 ).to_parquet(tmp_path / "nat.parquet")
    t = read_parquet(tmp_path / "nat.parquet")
    assert isinstance(t["when"], MaskedColumn) and t["when"].mask.tolist() == [0, 1, 0]
    assert type(t["full"]) is Column and t["full"].dtype.kind == "M"
    assert "timezone" not in t["when"].info.meta
    write_table(t, tmp_path / "back.parquet")
    _tables_equal(read_parquet(tmp_path / "back.parquet"), t)
    assert pq.read_schema(tmp_path / "back.parquet").field("full").type == pa.timestamp("us")


def test_all_null_column_is_fully_masked(tmp_path):
    """A column of nothing but nulls (pandas writes an all-None column as pyarrow's null
    type; astropy reads it as an object column of None, which no format writes back) is a
    fully masked float64 column, which every format writes and reads back fully masked."""
    import pandas as pd

    pd.DataFrame({"ra": [1.0, 2.0, 3.0], "z": [None, None, None]}).to_parquet(
        tmp_path / "none.parquet")
    assert pq.read_schema(tmp_path / "none.parquet").field("z").type == pa.null()
    t = read_parquet(tmp_path / "none.parquet")
    assert isinstance(t["z"], MaskedColumn) and t["z"].dtype == np.float64
    assert t["z"].mask.tolist() == [True] * 3
    for ext in ("parquet", "ecsv", "fits"):
        write_table(t, tmp_path / f"back.{ext}")
        back = read_parquet(tmp_path / "back.parquet") if ext == "parquet" else \
            Table.read(tmp_path / f"back.{ext}")
        assert np.ma.getmaskarray(back["z"]).tolist() == [True] * 3  # (FITS: NaN, masked)
    pq.write_table(pa.table({"z": pa.array([], pa.null())}), tmp_path / "empty.parquet")
    assert read_parquet(tmp_path / "empty.parquet")["z"].dtype == np.float64


def test_masked_entries_round_trip_exactly(tmp_path):
    """astromorph writes a masked column as astropy does (its values, and its mask as a
    boolean column ``<name>.mask``, so that astropy's own reader reads it back: Parquet
    nulls in a text column it cannot read, in an integer one it reads as float64); a file
    pandas wrote with nulls of every kind, read, written and read again, has the same
    masks, values and types."""
    path = _pandas_nulls_file(tmp_path / "nulls.parquet")
    t = read_parquet(path)
    write_table(t, tmp_path / "back.parquet")
    names = pq.read_schema(tmp_path / "back.parquet").names
    assert "name.mask" in names and "ra.mask" in names
    for back in (read_parquet(tmp_path / "back.parquet"),
                 QTable.read(tmp_path / "back.parquet", format="parquet")):
        assert back.colnames == t.colnames
        _tables_equal(back, t)


@pytest.mark.parametrize("dtype", ["datetime64[D]", "datetime64[ms]", "datetime64[us]",
                                   "datetime64[ns]", "timedelta64[s]", "timedelta64[us]"])
def test_date_and_time_columns_written(tmp_path, dtype):
    """datetime64 and timedelta64 columns (astropy's writer has no type for them) are
    written as Parquet dates, timestamps and durations of their unit (nanoseconds
    included), masked or not, and read back equal, also by astropy."""
    values = np.array([1, 2, 3]).astype(dtype)
    t = Table({"m": MaskedColumn(values, mask=[0, 1, 0]), "p": values})
    write_table(t, tmp_path / "t.parquet")
    for back in (read_parquet(tmp_path / "t.parquet"),
                 Table.read(tmp_path / "t.parquet", format="parquet")):
        _tables_equal(back, t)


def test_seconds_timestamps_read_back_as_seconds(tmp_path):
    """Parquet has no timestamps of seconds (its units are ms, us and ns: pyarrow writes
    datetime64[s] as milliseconds, and reads them back so, apache/arrow#41382):
    read_parquet gives a datetime64[s] column written by write_table back as datetime64[s]
    (astropy's header records the dtype), masked or not, with a time zone or not;
    astropy's reader gives the same instants as datetime64[ms]. Seconds beyond the range
    of int64 milliseconds (about 292 million years) are an error naming the column, and
    nothing is written."""
    values = np.array(["1969-07-20T20:17:40", "2000-01-01", "2024-02-29T23:59:59"], "M8[s]")
    t = Table({"m": MaskedColumn(values, mask=[0, 0, 1], description="when"), "p": values,
               "z": Column(values, meta={"timezone": "Europe/Paris"})})
    t["m"][1] = np.datetime64("NaT")
    write_table(t, tmp_path / "t.parquet")
    assert pq.read_schema(tmp_path / "t.parquet").field("p").type == pa.timestamp("ms")
    back = read_parquet(tmp_path / "t.parquet")
    _tables_equal(back, t)
    assert back["m"].info.description == "when"
    assert back["z"].info.meta["timezone"] == "Europe/Paris"
    plain = Table.read(tmp_path / "t.parquet", format="parquet")
    assert plain["p"].dtype == np.dtype("M8[ms]")
    _masks_and_values_equal(plain["p"].astype("M8[s]"), t["p"])
    far = Table({"far": np.array([2**62, 0], "M8[s]")})
    with pytest.raises(InvalidArgumentError, match="far.*milliseconds"):
        write_table(far, tmp_path / "far.parquet")
    assert not (tmp_path / "far.parquet").exists()


@pytest.mark.parametrize("dtype", ["datetime64[D]", "datetime64[s]", "datetime64[ms]",
                                   "datetime64[us]", "datetime64[ns]", "timedelta64[s]",
                                   "timedelta64[us]"])
def test_nat_of_an_unmasked_column_stays_unmasked(tmp_path, dtype):
    """A NaT in a plain (unmasked) datetime64 or timedelta64 column is a value, as a NaN of
    a plain float column is: Parquet has no NaT, so the file holds a null (which pandas and
    astropy read as NaT), and astromorph's header key ``astromorph::unmasked_nat`` names the
    column, so that read_parquet gives it back as an unmasked NaT of a plain column (it gave
    a masked column, for every unit). A null of a column not so named (a file pandas wrote)
    is still masked, and a masked column keeps its mask."""
    values = np.array([1, 2, 3, 4]).astype(dtype)
    values[1] = np.datetime64("NaT") if dtype.startswith("datetime") else np.timedelta64("NaT")
    masked = MaskedColumn(values, mask=[0, 0, 1, 0])
    t = Table({"p": values, "m": masked, "f": [1.0, np.nan, 2.0, 3.0]})
    write_table(t, tmp_path / "t.parquet")
    back = read_parquet(tmp_path / "t.parquet")
    assert type(back["p"]) is Column and np.isnat(back["p"][1])
    assert isinstance(back["m"], MaskedColumn)
    _tables_equal(back, t)
    plain = Table.read(tmp_path / "t.parquet", format="parquet")
    assert type(plain["p"]) is Column and np.isnat(plain["p"][1])
    assert pq.read_table(tmp_path / "t.parquet").column("p").null_count == 1
    pq.write_table(pq.read_table(tmp_path / "t.parquet", columns=["p"]).replace_schema_metadata(),
                   tmp_path / "other.parquet")
    assert read_parquet(tmp_path / "other.parquet")["p"].mask.tolist() == [0, 1, 0, 0]


def _header_file_with_nulls(tmp_path, *, vectors):
    """A Parquet file with astropy's header (``table_meta_yaml`` and ``table::len::<name>``
    as astropy writes them) whose text, integer, float, time and duration columns hold a
    null each (as another tool writes them: astromorph's writer and astropy's write the
    mask of a masked column apart, as ``<name>.mask``), so that read_parquet converts them
    itself (`_arrow_column`); with ``vectors``, beside a vector column it reads in one piece.
    Returns the path and the table written (before its nulls)."""
    t = Table()
    if vectors:
        t["embedding"] = Column(np.arange(12, dtype=np.float32).reshape(4, 3), unit="pix",
                                description="vector")
    t["name"] = Column(["a", "bb", "c", "d"], dtype="U8", description="label")
    t["code"] = Column([b"x", b"yy", b"z", b"w"], dtype="S6", description="bytes")
    t["n"] = Column([1, 2, 3, 4], unit="km", description="count")
    t["flux"] = Column([1.0, 2.0, 3.0, 4.0], unit="Jy", description="flux",
                       format="{:.2f}")
    t["dt"] = Column(np.array([1, 2, 3, 4], "m8[s]"), unit="s", description="delay")
    t["when"] = Column(np.array([1, 2, 3, 4], "M8[ms]"), description="epoch")
    write_table(t, tmp_path / "astromorph.parquet")
    table = pq.read_table(tmp_path / "astromorph.parquet")
    keys = dict(table.schema.metadata)
    assert keys[b"table::len::name"] == b"8" and keys[b"table::len::code"] == b"6"
    del keys[b"astromorph::unmasked_nat"]  # (another tool's file: its nulls are masked)
    columns = []
    for name in table.column_names:
        values = table.column(name).to_pylist()
        if name != "embedding":
            values[2] = None
        columns.append(pa.array(values, type=table.schema.field(name).type))
    path = tmp_path / "nulls.parquet"
    pq.write_table(pa.Table.from_arrays(columns, schema=table.schema.with_metadata(keys)),
                   path)
    return path, t


@pytest.mark.parametrize("vectors", [False, True])
def test_columns_read_here_keep_the_header(tmp_path, vectors):
    """A column with a null cell that read_parquet converts itself gets the unit,
    description and format astropy's header records, as astropy's reader gives them (and a
    unit makes it a quantity, as in astropy's QTable), and a text column the width of its
    ``table::len::<name>`` key (astropy's too), not that of its longest value; each is
    masked where null."""
    from astromorph._cli_annotate import _read_catalogue

    path, written = _header_file_with_nulls(tmp_path, vectors=vectors)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = read_parquet(path)
    assert back.colnames == written.colnames
    for name in written.colnames:
        col, w = back[name], written[name]
        assert col.info.description == w.info.description, name
        assert col.info.format == w.info.format, name
        assert getattr(col, "unit", None) == w.unit, name
        assert col.dtype == (np.dtype(float) if name == "n" else w.dtype), name  # (QTable)
        assert isinstance(col, u.Quantity) == (w.unit is not None), name
        if name != "embedding":
            assert col.mask.tolist() == [False, False, True, False], name
    assert back["name"].dtype == np.dtype("U8") and back["code"].dtype == np.dtype("S6")
    assert back["name"].filled("?").tolist() == ["a", "bb", "?", "d"]
    # what astropy's reader gives for the columns it reads (a null text cell: TypeError)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        theirs = QTable.read(path, format="parquet",
                             include_names=[n for n in written.colnames if n != "name"])
    for name in theirs.colnames:
        assert back[name].info.description == theirs[name].info.description, name
        assert getattr(back[name], "unit", None) == getattr(theirs[name], "unit", None), name
        assert isinstance(back[name], u.Quantity) == isinstance(theirs[name], u.Quantity)
        assert back[name].dtype == theirs[name].dtype, name
    assert theirs["code"].dtype == np.dtype("S6")
    # the CLI reads it so
    assert _read_catalogue(str(path))["name"].dtype == np.dtype("U8")
    assert _read_catalogue(str(path))["flux"].unit == u.Jy


def test_duration_with_a_unit_reads_as_astropy_gives_it(tmp_path):
    """A timedelta64[s] column with unit 's' is a Quantity of dtype timedelta64[s] in
    astropy's QTable (its reader turns a column with a unit into a Quantity whatever its
    dtype): read_parquet gives the same, a MaskedQuantity where a cell is null (astropy:
    NaT), and a Quantity where none is."""
    path, written = _header_file_with_nulls(tmp_path, vectors=False)
    back = read_parquet(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        theirs = QTable.read(path, format="parquet", include_names=["dt"])
    assert type(theirs["dt"]) is u.Quantity and theirs["dt"].dtype == np.dtype("m8[s]")
    assert isinstance(back["dt"], u.Quantity) and back["dt"].unit == theirs["dt"].unit == u.s
    assert back["dt"].dtype == theirs["dt"].dtype and back["dt"].mask.tolist() == [0, 0, 1, 0]
    assert np.isnat(theirs["dt"].value[2])
    np.testing.assert_array_equal(back["dt"].unmasked.value[[0, 1, 3]],
                                  theirs["dt"].value[[0, 1, 3]])
    plain = read_parquet(tmp_path / "astromorph.parquet")  # (no null: as astropy)
    assert type(plain["dt"]) is u.Quantity and plain["dt"].dtype == np.dtype("m8[s]")
