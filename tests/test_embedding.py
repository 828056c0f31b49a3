"""The ``embedding`` model and the embedding tools (`astromorph.embeddings`).

* `SimilarityIndex`: exact search equals brute force (chunk boundaries,
  exclusions, unusable rows, k larger than the table); queries by row, sky
  position, image (array and file, through a tiny ONNX embedding model) and
  vector; result tables; galleries; approximate backends when installed;
* `LabelHead`: few-label logistic regression on synthetic blobs, tables with
  masked rows, persistence;
* `GaussianMixture` / `cluster_table`: BIC finds the number of synthetic
  blobs, cluster columns, maps;
* the ``similar``, ``cluster`` and ``classify`` commands;
* the shipped model: sha256 and card, L2-normalised output, torch/ONNX parity
  (skipped without torch or the checkpoint); the card's held-out precision@25
  and 5-cluster NMI reproduced from the GZ1 JPEGs (skipped without the data),
  its morphology comparison numbers equal to the morphology card's.
"""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.table import MaskedColumn, QTable, Table
import astropy.units as u

import astromorph
from conftest import assert_scores, shipped_torch_module, traced_peak
from astromorph import GaussianMixture, LabelHead, SimilarityIndex, cluster_table
from astromorph._io import write_table
from astromorph.cli import main
from astromorph.embeddings import embedding_map, plot_map
from astromorph.exceptions import InputError, InvalidArgumentError, OutputExistsError
from astromorph.preprocessing import _optical as opt

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / "models" / "embedding"
CHECKPOINT = REPO / "training" / "checkpoints" / "embedding" / "last.pt"
PCA = REPO / "training" / "checkpoints" / "embedding" / "pca.npz"

requires_model = pytest.mark.skipif(not (MODEL_DIR / "model.onnx").is_file(),
                                    reason="models/embedding not exported yet")


def unit_rows(n, d, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def blobs(n_per=80, k=4, d=32, spread=0.15, seed=0):
    """Unit vectors in ``k`` tight groups and their group labels."""
    rng = np.random.default_rng(seed)
    centres = unit_rows(k, d, seed + 1)
    x = np.concatenate([c + spread * rng.standard_normal((n_per, d)) / np.sqrt(d) * 4
                        for c in centres])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), \
        np.repeat(np.arange(k), n_per)


def nmi(a, b):
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    joint = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(joint, (ai, bi), 1)
    p = joint / joint.sum()
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    mi = np.sum(p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz]))
    h = lambda q: -np.sum(q[q > 0] * np.log(q[q > 0]))  # noqa: E731
    return mi / ((h(pa) + h(pb)) / 2)


# ------------------------------------------------------------------- tiny ONNX model
def tiny_embedding_onnx(path, dim=4, size=64, w=None):
    """ONNX graph: (N, 3, size, size) -> spatial means (N, 3) -> MatMul (N, dim) -> L2 norm
    (``w``: the (3, dim) weights, default fixed ones)."""
    import onnx
    from onnx import TensorProto, helper

    if w is None:
        w = np.array([[1.0, 0.2, -0.5, 0.3], [0.1, 1.0, 0.4, -0.2], [0.3, -0.4, 1.0, 0.6]],
                     np.float32)[:, :dim]
    w = np.asarray(w, np.float32)
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])
    out = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])
    nodes = [
        helper.make_node("ReduceMean", ["input", "axes"], ["mean"], keepdims=0),
        helper.make_node("Sub", ["mean", "half"], ["centred"]),
        helper.make_node("MatMul", ["centred", "w"], ["z"]),
        helper.make_node("LpNormalization", ["z"], ["embedding"], axis=1, p=2),
    ]
    inits = [helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3]),
             helper.make_tensor("half", TensorProto.FLOAT, [1], [0.3]),
             helper.make_tensor("w", TensorProto.FLOAT, list(w.shape), w.ravel().tolist())]
    graph = helper.make_graph(nodes, "tiny_embedding", [inp], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def tiny_embedding(tmp_path, monkeypatch):
    """Registry with one model ``tinyemb`` (optical input, 4-d embedding)."""
    pytest.importorskip("onnx")
    root = tmp_path / "models"
    register_tiny_embedding(root)
    monkeypatch.setenv("ASTROMORPH_MODELS_DIR", str(root))
    astromorph.clear_session_cache()
    yield "tinyemb"
    astromorph.clear_session_cache()


def register_tiny_embedding(root, name="tinyemb", *, version="0.0.1", dim=4, w=None,
                            variants=None):
    """A model folder ``root/name`` for `tiny_embedding_onnx` (``variants``: precision ->
    the weights of a variant file ``model_<precision>.onnx``)."""
    import hashlib

    d = root / name
    d.mkdir(parents=True)
    tiny_embedding_onnx(d / "model.onnx", dim=dim, w=w)
    card = {
        "name": name, "version": version, "task": "embedding", "summary": "test",
        "column_prefix": "emb",
        "input": {"name": "input", "shape": [3, 64, 64], "dtype": "float32", "family": "optical",
                  "single_band": "replicate",
                  "preprocessing": "astromorph.preprocessing.preprocess_optical",
                  "angular_size": {"kind": "petrosian",
                                   "stamp_size_per_petro_r90": float(opt.stamp_size_from_petrosian(1.0))},
                  "normalisation": "display values / 255"},
        "outputs": [{"name": "embedding", "kind": "embedding", "size": dim}],
        "training": {}, "metrics": {},
        "sha256": hashlib.sha256((d / "model.onnx").read_bytes()).hexdigest(),
    }
    for precision, weights in (variants or {}).items():
        file = d / f"model_{precision}.onnx"
        tiny_embedding_onnx(file, dim=dim, w=weights)
        card.setdefault("variants", {})[precision] = {
            "file": file.name, "sha256": hashlib.sha256(file.read_bytes()).hexdigest()}
    (d / "card.json").write_text(json.dumps(card))
    return d


def colour_cutout(seed, size=100):
    rng = np.random.default_rng(seed)
    base = rng.integers(20, 230, size=3)
    img = np.clip(base + rng.normal(0, 10, (size, size, 3)), 0, 255)
    return img.astype(np.uint8)


# ------------------------------------------------------------------------ exact search
@pytest.mark.parametrize("chunk", [63, 576, 1 << 24])  # 7, 64 and all rows per block
def test_exact_search_matches_brute_force(chunk):
    x = unit_rows(1000, 24)
    q = unit_rows(9, 24, seed=5)
    index = SimilarityIndex(x, chunk_elements=chunk)
    rows, sim = index.search(q, k=17)
    full = q @ x.T
    expect = np.argsort(-full, axis=1, kind="stable")[:, :17]
    np.testing.assert_array_equal(rows, expect)
    np.testing.assert_allclose(sim, np.take_along_axis(full, expect, 1), rtol=1e-5, atol=1e-6)
    assert np.all(np.diff(sim, axis=1) <= 1e-7)



def test_neighbours_and_similarities_do_not_depend_on_chunking():
    """BLAS's float32 dot product of a row depends on the block it is multiplied in
    (chunk_elements, the number of queries) by about 1 ulp, so duplicate vectors in
    different chunks got unequal similarities and came out of row order, and the same
    query gave other similarities for other chunk sizes. Similarities are now summed in
    one fixed order: rows and similarities are the same for every chunking."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    dups = np.sort(rng.choice(3000, 40, replace=False))
    x[dups] = x[dups[0]]
    q = np.vstack([x[dups[0]], rng.normal(size=(4, 64)).astype(np.float32)])
    ref_rows, ref_sim = SimilarityIndex(x).search(q[:1], k=50)
    assert ref_rows[0, :40].tolist() == dups.tolist()
    assert len(set(ref_sim[0, :40].tolist())) == 1
    for chunk in (1, 7, 100, 1000, 4097, 1 << 24):
        index = SimilarityIndex(x, chunk_elements=chunk)
        for n in (1, 5):
            for k in (10, 50):  # 10: the k-th among the 40 duplicates
                rows, sim = index.search(q[:n], k=k)
                np.testing.assert_array_equal(rows[:1], ref_rows[:, :k], err_msg=f"{chunk} {n}")
                np.testing.assert_array_equal(sim[:1], ref_sim[:, :k], err_msg=f"{chunk} {n}")
    exact = q[:1].astype(np.float64) @ x.T.astype(np.float64)  # still the cosine
    np.testing.assert_allclose(ref_sim[0], np.take_along_axis(exact[0], ref_rows[0], 0),
                               rtol=0, atol=1e-7)


@pytest.mark.parametrize("chunk", [3, 40, 1 << 24])  # 3, 40 and all rows per block
def test_tied_neighbours_come_in_row_order(chunk):
    """Duplicate vectors (equal similarities) are returned lowest row first, the same for
    any chunking, also where the k-th place falls among them."""
    x = unit_rows(60, 8)
    dups = [7, 13, 21, 22, 40, 51, 58]
    x[dups] = x[5]
    index = SimilarityIndex(x, chunk_elements=chunk)
    for k in (3, 8, 12):
        rows, sim = index.search(x[5], k=k)
        assert rows[0, :min(k, 8)].tolist() == [5, *dups][:k]
        rows, sim = index.search(np.stack([x[5], x[0]]), k=k, exclude=[[5], [0]])
        assert rows[0, :min(k, 7)].tolist() == dups[:k]


def test_exact_search_equals_a_brute_force_sort_of_near_duplicate_vectors():
    """Vectors equal or a few float32 ulps apart, which BLAS's float32 products round by
    about as much as they differ: for every chunking, with and without excluded rows, the
    exact backend returns the rows and similarities of a brute-force sort (float64 dot
    products rounded to float32, equal ones by row). Without the rounding margin of its
    candidate search, some queries found fewer rows than k above the k-th similarity and
    raised IndexError, others missed tied rows."""
    rng = np.random.default_rng(7)
    for trial in range(12):
        d = (8, 33, 64)[trial % 3]
        base = unit_rows(int(rng.integers(3, 10)), d, seed=trial)
        x = base[rng.integers(len(base), size=int(rng.integers(60, 200)))]
        # unit to 3e-7: kept as they are, not normalised again
        x = (x * (1 + rng.integers(-3, 4, size=(len(x), 1)) * np.float32(1e-7)))
        x = x.astype(np.float32)
        n = len(x)
        q = np.vstack([x[rng.integers(n, size=3)], unit_rows(2, d, seed=100 + trial)])
        k = int(rng.integers(2, 20))
        exclude = [rng.integers(n, size=3).tolist() for _ in q] if trial % 2 else None
        qn = q / np.sqrt(np.einsum("ij,ij->i", q, q))[:, None]  # as search() normalises
        full = np.sum(qn[:, None, :].astype(np.float64) * x[None].astype(np.float64),
                      axis=-1).astype(np.float32)
        if exclude is not None:
            for i, rows in enumerate(exclude):
                full[i, rows] = -np.inf
        expect = np.array([np.lexsort((np.arange(n), -f))[:k] for f in full])
        expect_sim = np.take_along_axis(full, expect, 1)
        expect[~np.isfinite(expect_sim)] = -1
        for chunk in (7, 64, 1000, 1 << 24):
            rows, sim = SimilarityIndex(x, chunk_elements=chunk).search(q, k=k,
                                                                        exclude=exclude)
            np.testing.assert_array_equal(rows, expect, err_msg=f"trial {trial}, {chunk}")
            np.testing.assert_array_equal(sim, np.where(np.isfinite(expect_sim),
                                                        np.clip(expect_sim, -1, 1),
                                                        expect_sim),
                                          err_msg=f"trial {trial}, {chunk}")


def test_many_queries_with_a_large_k_are_searched_in_bounded_blocks(monkeypatch):
    """The running top k of all queries (queries x k) is bounded by chunk_elements as the
    similarity blocks are: many queries with k near the number of rows are taken a few
    at a time, with the same result as a brute-force sort."""
    from astromorph.embeddings import _index

    sizes = []
    original = _index._topk

    def spy(sim, k, rows=None):
        sizes.append(sim.size)
        return original(sim, k, rows)

    monkeypatch.setattr(_index, "_topk", spy)
    x, q = unit_rows(200, 8), unit_rows(50, 8, seed=3)
    rows, sim = SimilarityIndex(x, chunk_elements=1000).search(q, k=150)
    assert max(sizes) <= 2 * 1000
    full = q @ x.T
    np.testing.assert_allclose(sim, -np.sort(-full, axis=1)[:, :150], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.take_along_axis(full, rows, 1), sim, rtol=1e-5, atol=1e-6)


def test_index_normalises_with_one_copy_and_leaves_the_input_alone():
    """Vectors that are not unit vectors are normalised into one copy (100,000 x 256 used
    to take two: +200 MB at peak for 100 MB of vectors); the caller's array is unchanged."""
    import tracemalloc

    x = unit_rows(20000, 32) * np.float32(3)
    x[5] = 0.0
    x[6] = np.nan
    before = x.copy()
    tracemalloc.start()
    try:
        index = SimilarityIndex(x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * x.nbytes
    np.testing.assert_array_equal(x, before)
    assert not index.valid[[5, 6]].any() and not index.vectors[[5, 6]].any()
    np.testing.assert_allclose(index.vectors[7], before[7] / 3, rtol=1e-6)

def test_search_normalises_excludes_and_skips_unusable_rows():
    x = unit_rows(300, 8) * np.random.default_rng(1).uniform(0.5, 3, (300, 1)).astype(np.float32)
    x[10] = np.nan
    x[11] = 0.0
    masked = MaskedColumn(x, mask=np.zeros_like(x, bool))
    masked.mask[12] = True
    index = SimilarityIndex(masked, chunk_elements=50)
    assert index.valid.sum() == 297
    rows, sim = index.search(x[20] * 7.0, k=5, exclude=[[20]])
    assert 20 not in rows[0] and not set(rows[0]) & {10, 11, 12}
    with np.errstate(invalid="ignore"):
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    ref = np.nan_to_num(xn @ xn[20], nan=-np.inf)
    ref[[10, 11, 12, 20]] = -np.inf
    np.testing.assert_array_equal(rows[0], np.argsort(-ref)[:5])
    # k larger than the usable rows: padded with -1 / -inf
    small = SimilarityIndex(np.array([[1.0, 0.0], [0.0, 1.0], [np.nan, 1.0]], np.float32))
    rows, sim = small.search([1.0, 0.1], k=4)
    assert rows[0].tolist() == [0, 1, -1, -1] and np.isneginf(sim[0, 2:]).all()


def test_search_rejects_bad_queries():
    index = SimilarityIndex(unit_rows(10, 4))
    with pytest.raises(InvalidArgumentError):
        index.search(np.zeros(4), k=3)
    queries = unit_rows(8, 4)
    queries[2], queries[6] = 0.0, np.nan
    with pytest.raises(InvalidArgumentError, match=r"2 of 8 are not \(query 2, 6\)"):
        index.search(queries, k=3)
    with pytest.raises(InvalidArgumentError):
        index.search(np.ones(5), k=3)
    with pytest.raises(InvalidArgumentError):
        index.search(np.ones(4), k=0)
    with pytest.raises(InvalidArgumentError):
        SimilarityIndex(unit_rows(10, 4), backend="nope")
    # never a silently changed request: fractional k, rows out of range (they used to wrap)
    with pytest.raises(InvalidArgumentError, match="k must be a whole number"):
        index.search(np.ones(4), k=2.7)
    with pytest.raises(InvalidArgumentError, match=r"out of range"):
        index.search(np.ones(4), k=3, exclude=[[0, 15]])
    assert index.search(np.ones(4), k=3.0)[0].shape == (1, 3)


def catalogue(n=200, d=16, seed=0):
    rng = np.random.default_rng(seed)
    t = Table()
    t["id"] = np.arange(n)
    t["ra"] = rng.uniform(150, 151, n) * u.deg
    t["dec"] = rng.uniform(2, 3, n) * u.deg
    t["embedding"] = unit_rows(n, d, seed)
    return t


def test_query_keeps_every_table_column_apart_from_its_own(tmp_path):
    """The query result's own columns (rank, row, similarity, distance) and the table's: a
    table column 'rank' became 'table_rank' and replaced the table's own 'table_rank' (lost),
    and 'Distance' was copied as it is, beside 'distance' (one column for FITS, whose TTYPE
    ignores case: the result could not be written to .fits). Each now gets 'table_' until
    its name is free, in any case."""
    from astromorph._io import write_table

    t = catalogue(n=30)
    t["table_rank"] = np.arange(30) + 100
    t["rank"] = np.arange(30) + 200
    t["Distance"] = np.arange(30) + 300
    res = SimilarityIndex.from_table(t).query(row=7, k=5)
    rows = np.asarray(res["row"])
    np.testing.assert_array_equal(res["table_rank"], rows + 100)
    np.testing.assert_array_equal(res["table_table_rank"], rows + 200)
    np.testing.assert_array_equal(res["table_Distance"], rows + 300)
    assert res["rank"].tolist() == [1, 2, 3, 4, 5] and "Distance" not in res.colnames
    write_table(res, tmp_path / "res.fits")


def test_query_by_row_position_and_vector():
    t = catalogue()
    index = SimilarityIndex.from_table(t)
    res = index.query(row=7, k=10)
    assert res.colnames[:4] == ["rank", "row", "similarity", "distance"]
    assert "embedding" not in res.colnames and "ra" in res.colnames
    assert res["rank"].tolist() == list(range(1, 11)) and 7 not in res["row"]
    np.testing.assert_array_equal(res["id"], res["row"])
    np.testing.assert_allclose(res["distance"], 1 - res["similarity"], atol=1e-6)
    brute = np.argsort(-(t["embedding"] @ t["embedding"][7]))
    assert res["row"].tolist() == [r for r in brute if r != 7][:10]
    assert res.meta["query_row"] == 7 and res.meta["query_kind"] == "row"
    with_self = index.query(row=7, k=3, include_query=True)
    assert with_self["row"][0] == 7 and with_self["similarity"][0] == pytest.approx(1.0)
    # position: nearest row, with separation, limit and (ra, dec) tuples
    target = SkyCoord(t["ra"].quantity[42] + 0.5 * u.arcsec, t["dec"].quantity[42])
    res = index.query(position=target, k=5)
    assert res.meta["query_row"] == 42 and 42 not in res["row"]
    assert res.meta["query_separation_arcsec"] == pytest.approx(
        0.5 * np.cos(np.deg2rad(t["dec"][42])), rel=1e-3)
    res2 = index.query(position=(float(target.ra.deg), float(target.dec.deg)), k=5)
    assert res2["row"].tolist() == res["row"].tolist()
    with pytest.raises(InputError, match="max_separation"):
        index.query(position=(10.0, -40.0), k=5, max_separation=5 * u.arcsec)
    # vector
    res = index.query(vector=t["embedding"][3], k=1)
    assert res["row"][0] == 3
    with pytest.raises(InvalidArgumentError):
        index.query(row=1, vector=t["embedding"][3])
    with pytest.raises(InvalidArgumentError):
        index.query(row=10_000)
    with pytest.raises(InvalidArgumentError, match="table"):
        SimilarityIndex(t["embedding"]).query(position=(150.5, 2.5))
    # positions that are no position, limits that are no limit, several vectors, row 3.7
    for bad in [(np.nan, 2.5), (150.0, 95.0), SkyCoord([150, 151] * u.deg, [2, 3] * u.deg)]:
        with pytest.raises(InvalidArgumentError):
            index.query(position=bad, k=2)
    # an RA beyond a full turn is a typing error, not RA 40 (SkyCoord would wrap 400 to 40)
    for ra in (400.0, -400.0):
        with pytest.raises(InvalidArgumentError, match="full turn"):
            index.query(position=(ra, 2.5), k=2)
    assert index.query(position=(-209.5, 2.5), k=2).meta["query_row"] == \
        index.query(position=(150.5, 2.5), k=2).meta["query_row"]  # negative RA: as wrapped
    sexagesimal = (target.ra.to_string(u.hour), target.dec.to_string(u.deg))
    assert index.query(position=sexagesimal, k=5)["row"].tolist() == res2["row"].tolist()
    for limit in (-1, np.nan, "x"):
        with pytest.raises(InvalidArgumentError, match="max_separation"):
            index.query(position=target, k=2, max_separation=limit)
    with pytest.raises(InvalidArgumentError, match="one"):
        index.query(vector=t["embedding"][:2], k=2)
    with pytest.raises(InvalidArgumentError, match="row must be a whole number"):
        index.query(row=3.7)


def test_position_that_is_not_finite_is_named_in_one_line(tmp_path, capsys):
    """A NaN position was refused with SkyCoord's two-line repr ('<SkyCoord (ICRS): (ra, dec)
    in deg\\n    (nan, 2.)> is not finite'), in Python and on the command line; now one line
    naming the values given."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    from astromorph.cli import main

    t = catalogue(20)
    index = SimilarityIndex.from_table(t)
    for bad, words in [((np.nan, 2.0), "ra, dec = nan, 2.0 deg is not a position"),
                       ((1.0, np.inf), "ra, dec = 1.0, inf deg is not a position"),
                       (SkyCoord(np.nan * u.deg, 2 * u.deg),
                        "ra, dec = nan, 2.0 deg (icrs) is not a position"),
                       (SkyCoord(l=np.nan * u.deg, b=2 * u.deg, frame="galactic"),
                        "l, b = nan, 2.0 deg (galactic) is not a position")]:
        with pytest.raises(InvalidArgumentError) as caught:
            index.query(position=bad, k=2)
        assert str(caught.value).startswith(words) and "\n" not in str(caught.value)
    src = tmp_path / "emb.ecsv"
    t.write(src)
    assert main(["similar", str(src), "--ra", "nan", "--dec", "2", "-k", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("astromorph: error: ra, dec = nan, 2.0 deg is not a position"), err
    assert err.count("\n") == 1


def test_swapped_position_columns_are_suggested(tmp_path):
    """--ra-col dec --dec-col ra: a Dec column with values beyond +-90 degrees left their
    rows without a position without a word (or, none within, refused it as having no
    value in degrees); where the RA column is all within [-90, 90] the message now says the
    columns may be swapped and how to give them the other way round."""
    from astromorph.exceptions import AmbiguousInputWarning

    rng = np.random.default_rng(0)
    ra = np.array([150.0, 151, 152, 10, 200, 300])
    dec = np.array([2.0, 3, -5, 40, 10, 20])
    t = Table({"embedding": rng.random((6, 4)), "ra": ra, "dec": dec})
    index = SimilarityIndex.from_table(t)
    swap = r"swapped.*ra_col='ra', dec_col='dec'"
    with pytest.warns(AmbiguousInputWarning, match=r"Dec column 'ra' has 5 values beyond "
                      r"\+-90 degrees \(first 150;.*RA column 'dec'.*" + swap):
        index.query(position=(2.0, 10.0), k=2, ra_col="dec", dec_col="ra")
    src = tmp_path / "pos.ecsv"
    t.write(src)
    with pytest.warns(AmbiguousInputWarning, match=swap + r" \(--ra-col/--dec-col\)"):
        assert main(["similar", str(src), "--ra", "2", "--dec", "10", "-k", "2",
                     "--ra-col", "dec", "--dec-col", "ra"]) == 0
    # a Dec column without a value within [-90, 90]: refused, saying so too
    t["ra"][3] = 100.0
    with pytest.raises(InputError, match=r"no value of it is one.*" + swap):
        SimilarityIndex.from_table(t).query(position=(2.0, 10.0), k=2, ra_col="dec",
                                            dec_col="ra")
    t["ra"].unit = t["dec"].unit = u.deg  # in degrees: every row without a position
    with pytest.warns(AmbiguousInputWarning, match="6 values beyond.*" + swap), \
            pytest.raises(InputError, match="no row of the table has both a position"):
        SimilarityIndex.from_table(t).query(position=(2.0, 10.0), k=2, ra_col="dec",
                                            dec_col="ra")
    # no word where the RA column goes beyond 90 (a Dec sentinel), nor for usable columns
    t = Table({"embedding": rng.random((6, 4)), "ra": ra, "dec": dec})
    t["dec"][0] = -999.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", AmbiguousInputWarning)
        SimilarityIndex.from_table(t).query(position=(150.0, 3.0), k=2)
        t["ra"] = ra / 4  # all within [-90, 90], but so is the Dec column
        SimilarityIndex.from_table(t).query(position=(50.0, 3.0), k=2)


def test_query_by_a_masked_vector_is_refused():
    """A masked vector is no vector (as a masked row of the index is none): the row of a
    masked embedding column (``table["embedding"][i]``, whose masked values still hold
    numbers) was queried with those hidden numbers, returning neighbours of a vector the
    table says it has not; it is now refused, naming the masked values."""
    t = Table(catalogue(40), masked=True)
    t["embedding"].mask[7] = True  # e.g. a flagged row, masked by hand
    index = SimilarityIndex.from_table(t)
    partly = np.ma.masked_array(np.ones(16), mask=[True] + [False] * 15)
    # np.ma.masked: a masked cell of an object column (a Parquet list column with a None)
    for vector in (t["embedding"][7], partly, np.ma.masked):
        with pytest.raises(InvalidArgumentError, match="masked"):
            index.query(vector=vector, k=3)
    # an unmasked row of that column is its vector
    assert index.query(vector=t["embedding"][3], k=1)["row"][0] == 3


def test_query_result_keeps_the_table_class_units_and_provenance():
    """A QTable's neighbours come back as a QTable (Quantity columns stay Quantity, SkyCoord
    columns survive), every new column is described, and the meta says which model made
    the vectors."""
    t = QTable(catalogue(30))
    t["coord"] = SkyCoord(t["ra"], t["dec"])
    t.meta.update(astromorph_model="embedding", astromorph_model_sha256="abc", note="mine")
    res = SimilarityIndex.from_table(t).query(row=3, k=4)
    assert isinstance(res, QTable)
    assert isinstance(res["ra"], u.Quantity) and res["ra"].unit == u.deg
    assert isinstance(res["coord"], SkyCoord) and len(res["coord"]) == 4
    assert all(res[c].info.description for c in ("rank", "row", "similarity", "distance"))
    assert res.meta["astromorph_model"] == "embedding"
    assert res.meta["astromorph_model_sha256"] == "abc" and "note" not in res.meta
    assert isinstance(SimilarityIndex.from_table(catalogue(30)).query(row=3, k=2), Table)


def test_query_row_without_embedding_and_missing_column():
    t = catalogue(20)
    t["embedding"] = MaskedColumn(t["embedding"], mask=np.zeros(t["embedding"].shape, bool))
    t["embedding"].mask[4] = True
    index = SimilarityIndex.from_table(t)
    with pytest.raises(InputError, match="no usable embedding"):
        index.query(row=4)
    assert 4 not in index.query(row=0, k=19)["row"]
    with pytest.raises(InputError, match="no 'vec' column"):
        SimilarityIndex.from_table(t, column="vec")


def test_query_by_image_array_and_file(tiny_embedding, tmp_path):
    from PIL import Image

    model = astromorph.load_model(tiny_embedding)
    images = np.stack([colour_cutout(s) for s in range(30)])
    from astromorph._adapters import RawStamps, prepare

    x, _ = prepare(model, RawStamps("colour", images))
    emb = model.predict(x)["embedding"]
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    t = Table({"id": np.arange(30), "embedding": emb})
    index = SimilarityIndex.from_table(t)
    res = index.query(image=images[12], k=3, model=tiny_embedding)
    assert res["row"][0] == 12 and res["similarity"][0] == pytest.approx(1.0, abs=1e-5)
    assert res.meta["query_kind"] == "image"
    # network-ready stamp and a JPEG-free PNG file
    assert index.query(image=x[5], k=1, model=model)["row"][0] == 5
    png = tmp_path / "q.png"
    Image.fromarray(images[20]).save(png)
    res = index.query(image=png, k=2, model=tiny_embedding)
    assert res["row"][0] == 20 and res.meta["query_image"] == str(png)
    with pytest.raises(InputError):
        index.query(image=np.zeros((5, 5, 5)), model=tiny_embedding)



def test_embedding_a_file_leaves_the_warning_filters_of_other_threads_alone(
        tiny_embedding, tmp_path, monkeypatch):
    """embed_image (query(image=) with a file) silenced warnings with a
    `warnings.catch_warnings` block that did not take turns with astromorph's others (a
    reader thread, Dask's threaded partitions): entered while another thread's block ran and
    left after it, it put back, for good, the filters that block had set. The blocks are
    ordered with events; the timeout only bounds how long a regression takes to show
    (embed_image's block entering while the other runs)."""
    import threading
    import warnings

    from PIL import Image

    from astromorph import _predict
    from astromorph._warnings import catch_warnings

    Image.fromarray(colour_cutout(3)).save(tmp_path / "q.png")
    real = _predict.predict_files
    inside, other_inside = threading.Event(), threading.Event()

    def predict_files(*args, **kwargs):  # runs inside embed_image's block
        inside.set()
        return real(*args, **kwargs)

    monkeypatch.setattr(_predict, "predict_files", predict_files)

    def other():
        with catch_warnings():
            warnings.filterwarnings("ignore", message="the other thread's filter")
            other_inside.set()
            inside.wait(5)

    index = SimilarityIndex(np.eye(4))
    before = list(warnings.filters)
    results = []
    entering = threading.Thread(target=other)
    entering.start()
    assert other_inside.wait(60)
    embedding = threading.Thread(target=lambda: results.append(
        index.embed_image(tmp_path / "q.png", model=tiny_embedding)))
    embedding.start()
    for t in (entering, embedding):
        t.join(60)
    assert results and results[0].shape == (4,)
    assert warnings.filters == before


def test_query_image_is_one_file_not_a_folder_or_a_pattern(tiny_embedding, tmp_path):
    """embed_image (and query(image=)) handed its path to predict_files, which expands
    folders and glob patterns: a folder or a pattern was silently embedded as the first
    picture it held. One image is one file: a folder is refused and a pattern names no
    file, as gallery(query_image=) says for the same path."""
    from PIL import Image

    from astromorph.exceptions import InputNotFoundError

    folder = tmp_path / "pictures"
    folder.mkdir()
    for s in range(2):
        Image.fromarray(colour_cutout(s)).save(folder / f"{s}.png")
    index = SimilarityIndex(np.eye(4))
    assert index.embed_image(folder / "0.png", model=tiny_embedding).shape == (4,)
    for call in (index.embed_image, lambda p, model: index.query(image=p, model=model)):
        with pytest.raises(InputError, match=rf"image '{folder}' is a directory, not a file"):
            call(folder, model=tiny_embedding)
        with pytest.raises(InputNotFoundError, match=r"image '.*\*\.png' does not exist"):
            call(str(folder / "*.png"), model=tiny_embedding)

def test_gallery_png(tmp_path):
    pytest.importorskip("matplotlib")
    t = catalogue(40)
    pictures = np.stack([colour_cutout(s, 32) for s in range(40)])
    index = SimilarityIndex.from_table(t)
    res = index.query(row=3, k=7)
    out = index.gallery(res, tmp_path / "g.png", images=pictures)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # network stamps, single bands and a function also work
    index.gallery(res, tmp_path / "g2.png", images=lambda rows: [np.random.rand(3, 8, 8) for _ in rows])
    index.gallery(res, tmp_path / "g3.png", images=np.random.rand(40, 16, 16))
    with pytest.raises(InvalidArgumentError, match="images="):
        index.gallery(res, tmp_path / "g4.png")
    with pytest.raises(InvalidArgumentError, match="one per indexed row"):
        index.gallery(res, tmp_path / "g4.png", images=pictures[:3])
    before = out.read_bytes()  # an existing picture is kept unless overwrite=True
    with pytest.raises(OutputExistsError):
        index.gallery(res, out, images=pictures[::-1])
    assert out.read_bytes() == before
    index.gallery(res, out, images=pictures[::-1], overwrite=True)


def _shown_pictures(monkeypatch):
    """The pictures a gallery draws, in tile order (query first), as display_image gets them."""
    import astromorph.embeddings._plots as plots

    shown = []
    real = plots.display_image

    def record(image):
        shown.append(np.asarray(image))
        return real(image)

    monkeypatch.setattr(plots, "display_image", record)
    return shown


def test_gallery_warns_once_for_rows_without_a_picture(tmp_path, monkeypatch):
    """A row whose file was missing or unreadable became a "no image" tile without a word;
    now one UnusableInputWarning per gallery names how many, which rows, their paths and why."""
    pytest.importorskip("matplotlib")
    import warnings

    from PIL import Image

    from astromorph.exceptions import UnusableInputWarning

    t = catalogue(6)
    paths = []
    for i in range(6):
        p = tmp_path / f"p{i}.png"
        Image.fromarray(colour_cutout(i, 32)).save(p)
        paths.append(str(p))
    paths[2] = str(tmp_path / "gone.png")  # missing
    (tmp_path / "bad.png").write_bytes(b"not a picture at all")
    paths[4] = str(tmp_path / "bad.png")  # unreadable
    t["source"] = paths
    index = SimilarityIndex.from_table(t)
    res = index.query(row=0, k=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index.gallery(res, tmp_path / "g.png")
    ours = [w for w in caught if issubclass(w.category, UnusableInputWarning)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    text = str(ours[0].message)
    assert "2 of 6" in text and "row 2" in text and "row 4" in text
    assert "gone.png" in text and "does not exist" in text
    assert "bad.png" in text and "cannot read image" in text
    # every picture found: no warning
    t["source"] = [str(tmp_path / f"p{i}.png") for i in (0, 1, 3, 3, 5, 5)]
    index = SimilarityIndex.from_table(t)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnusableInputWarning)
        index.gallery(index.query(row=0, k=5), tmp_path / "g2.png")


def test_gallery_marks_and_names_pictures_without_a_finite_pixel(tmp_path, monkeypatch):
    """An images= picture whose pixels were all NaN was drawn as a blank (transparent) tile
    without a word; it is drawn as "no image", as a missing file is, and the one
    UnusableInputWarning names its row."""
    pytest.importorskip("matplotlib")
    from astromorph.exceptions import UnusableInputWarning

    t = catalogue(12)
    index = SimilarityIndex.from_table(t)
    res = index.query(row=3, k=4)
    blank = [int(res["row"][1]), int(res["row"][3])]
    for pictures in (np.random.default_rng(0).random((12, 3, 8, 8)),
                     np.random.default_rng(0).random((12, 8, 8, 3))):
        pictures[blank] = np.nan
        for images in (pictures, lambda rows, p=pictures: [p[r] for r in rows]):
            shown = _shown_pictures(monkeypatch)
            with pytest.warns(UnusableInputWarning, match="2 of 5 gallery tiles") as caught:
                index.gallery(res, tmp_path / "g.png", images=images, overwrite=True)
            text = str(caught[0].message)
            assert f"row {blank[0]}" in text and f"row {blank[1]}" in text
            assert "no finite pixel" in text
            assert len(shown) == 3  # the query and 2 neighbours; the blank ones say "no image"
    # a query picture without a finite pixel: named too
    good = np.random.default_rng(1).random((12, 8, 8))
    with pytest.warns(UnusableInputWarning, match="1 of 5.*the query: query_image= .*no finite"):
        index.gallery(res, tmp_path / "g.png", images=good, overwrite=True,
                      query_image=np.full((8, 8), np.nan))


def test_gallery_of_a_row_query_draws_query_image(tmp_path, monkeypatch):
    """query_image= was ignored for a row (or position) query: the query tile showed the
    row's own picture. A picture given for the query is the one drawn."""
    pytest.importorskip("matplotlib")
    t = catalogue(10)
    pictures = np.stack([np.full((8, 8, 3), s * 20, np.uint8) for s in range(10)])
    index = SimilarityIndex.from_table(t)
    res = index.query(row=3, k=2)
    mine = np.full((8, 8, 3), 255, np.uint8)
    shown = _shown_pictures(monkeypatch)
    index.gallery(res, tmp_path / "g.png", images=pictures, query_image=mine)
    assert len(shown) == 3 and np.array_equal(shown[0], mine)
    assert np.array_equal(shown[1], pictures[res["row"][0]])
    shown.clear()  # without query_image, the row's own picture
    index.gallery(res, tmp_path / "g2.png", images=pictures)
    assert np.array_equal(shown[0], pictures[3])


def test_gallery_refuses_to_write_over_its_query_image(tmp_path):
    """gallery(res, "q.png", query_image="q.png", overwrite=True) read the query picture,
    then replaced it with the gallery; the picture is an input: refused before any work."""
    pytest.importorskip("matplotlib")
    from PIL import Image

    t = catalogue(10)
    pictures = np.stack([np.full((8, 8, 3), s * 20, np.uint8) for s in range(10)])
    index = SimilarityIndex.from_table(t)
    query = tmp_path / "q.png"
    Image.fromarray(colour_cutout(1)).save(query)
    before = query.read_bytes()
    with pytest.raises(InvalidArgumentError, match="q.png.*one of the inputs"):
        index.gallery(index.query(row=3, k=2), query, images=pictures, query_image=query,
                      overwrite=True)
    assert query.read_bytes() == before


def test_gallery_shows_the_stamp_of_a_row_from_a_stack(tmp_path, monkeypatch):
    """Rows of a FITS stack of stamps have sources "stack.fits[i]": the gallery drew stamp 0
    of the file for every one of them."""
    pytest.importorskip("matplotlib")
    from astropy.io import fits

    cube = np.stack([np.full((3, 16, 16), float(i + 1), np.float32) for i in range(4)])
    cube += np.random.default_rng(0).normal(0, 0.01, cube.shape).astype(np.float32)
    fits.PrimaryHDU(cube).writeto(tmp_path / "stack.fits")
    t = catalogue(4)
    t["source"] = [f"{tmp_path / 'stack.fits'}[{i}]" for i in range(4)]
    index = SimilarityIndex.from_table(t)
    res = index.query(row=2, k=3)
    shown = _shown_pictures(monkeypatch)
    index.gallery(res, tmp_path / "g.png")
    assert [float(np.median(s)) for s in shown] == pytest.approx(
        [3.0] + [r + 1.0 for r in res["row"]], abs=0.1)


def test_image_query_refuses_a_model_other_than_the_tables(tiny_embedding, tmp_path):
    """query(image=, model=) embedded the image with whatever model it was given and
    compared it with vectors the table says another model (or version) made: same length,
    meaningless similarities. Now a ProvenanceMismatchError names both."""
    from PIL import Image

    from astromorph.exceptions import ProvenanceMismatchError

    for s in range(4):
        Image.fromarray(colour_cutout(s)).save(tmp_path / f"p{s}.png")
    t = astromorph.predict_files(tiny_embedding, sorted(tmp_path.glob("p*.png")),
                                 progress=False)
    query = tmp_path / "p1.png"
    assert SimilarityIndex.from_table(t).query(image=query, k=1,
                                               model=tiny_embedding)["row"][0] == 1
    other = t.copy()
    other.meta["astromorph_model_version"] = "9.9"
    other.meta["astromorph_model_sha256"] = "0" * 64
    index = SimilarityIndex.from_table(other)
    with pytest.raises(ProvenanceMismatchError, match=r"tinyemb 9\.9 \(sha256 0000.*tinyemb 0\.0\.1"):
        index.query(image=query, k=1, model=tiny_embedding)
    with pytest.raises(ProvenanceMismatchError):
        index.embed_image(query, model=tiny_embedding)
    # the table's column itself, with or without table=, says the same: it was not checked
    for index in (SimilarityIndex(other["embedding"]),
                  SimilarityIndex(other["embedding"], table=other)):
        with pytest.raises(ProvenanceMismatchError, match="tinyemb 9.9"):
            index.query(image=query, k=1, model=tiny_embedding)
    # vectors that do not say where they come from: nothing to check
    assert SimilarityIndex(np.asarray(t["embedding"])).query(
        image=query, k=1, model=tiny_embedding)["row"][0] == 1


def _tiny_registry_with_others(tmp_path):
    """Beside ``tinyemb``: ``embedding`` (4-d like it, other weights: the shipped model's
    name), ``tinyemb3`` (3-d) and an ``int8`` variant of ``tinyemb`` (other weights)."""
    root = tmp_path / "models"
    other = [[0.2, -1.0, 0.5, 0.1], [1.0, 0.3, -0.2, 0.8], [-0.4, 0.5, 0.2, 1.0]]
    register_tiny_embedding(root, "embedding", version="1.0", w=other)
    register_tiny_embedding(root, "tinyemb3", dim=3)
    import shutil

    shutil.rmtree(root / "tinyemb")
    register_tiny_embedding(root, variants={"int8": other})
    astromorph.clear_session_cache()


def test_image_query_embeds_with_the_model_that_made_the_table(tiny_embedding, tmp_path,
                                                                monkeypatch, capsys):
    """An image query without model= (`similar --image` without -m) embedded the image with
    the shipped ``embedding`` model whatever model made the table: a table of a custom
    model failed ("no shipped model named 'embedding'", exit 2), and a table of another
    model of the same length was refused only when its meta said so. The default is now
    the model (and variant) the table's provenance names; one of another version, or not
    installed, is refused naming both; a table that does not say gets the shipped
    ``embedding`` with a MissingProvenanceWarning; row and position queries load none."""
    from PIL import Image

    from astromorph.exceptions import (MissingProvenanceWarning, ModelNotFoundError,
                                       ProvenanceMismatchError)

    for s in range(6):
        Image.fromarray(colour_cutout(s)).save(tmp_path / f"g{s:02d}.png")
    query = tmp_path / "g03.png"
    emb = tmp_path / "e.fits"
    assert main(["predict", tiny_embedding, str(tmp_path / "g*.png"), "-o", str(emb),
                 "--no-progress"]) == 0
    # the reported case: a table of a custom model, no -m
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingProvenanceWarning)
        assert main(["similar", str(emb), "--image", str(query), "-k", "2",
                     "-o", str(tmp_path / "q.ecsv")]) == 0
    assert Table.read(tmp_path / "q.ecsv")["row"][0] == 3
    t = Table.read(emb)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingProvenanceWarning)
        for index in (SimilarityIndex.from_table(t), SimilarityIndex(t["embedding"])):
            res = index.query(image=query, k=1)
            assert res["row"][0] == 3 and res["similarity"][0] == pytest.approx(1, abs=1e-5)

    # a registry that also holds an ``embedding`` of the same length: still tinyemb's space
    _tiny_registry_with_others(tmp_path)
    assert SimilarityIndex.from_table(t).query(image=query, k=1)["row"][0] == 3
    with pytest.raises(ProvenanceMismatchError, match=r"tinyemb 0\.0\.1.*embedding 1\.0"):
        SimilarityIndex.from_table(t).query(image=query, k=1, model="embedding")
    assert main(["similar", str(emb), "--image", str(query), "-m", "embedding"]) == 2
    err = capsys.readouterr().err
    assert "tinyemb 0.0.1" in err and "embedding 1.0" in err
    # a model of another length, named for vectors that do not say: both lengths named,
    # before the model runs (it used to fail in search with the lengths alone)
    bare = Table({"embedding": np.asarray(t["embedding"])})
    with pytest.raises(InvalidArgumentError, match=r"tinyemb3 0\.0\.1.*3-d.*4-d"):
        SimilarityIndex.from_table(bare).query(image=query, k=1, model="tinyemb3")
    # a table that does not say: the shipped name, with a warning
    with pytest.warns(MissingProvenanceWarning, match="'embedding'"):
        assert SimilarityIndex.from_table(bare).query(image=query, k=1).meta["query_kind"] \
            == "image"
    # the variant that made the table (its astromorph_model_precision) is the default
    t8 = astromorph.predict_files(tiny_embedding, sorted(tmp_path.glob("g*.png")),
                                  precision="int8", progress=False)
    assert t8.meta["astromorph_model_precision"] == "int8"
    res = SimilarityIndex.from_table(t8).query(image=query, k=1)
    assert res["row"][0] == 3 and res["similarity"][0] == pytest.approx(1, abs=1e-5)
    with pytest.raises(ProvenanceMismatchError):  # the float32 file: other vectors
        SimilarityIndex.from_table(t8).query(image=query, k=1, model=tiny_embedding)
    # the table's model installed in another version, or not installed: refused, naming it
    old = t.copy()
    old.meta.update(astromorph_model_version="0.0.0", astromorph_model_sha256="0" * 64)
    with pytest.raises(ProvenanceMismatchError, match=r"tinyemb 0\.0\.0.*tinyemb 0\.0\.1"):
        SimilarityIndex.from_table(old).query(image=query, k=1)
    gone = t.copy()
    gone.meta["astromorph_model"] = "goneemb"
    with pytest.raises(ModelNotFoundError, match=r"goneemb 0\.0\.1.*model="):
        SimilarityIndex.from_table(gone).query(image=query, k=1)
    write_table(gone, tmp_path / "gone.fits")
    assert main(["similar", str(tmp_path / "gone.fits"), "--image", str(query)]) == 2
    assert "goneemb" in capsys.readouterr().err
    # row and position queries run no model: none can be loaded, and none is needed
    from astromorph import _model

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(_model.Model, "__init__", refuse)
    gone["ra"], gone["dec"] = np.arange(6.0), np.zeros(6)
    write_table(gone, tmp_path / "gone_pos.fits")
    assert main(["similar", str(tmp_path / "gone.fits"), "--query", "1", "-k", "2"]) == 0
    assert main(["similar", str(tmp_path / "gone_pos.fits"), "--ra", "2", "--dec", "0",
                 "-k", "2"]) == 0
    assert SimilarityIndex.from_table(gone).query(position=(2, 0), k=1)["row"][0] != 2


def test_gallery_refuses_a_result_of_another_index(tmp_path):
    """A result that is not a query result of this index (rows beyond its end, not a table)
    crashed with IndexError / AttributeError after the output had been checked."""
    pytest.importorskip("matplotlib")
    index = SimilarityIndex.from_table(catalogue(5))
    pictures = np.zeros((5, 8, 8, 3), np.uint8)
    other = SimilarityIndex.from_table(catalogue(50)).query(row=40, k=3)
    with pytest.raises(InvalidArgumentError, match=r"not a query result of this index: rows \[.*40\] are out of range: rows are 0 to 4"):
        index.gallery(other, tmp_path / "g.png", images=pictures)
    with pytest.raises(astromorph.exceptions.InvalidArgumentTypeError, match="query result"):
        index.gallery({"row": [1]}, tmp_path / "g.png", images=pictures)
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("backend", ["faiss", "hnswlib"])
def test_approximate_backend(backend):
    pytest.importorskip(backend)
    x = unit_rows(3000, 32)
    exact = SimilarityIndex(x)
    approx = SimilarityIndex(x, backend=backend)
    q = unit_rows(20, 32, seed=9)
    e_rows, _ = exact.search(q, k=10)
    a_rows, a_sim = approx.search(q, k=10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(a_rows, e_rows)])
    assert recall > 0.9
    rows, _ = approx.search(x[5], k=5, exclude=[[5]])
    assert 5 not in rows[0]


def test_auto_backend_falls_back_to_exact(monkeypatch):
    import astromorph.embeddings._index as idx

    monkeypatch.setattr(idx, "_installed", lambda name: False)
    assert SimilarityIndex(unit_rows(5, 3), backend="auto").backend == "exact"
    with pytest.raises(astromorph.exceptions.MissingDependencyError):
        SimilarityIndex(unit_rows(5, 3), backend="faiss")


# ------------------------------------------------------------------------- label head
def test_label_head_on_blobs_and_table():
    x, y = blobs(n_per=60, k=3, d=16)
    names = np.array(["disc", "edge", "round"])[y]
    rng = np.random.default_rng(0)
    few = rng.choice(len(x), 24, replace=False)
    head = LabelHead().fit(x[few], names[few])
    assert head.classes_.tolist() == ["disc", "edge", "round"]
    assert np.mean(head.predict(x) == names) > 0.95
    p = head.predict_proba(x)
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-9)
    assert head.C_ in head.cv_scores_
    t = Table({"embedding": MaskedColumn(x, mask=np.zeros(x.shape, bool))})
    t["embedding"].mask[0] = True
    out = head.annotate(t, prefix="m")
    assert {"m_p_disc", "m_p_edge", "m_p_round", "m_label"} <= set(out.colnames)
    assert out["m_label"].mask[0] and not out["m_label"].mask[1:].any()
    assert "m_label" not in t.colnames
    again = LabelHead.from_dict(json.loads(json.dumps(head.to_dict())))
    np.testing.assert_allclose(again.predict_proba(x), p)


def test_label_head_options_and_errors():
    x, y = blobs(n_per=40, k=2, d=8)
    head = LabelHead(C=1.0, class_weight="balanced").fit(x, y)
    assert head.C_ == 1.0 and head.cv_scores_ == {}
    with pytest.raises(InvalidArgumentError):
        LabelHead().fit(x, np.zeros(len(x)))
    with pytest.raises(InvalidArgumentError):
        LabelHead().fit(x, y[:-1])
    with pytest.raises(InvalidArgumentError):
        LabelHead().predict(x)
    with pytest.raises(InvalidArgumentError):
        LabelHead(class_weight="auto")
    # a missing label is never a class of its own
    names = np.array(["a", "b"])[y]
    for missing in (MaskedColumn(names, mask=np.arange(len(y)) == 5),
                    np.where(np.arange(len(y)) == 5, np.nan, y.astype(float)),
                    np.where(np.arange(len(y)) == 5, "", names),
                    [None if i == 5 else v for i, v in enumerate(names)]):
        with pytest.raises(InvalidArgumentError, match=r"rows 5\)"):
            LabelHead(C=1.0).fit(x, missing)
    with pytest.raises(InvalidArgumentError, match="fitted on 8"):
        head.predict(np.ones((2, 5)))
    with pytest.raises(InvalidArgumentError, match="positive number"):
        LabelHead(C="1")
    with pytest.raises(InvalidArgumentError, match="not a LabelHead state"):
        LabelHead.from_dict({})


# ------------------------------------------------------------------------- clustering
@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_gmm_bic_is_the_formula_written_out(covariance_type):
    """``bic_[k]`` is -2 log L + p ln n of the fitted mixture: log L summed over the rows
    with scipy's normal densities in the PCA space, p = (k - 1) weights + k d means +
    k d (d + 1) / 2 (full) or k d (diag) covariance parameters, n the rows fitted."""
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    x, _ = blobs(n_per=60, k=3, d=16, seed=4)
    for k in (2, 3):
        gmm = GaussianMixture(k, covariance_type=covariance_type, n_pca=5).fit(x)
        z = (x.astype(np.float64) - gmm.mean_) @ gmm.components_.T
        n, d = z.shape
        covs = gmm.covariances_ if covariance_type == "full" else \
            [np.diag(c) for c in gmm.covariances_]
        logp = np.stack([np.log(w) + multivariate_normal(m, c).logpdf(z)
                         for w, m, c in zip(gmm.weights_, gmm.means_, covs)], axis=1)
        cov_params = k * d * (d + 1) // 2 if covariance_type == "full" else k * d
        p = (k - 1) + k * d + cov_params
        expect = -2 * logsumexp(logp, axis=1).sum() + p * np.log(n)
        assert list(gmm.bic_) == [k]
        np.testing.assert_allclose(gmm.bic_[k], expect, rtol=1e-10)


def test_gmm_bic_of_a_subset_sweep_counts_the_subset_rows(monkeypatch):
    """With the BIC sweep on max_select_rows of the rows, ``bic_[k]`` is -2 log L + p ln m
    of the best of the ``n_init`` fits of k components to those m rows (not ln of all the
    rows fitted), and the chosen k is then fitted on all rows starting from that fit."""
    from astromorph.embeddings import _mixture

    x, _ = blobs(n_per=150, k=3, d=16)
    runs = []
    em = _mixture.GaussianMixture._em

    def recording(self, z, k, rng, start=None):
        out = em(self, z, k, rng, start=start)
        runs.append((len(z), k, start, out))
        return out

    monkeypatch.setattr(_mixture.GaussianMixture, "_em", recording)
    gmm = GaussianMixture(k_range=range(2, 5), max_select_rows=200, n_init=2, n_pca=4).fit(x)
    d = 4
    for k in (2, 3, 4):
        fits = [out for m, kk, _, out in runs if m == 200 and kk == k]
        assert len(fits) == 2
        ll = max(out[1] for out in fits)
        p = (k - 1) + k * d + k * d * (d + 1) // 2
        np.testing.assert_allclose(gmm.bic_[k], -2 * ll + p * np.log(200), rtol=1e-12)
    best = max((out for m, kk, _, out in runs if m == 200 and kk == gmm.n_components_),
               key=lambda out: out[1])
    m, k, start, _ = runs[-1]
    assert (m, k) == (450, gmm.n_components_)
    assert start is not None and all(np.array_equal(a, b) for a, b in zip(start, best[0]))


def test_gmm_predict_gives_minus_one_for_rows_without_a_vector():
    """predict: the most probable component of each usable row, -1 for a row with a NaN,
    an infinite value or a mask (their predict_proba rows are NaN), not component 0."""
    x, _ = blobs(n_per=40, k=2, d=8)
    gmm = GaussianMixture(2, n_pca=4).fit(x)
    y = np.ma.masked_array(x[:6].copy(), mask=False)
    y[1, 3], y[2, 0] = np.nan, np.inf
    y[4] = np.ma.masked
    labels = gmm.predict(y)
    assert labels[[1, 2, 4]].tolist() == [-1, -1, -1]
    ok = [0, 3, 5]
    assert labels[ok].tolist() == np.argmax(gmm.predict_proba(x[ok]), axis=1).tolist()


def test_gmm_pca_equals_an_svd():
    """The mixture's PCA: ``components_`` are the leading right singular vectors of the
    centred rows (numpy's SVD), each signed so that its largest coordinate is positive,
    and ``explained_variance_ratio_`` the share of the squared singular values they
    hold."""
    x, _ = blobs(n_per=80, k=3, d=12, seed=2)
    gmm = GaussianMixture(2, n_pca=4).fit(x)
    xc = x.astype(np.float64) - x.astype(np.float64).mean(axis=0)
    _, sv, vt = np.linalg.svd(xc, full_matrices=False)
    axes = vt[:4] * np.sign(vt[np.arange(4), np.argmax(np.abs(vt[:4]), axis=1)])[:, None]
    np.testing.assert_allclose(gmm.components_, axes, atol=1e-9)
    assert (gmm.components_[np.arange(4), np.argmax(np.abs(gmm.components_), axis=1)]
            > 0).all()
    np.testing.assert_allclose(gmm.explained_variance_ratio_,
                               np.sum(sv[:4] ** 2) / np.sum(sv ** 2), rtol=1e-12)


def test_gmm_kmeans_plus_plus_starts_find_a_small_distant_cluster():
    """EM starts from k-means++ centres (each drawn with probability proportional to the
    squared distance to the nearest centre drawn): three blobs of 300 rows and one of 8
    rows twice as far are recovered as the four clusters from one start (n_init=1) for
    19 of 20 seeds. From uniformly drawn centres (the distance weighting dropped), 14."""
    rng = np.random.default_rng(0)
    d = 8
    parts = [rng.normal(size=(300, d)) * 0.05 + np.eye(d)[i] for i in range(3)]
    parts.append(rng.normal(size=(8, d)) * 0.05 + 2 * np.eye(d)[3])
    x = np.vstack(parts).astype(np.float32)
    truth = np.repeat(np.arange(4), [300, 300, 300, 8])
    recovered = 0
    for seed in range(20):
        lab = GaussianMixture(4, n_init=1, n_pca=None, seed=seed,
                              covariance_type="diag").fit(x).predict(x)
        recovered += len(set(lab)) == 4 and all(len(set(lab[truth == c])) == 1
                                                for c in range(4))
    assert recovered >= 18


def test_gmm_bic_finds_blobs():
    x, y = blobs(n_per=120, k=4, d=32, seed=3)
    gmm = GaussianMixture(k_range=range(2, 8), n_pca=8).fit(x)
    assert gmm.n_components_ == 4
    assert min(gmm.bic_, key=gmm.bic_.get) == 4
    pred = gmm.predict(x)
    assert nmi(pred, y) > 0.95
    p = gmm.predict_proba(x)
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-9)
    fixed = GaussianMixture(3, covariance_type="diag", n_pca=None).fit(x)
    assert fixed.n_components_ == 3 and fixed.predict_proba(x).shape == (len(x), 3)


def test_cluster_table_unknown_keyword_names_it_before_the_fit(monkeypatch):
    """cluster_table(k_max=6) raised Python's "GaussianMixture.__init__() got an unexpected
    keyword argument 'k_max'", naming a function the caller did not call; now astromorph's
    InvalidArgumentTypeError (a TypeError) names cluster_table, the keyword, the keywords it
    takes and, for a near miss, the one meant; before the table is read."""
    from astromorph.embeddings import _mixture
    from astromorph.exceptions import InvalidArgumentTypeError

    t = Table({"embedding": blobs(n_per=10, k=2, d=4)[0]})
    monkeypatch.setattr(_mixture, "table_embeddings", lambda *a, **k: 1 / 0)  # no work
    with pytest.raises(InvalidArgumentTypeError, match=r"^cluster_table\(\) got an unexpected "
                       r"keyword argument 'k_max' \(it also takes: .*k_range.*n_pca") as caught:
        cluster_table(t, k_max=6)
    assert isinstance(caught.value, TypeError) and "GaussianMixture" not in str(caught.value)
    with pytest.raises(InvalidArgumentTypeError, match=r"'n_componets'; did you mean "
                       r"'n_components'\?"):
        cluster_table(t, n_componets=3)
    with pytest.raises(InvalidArgumentTypeError, match=r"'covariance'; did you mean "
                       r"'covariance_type'\?"):
        cluster_table(t, covariance="diag")


def test_cluster_table_columns_and_masked_rows():
    x, y = blobs(n_per=50, k=3, d=16, seed=4)
    x[0] = np.nan
    t = Table({"id": np.arange(len(x)), "embedding": x})
    out, gmm = cluster_table(t, n_components=3, n_pca=6)
    assert out["cluster"].mask[0] and out["cluster_prob"].mask[0]
    assert set(np.unique(out["cluster"][1:])) == {0, 1, 2}
    assert np.all((out["cluster_prob"][1:] > 0.3) & (out["cluster_prob"][1:] <= 1))
    assert out.meta["cluster_n_components"] == 3
    assert nmi(np.asarray(out["cluster"][1:]), y[1:]) > 0.95
    # the BIC choice stops at the clusters the rows can support; a fixed number does not
    capped = GaussianMixture(k_range=range(2, 50), n_pca=4).fit(x[1:21])
    assert max(capped.bic_) == 10 and min(capped.bic_) == 2
    with pytest.raises(InvalidArgumentError, match="20 usable rows are too few for 11 clusters"):
        GaussianMixture(11).fit(x[1:21])
    with pytest.raises(InvalidArgumentError, match="at least 4 needed"):
        GaussianMixture().fit(x[1:4])
    for kwargs in ({"k_range": range(2, 2)}, {"n_pca": 0}, {"n_pca": -5}, {"n_init": 0}):
        with pytest.raises(InvalidArgumentError):
            GaussianMixture(**kwargs)
    with pytest.raises(InputError, match="all the same vector"):  # e.g. blank stamps
        GaussianMixture(2).fit(np.ones((20, 8)))


def test_kmeans_start_takes_memory_of_the_distances_not_of_every_difference():
    """The k-means++ start of the mixture formed an (N, K, D) array of differences when
    N * K < 4e6 (up to 512 MB); its memory is now that of the (N, K) distances (and of the
    rows), and the distances, so the labels of a seed, are the same to the last bit."""
    import tracemalloc

    from astromorph.embeddings._mixture import _squared_distances

    rng = np.random.default_rng(0)
    n, k, d = 10_000, 16, 64
    z = rng.normal(size=(n, d))
    centres = z[:k] + 0.1
    np.testing.assert_array_equal(_squared_distances(z, centres),
                                  ((z[:, None, :] - centres[None]) ** 2).sum(-1))
    gmm = GaussianMixture(k)
    tracemalloc.start()
    try:
        resp = gmm._kmeans_pp(z, k, np.random.default_rng(1), iters=2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert resp.shape == (n, k) and np.all(resp.sum(axis=1) == 1)
    # a few copies of the rows and of the distances; (N, K, D) would be 82 MB
    assert peak < 3 * z.nbytes + 4 * n * k * 8 + 8 * 2 ** 20, peak


def _mixture_problem(covariance_type, n=50, k=3, d=5, seed=0):
    """Rows, responsibilities and mixture parameters for the E- and M-step tests."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d)) * rng.uniform(0.5, 3, d) + 2.0
    resp = rng.dirichlet(np.ones(k), size=n)
    weights = rng.dirichlet(np.ones(k))
    means = rng.normal(size=(k, d)) * 2
    if covariance_type == "diag":
        covs = rng.uniform(0.2, 4, (k, d))
    else:
        a = rng.normal(size=(k, d, d))
        covs = a @ a.transpose(0, 2, 1) + 0.5 * np.eye(d)
    return z, resp, weights, means, covs


@pytest.mark.parametrize("block_elements", [None, 2 * 3 * 5])  # one block; 2 rows a block
@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_mixture_e_and_m_steps_equal_a_reference(covariance_type, block_elements,
                                                 monkeypatch):
    """The E-step (log densities) and M-step (weights, means, covariances) of every
    component, computed all at once a block of rows at a time, equal a loop over the
    components with scipy's densities and explicit weighted sums (a last block shorter
    than the others included: 51 rows, 2 a block)."""
    from scipy.stats import multivariate_normal

    from astromorph.embeddings import _mixture

    if block_elements is not None:
        monkeypatch.setattr(_mixture, "_COMPONENT_BLOCK_ELEMENTS", block_elements)
    z, resp, weights, means, covs = _mixture_problem(covariance_type, n=51)
    k, d = means.shape
    gmm = GaussianMixture(k, covariance_type=covariance_type)
    full = [np.diag(c) for c in covs] if covariance_type == "diag" else covs
    expected = np.stack([np.log(weights[j]) + multivariate_normal(means[j], full[j]).logpdf(z)
                         for j in range(k)], axis=1)
    np.testing.assert_allclose(gmm._log_prob(z, weights, means, covs), expected, rtol=1e-12,
                               atol=1e-12)
    reg = 0.01
    w, m, c = gmm._m_step(z, resp, reg)
    nk = resp.sum(axis=0)
    np.testing.assert_allclose(w, nk / len(z), rtol=1e-9)
    ref_means = np.stack([np.sum(resp[:, j, None] * z, axis=0) / nk[j] for j in range(k)])
    np.testing.assert_allclose(m, ref_means, rtol=1e-9)
    ref_covs = np.stack([sum(resp[i, j] * np.outer(z[i] - ref_means[j], z[i] - ref_means[j])
                             for i in range(len(z))) / nk[j] + reg * np.eye(d)
                         for j in range(k)])
    if covariance_type == "diag":
        ref_covs = np.diagonal(ref_covs, axis1=1, axis2=2)
    np.testing.assert_allclose(c, ref_covs, rtol=1e-9, atol=1e-12)


def test_mixture_fit_and_predictions_run_on_one_blas_thread(monkeypatch):
    """The EM of the mixture and its predictions are small matrix products (n_pca
    columns): a multi-threaded BLAS made them many times slower on busy cores. They run
    on one thread, and leave the thread count as they found it."""
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas_threads():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info()
                if i["user_api"] == "blas"]

    if not blas_threads():
        pytest.skip("no BLAS library that threadpoolctl can control")
    import importlib

    from astromorph import _blas

    importlib.import_module("scipy.linalg")  # its BLAS loaded, then seen by a new controller

    monkeypatch.setitem(_blas._STATE, "controller", None)
    seen = []
    log_prob = GaussianMixture._log_prob
    m_step = GaussianMixture._m_step

    def recording(method):
        def wrapper(*args, **kwargs):
            seen.append(set(blas_threads()))
            return method(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(GaussianMixture, "_log_prob", recording(log_prob))
    monkeypatch.setattr(GaussianMixture, "_m_step", recording(m_step))
    x, _ = blobs(n_per=60, k=3, d=16, seed=5)
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        gmm = GaussianMixture(k_range=range(2, 4), n_pca=4, max_select_rows=100).fit(x)
        gmm.predict_proba(x)
        assert set(blas_threads()) == {2}
    assert seen and all(s == {1} for s in seen), seen


def test_maps(tmp_path):
    pytest.importorskip("matplotlib")
    x, y = blobs(n_per=40, k=3, d=16)
    coords, method = embedding_map(x, method="tsne")
    assert coords.shape == (120, 2) and method == "tsne"
    # t-SNE keeps the blobs apart: nearest 2-d neighbour shares the blob
    d2 = ((coords[:, None] - coords[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    assert np.mean(y[d2.argmin(1)] == y) > 0.95
    coords, rows = plot_map(x, tmp_path / "m.png", labels=y, method="pca", max_points=50)
    assert coords.shape == (50, 2) and len(rows) == 50
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(OutputExistsError):  # checked before any work
        plot_map(x, tmp_path / "m.png", method="pca")
    plot_map(x, tmp_path / "m.png", method="pca", overwrite=True)
    with pytest.raises(InvalidArgumentError, match="labels has 3 entries"):
        plot_map(x, tmp_path / "m2.png", labels=y[:3], method="pca")
    with pytest.raises(InputError, match="at least 3 rows"):
        plot_map(x[:1], tmp_path / "m2.png", method="pca")


def test_plot_map_leaves_out_rows_without_a_label(tmp_path, monkeypatch):
    """Masked labels and None are left out of the map (with the rows whose vectors are not
    finite); NaN, 0 and empty strings are labels like any other."""
    pytest.importorskip("matplotlib")
    x, _ = blobs(n_per=10, k=2, d=8)
    x[3] = np.nan
    labels = np.ma.masked_array(np.arange(20) % 3, mask=np.arange(20) % 5 == 0)
    _, rows = plot_map(x, tmp_path / "m.png", labels=labels, method="pca")
    assert rows.tolist() == [r for r in range(20) if r % 5 and r != 3]
    names = np.array(["a", None, "", "b"] * 5, dtype=object)
    _, rows = plot_map(x, tmp_path / "m.png", labels=names, method="pca", overwrite=True)
    assert rows.tolist() == [r for r in range(20) if r % 4 != 1 and r != 3]
    # NaN is one category (it was one legend entry per NaN row, each "nan (0)", its points
    # never drawn)
    import matplotlib.figure

    legends = []
    save = matplotlib.figure.Figure.savefig

    def savefig(fig, *args, **kwargs):
        legends.append([t.get_text() for t in fig.axes[0].get_legend().get_texts()])
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    _, rows = plot_map(x, tmp_path / "m.png", labels=np.where(np.arange(20) % 2, np.nan, 1.0),
                       method="pca", overwrite=True)
    assert rows.tolist() == [r for r in range(20) if r != 3]
    assert legends == [["1.0 (10)", "nan (9)"]]



def test_plots_leave_the_users_matplotlib_state_alone(tmp_path):
    """Drawing must not switch the user's backend (it used to force Agg, which closes an
    interactive session's windows) nor leave figures registered with pyplot."""
    mpl = pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    before = mpl.get_backend()
    try:
        plt.switch_backend("svg")  # a non-Agg backend the user chose
        user_fig = plt.figure()
        x, y = blobs(n_per=10, k=2, d=8)
        plot_map(x, tmp_path / "m.png", labels=y, method="pca")
        assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"
        assert mpl.get_backend() == "svg"
        assert plt.get_fignums() == [user_fig.number]
    finally:
        plt.close("all")
        plt.switch_backend(before)

def _same_table(a, b):
    """``a`` and ``b`` hold the same columns, values and meta."""
    assert a.colnames == b.colnames and dict(a.meta) == dict(b.meta)
    for name in a.colnames:
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]))


def test_embedding_tools_never_overwrite_columns_silently(monkeypatch):
    """LabelHead.annotate, GaussianMixture.annotate and cluster_table follow annotate's rule:
    on_conflict='error' (default) refuses, naming the column; 'suffix' adds _2; 'replace'."""
    x, y = blobs(n_per=30, k=3, d=8, seed=5)
    names = np.array(["a", "b", "c"])[y]
    head = LabelHead(C=1.0).fit(x, names)
    t = Table({"embedding": x, "m_label": names, "cluster": np.full(len(x), 7)},
              meta={"cluster_n_components": 99})
    before = t.copy()
    with pytest.raises(InputError, match="'m_label'"):
        head.annotate(t, prefix="m")
    _same_table(t, before)
    out = head.annotate(t, prefix="m", on_conflict="suffix")
    assert out["m_label"].tolist() == names.tolist()  # the user's column, kept
    # the run's columns share one suffix
    assert np.mean(np.asarray(out["m_label_2"]) == names) > 0.95 and "m_p_a_2" in out.colnames
    # what made them, in meta (flat keys that FITS keeps), the user's table untouched
    assert out.meta["m_label_2_classes"] == "a,b,c" and out.meta["m_label_2_C"] == 1.0
    assert out.meta["m_label_2_input"] == "embedding" and "m_label_classes" not in out.meta
    out = head.annotate(t, prefix="m", on_conflict="replace")
    assert "m_label_2" not in out.colnames and isinstance(out["m_label"], MaskedColumn)
    assert np.mean(np.asarray(out["m_label"]) == names) > 0.95
    _same_table(t, before)
    with pytest.raises(InvalidArgumentError, match="on_conflict"):
        head.annotate(t, prefix="m", on_conflict="overwrite")

    gmm = GaussianMixture(3, n_pca=4).fit(x)
    with pytest.raises(InputError, match="'cluster'"):
        gmm.annotate(t)
    fit = GaussianMixture.fit
    with monkeypatch.context() as m:  # cluster_table refuses before fitting
        m.setattr(GaussianMixture, "fit", lambda *a: pytest.fail("fitted before refusing"))
        with pytest.raises(InputError, match="'cluster'"):
            cluster_table(t, n_components=3)
        with pytest.raises(InvalidArgumentError, match="on_conflict"):
            cluster_table(t, n_components=3, on_conflict="overwrite")
    assert GaussianMixture.fit is fit
    _same_table(t, before)
    out, _ = cluster_table(t, n_components=3, n_pca=4, on_conflict="suffix")
    assert out["cluster"].tolist() == [7] * len(x) and out.meta["cluster_n_components"] == 99
    assert {"cluster_2", "cluster_prob_2"} <= set(out.colnames)
    assert out.meta["cluster_2_n_components"] == 3
    assert nmi(np.asarray(out["cluster_2"]), y) > 0.95
    out = gmm.annotate(t, on_conflict="replace")
    assert "cluster_2" not in out.colnames and out.meta["cluster_n_components"] == 3
    assert nmi(np.asarray(out["cluster"]), y) > 0.95
    _same_table(t, before)


# ------------------------------------------------------------------------- command line
def test_cli_cluster_prints_every_row(tmp_path, capsys):
    """Without -o the table is printed, every row of it (`astromorph cluster ... > out.txt`,
    a pipe): a table of more than 100 rows printed 57 rows and '...' in the middle."""
    t = catalogue(120, d=16)
    t["embedding"] = blobs(n_per=40, k=3, d=16)[0]
    t.write(tmp_path / "emb.ecsv")
    capsys.readouterr()
    assert main(["cluster", str(tmp_path / "emb.ecsv"), "-k", "3", "--pca", "4", "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(k for k, line in enumerate(lines) if line.startswith("---"))
    assert len(lines) - header - 1 == 120 and not any("..." in line for line in lines)


def test_cli_similar_cluster_classify(tmp_path, capsys):
    t = catalogue(120, d=16)
    x, y = blobs(n_per=40, k=3, d=16)
    t["embedding"] = x
    t["label"] = np.where(np.arange(120) % 6 == 0, np.array(["a", "b", "c"])[y], "")
    src = tmp_path / "emb.ecsv"
    t.write(src)
    out = tmp_path / "nn.ecsv"
    assert main(["similar", str(src), "--query", "5", "-k", "8", "-o", str(out)]) == 0
    res = Table.read(out)
    assert len(res) == 8 and 5 not in res["row"] and res.meta["query_row"] == 5
    assert main(["similar", str(src), "--query", "5", "-k", "8", "-o", str(out)]) == 2  # exists
    assert main(["similar", str(src), "--ra", str(t["ra"][9]), "--dec",
                 str(t["dec"][9]), "-k", "3"]) == 0
    assert "query: row 9" in capsys.readouterr().err
    assert main(["similar", str(src), "-k", "3"]) == 2  # no query
    cl = tmp_path / "cl.ecsv"
    assert main(["cluster", str(src), "-o", str(cl), "--k-max", "6", "--pca", "6"]) == 0
    clustered = Table.read(cl)
    assert nmi(np.asarray(clustered["cluster"]), y) > 0.95
    assert main(["cluster", str(src), "-k", "3", "-o", str(tmp_path / "c3.ecsv"),
                 "--map", str(tmp_path / "map.png"), "--map-method", "pca"]) == 0
    assert (tmp_path / "map.png").exists()
    # a missing output folder fails before anything is written
    assert main(["cluster", str(src), "-k", "3", "-o", str(tmp_path / "c4.ecsv"),
                 "--map", str(tmp_path / "nodir" / "map.png")]) == 2
    assert "nodir" in capsys.readouterr().err and not (tmp_path / "c4.ecsv").exists()
    # NaN labels are unlabelled rows, not a class 'nan'
    t["number"] = np.where(np.arange(120) % 6 == 0, y.astype(float), np.nan)
    t.write(tmp_path / "num.ecsv")
    assert main(["classify", str(tmp_path / "num.ecsv"), "--labels", "number", "-C", "1"]) == 0
    assert "classes [0.0, 1.0, 2.0]" in capsys.readouterr().err
    lab = tmp_path / "lab.ecsv"
    assert main(["classify", str(src), "--labels", "label", "-o", str(lab)]) == 0
    classified = Table.read(lab)
    assert np.mean(np.asarray(classified["head_label"]) == np.array(["a", "b", "c"])[y]) > 0.95
    # new columns that exist already: refused (exit 2, naming them), unless --on-conflict
    capsys.readouterr()
    assert main(["classify", str(lab), "--labels", "label", "-o", str(tmp_path / "x.ecsv")]) == 2
    assert "'head_label'" in capsys.readouterr().err and not (tmp_path / "x.ecsv").exists()
    assert main(["classify", str(lab), "--labels", "label", "-o", str(tmp_path / "x.ecsv"),
                 "--on-conflict", "suffix"]) == 0
    again = Table.read(tmp_path / "x.ecsv")
    np.testing.assert_array_equal(again["head_label"], classified["head_label"])
    assert "head_label_2" in again.colnames and "head_p_a_2" in again.colnames
    assert main(["cluster", str(cl), "-k", "3", "-o", str(tmp_path / "c5.ecsv")]) == 2
    assert "'cluster'" in capsys.readouterr().err and not (tmp_path / "c5.ecsv").exists()
    assert main(["cluster", str(cl), "-k", "3", "-o", str(tmp_path / "c5.ecsv"),
                 "--on-conflict", "suffix", "--map", str(tmp_path / "map5.png"),
                 "--map-method", "pca"]) == 0
    assert "3 clusters; members" in capsys.readouterr().err
    again = Table.read(tmp_path / "c5.ecsv")
    np.testing.assert_array_equal(again["cluster"], clustered["cluster"])
    assert nmi(np.asarray(again["cluster_2"]), y) > 0.95
    assert main(["cluster", str(cl), "-k", "3", "-o", str(tmp_path / "c6.ecsv"),
                 "--on-conflict", "replace"]) == 0
    assert "cluster_2" not in Table.read(tmp_path / "c6.ecsv").colnames


def test_cli_similar_gallery_from_files(tiny_embedding, tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    for s in range(12):
        Image.fromarray(colour_cutout(s)).save(tmp_path / f"g{s:02d}.png")
    table = tmp_path / "emb.ecsv"
    assert main(["predict", tiny_embedding, str(tmp_path / "*.png"), "-o", str(table),
                 "--no-progress"]) == 0
    png = tmp_path / "gallery.png"
    assert main(["similar", str(table), "--query", "0", "-k", "5", "--gallery", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["similar", str(table), "--image", str(tmp_path / "g03.png"), "-k", "2",
                 "--model", tiny_embedding, "-o", str(tmp_path / "q.ecsv")]) == 0
    assert Table.read(tmp_path / "q.ecsv")["row"][0] == 3
    # the image is embedded as predict/annotate run their models (they had these options,
    # similar had none): the same neighbours, and a variant the card lacks is refused
    assert main(["similar", str(table), "--image", str(tmp_path / "g03.png"), "-k", "2",
                 "--model", tiny_embedding, "--providers", "cpu", "--threads", "1",
                 "-o", str(tmp_path / "q1.ecsv")]) == 0
    assert list(Table.read(tmp_path / "q1.ecsv")["row"]) == \
        list(Table.read(tmp_path / "q.ecsv")["row"])
    assert main(["similar", str(table), "--image", str(tmp_path / "g03.png"),
                 "--model", tiny_embedding, "--precision", "int8"]) == 2


# ------------------------------------------------------------------------ shipped model
@requires_model
def test_card_quotes_the_shipped_morphology_numbers():
    """The card sets its probe beside the ``morphology`` model's test numbers; those are
    recomputed from the data by test_morphology_model.py, so here they must be the
    morphology card's, for the morphology file that is shipped (its sha256 in the report)."""
    m = json.loads((MODEL_DIR / "card.json").read_text())["metrics"]["linear_probe_200_labels"]
    morph_card = json.loads((MODEL_DIR.parent / "morphology" / "card.json").read_text())
    assert m["morphology_model_accuracy"] == morph_card["metrics"]["accuracy"]
    assert m["morphology_model_macro_recall"] == morph_card["metrics"]["macro_recall"]
    report = json.loads((REPO / "training" / "reports" / "embedding" / "metrics.json").read_text())
    full = report["linear_probe"]["morphology_model_full_supervision"]
    assert full["sha256"] == morph_card["sha256"]
    assert full["per_class"] == morph_card["metrics"]["per_class"]


@requires_model
def test_shipped_card_and_checksum():
    import hashlib

    card = json.loads((MODEL_DIR / "card.json").read_text())
    assert card["sha256"] == hashlib.sha256((MODEL_DIR / "model.onnx").read_bytes()).hexdigest()
    assert card["task"] == "embedding" and card["name"] == "embedding"
    spec = card["input"]
    assert spec["shape"] == [3, opt.STAMP_SIZE, opt.STAMP_SIZE]
    assert spec["family"] == "optical" and spec["single_band"] == "replicate"
    assert spec["preprocessing"] == "astromorph.preprocessing.preprocess_optical"
    assert spec["angular_size"]["kind"] == "petrosian"
    assert spec["angular_size"]["stamp_size_per_petro_r90"] == pytest.approx(
        float(opt.stamp_size_from_petrosian(1.0)), abs=1e-3)
    (out,) = card["outputs"]
    assert out["kind"] == "embedding" and 64 <= out["size"] <= 256
    assert (MODEL_DIR / "model.onnx").stat().st_size < 20e6
    assert "embedding" in astromorph.list_models()


@requires_model
def test_shipped_model_outputs_unit_vectors():
    model = astromorph.load_model("embedding", providers="cpu")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (5, 3, 64, 64)).astype(np.float32)
    emb = model.predict(x)["embedding"]
    assert emb.shape == (5, model.card["outputs"][0]["size"]) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    grey = model.predict(x[:, 0])["embedding"]  # single band -> replicated
    np.testing.assert_allclose(grey, model.predict(np.repeat(x[:, :1], 3, 1))["embedding"],
                               atol=1e-6)


@requires_model
@pytest.mark.training
def test_torch_onnx_parity():
    """Colour cutouts -> preprocessing -> torch vs shipped ONNX (atol 2e-5); without the
    checkpoint (CI), the card's architecture with the shipped file's weights."""
    torch = pytest.importorskip("torch")
    if CHECKPOINT.is_file() and PCA.is_file():
        import sys

        sys.path.insert(0, str(REPO / "training"))
        from astromorph_training import embedding as E

        state = torch.load(CHECKPOINT, map_location="cpu", weights_only=False)
        method = E.build_method(state["method"])
        method.load_state_dict(state["model"])
        pca = np.load(PCA)
        deployed = E.DeployedEmbedding(method.encoder.eval(), pca["mean"], pca["components"],
                                       int(pca["tta"]), bool(pca["stages"])).eval()
    else:
        deployed = shipped_torch_module("embedding")
    images = np.stack([opt.gri_to_rgb(*[np.random.default_rng(s).gamma(2, 0.05, (120, 120))
                                        for _ in range(3)]) for s in range(6)])
    x = opt.preprocess_colour_cutout(images)
    with torch.no_grad():
        ref = deployed(torch.from_numpy(x)).numpy()
    onnx = astromorph.load_model("embedding", providers="cpu").predict(x)["embedding"]
    np.testing.assert_allclose(onnx, ref, atol=2e-5)


def test_cli_similar_position_columns_by_name(tmp_path, capsys):
    # the error for unrecognised position columns tells the user to pass --ra-col/--dec-col;
    # `similar` must have them
    t = catalogue(30, d=8)
    t["embedding"] = unit_rows(30, 8)
    t.rename_columns(["ra", "dec"], ["lon_icrs", "lat_icrs"])
    src = tmp_path / "emb.ecsv"
    t.write(src)
    query = ["similar", str(src), "--ra", str(t["lon_icrs"][4]), "--dec", str(t["lat_icrs"][4]),
             "-k", "3"]
    assert main(query) == 2
    err = capsys.readouterr().err
    assert "--ra-col" in err
    # the shared position code named similar's TABLE "the catalogue" (annotate's word)
    assert "the table has no RA or Dec column" in err and "catalogue" not in err
    assert main(query + ["--ra-col", "nope", "--dec-col", "lat_icrs"]) == 2
    err = capsys.readouterr().err
    assert "no column 'nope' in the table" in err and "catalogue" not in err
    assert main(query + ["--ra-col", "lon_icrs", "--dec-col", "lat_icrs"]) == 0
    assert "query: row 4" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["similar", "cluster"])
def test_cli_two_outputs_of_one_run_must_differ(tmp_path, capsys, command):
    """-o and --gallery/--map naming the same file: refused before any work, instead of the
    table being written and then replaced by the picture (with --overwrite, exit 0)."""
    t = catalogue(30, d=8)
    t["embedding"], _ = blobs(n_per=10, k=3, d=8)
    src = tmp_path / "emb.ecsv"
    t.write(src)
    out = tmp_path / "out.ecsv"
    args = ([command, str(src), "-o", str(out), "--overwrite"]
            + (["--query", "0", "--gallery", str(tmp_path / "." / "out.ecsv")]
               if command == "similar" else ["-k", "2", "--map", str(out)]))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "out.ecsv" in err and "twice" in err and "Traceback" not in err
    assert not out.exists()


def test_cli_similar_refuses_to_write_over_its_query_image(tiny_embedding, tmp_path, capsys):
    """--image is an input too: ``-o``/``--gallery`` naming it (with --overwrite) replaced
    the user's picture with the table or the gallery; refused before any work, as an output
    naming the TABLE is."""
    pytest.importorskip("matplotlib")
    from PIL import Image

    for s in range(6):
        Image.fromarray(colour_cutout(s)).save(tmp_path / f"g{s:02d}.png")
    table = tmp_path / "emb.ecsv"
    assert main(["predict", tiny_embedding, str(tmp_path / "g*.png"), "-o", str(table),
                 "--no-progress"]) == 0
    from astropy.io import fits

    fits_image = tmp_path / "q.fits"
    fits.PrimaryHDU(np.moveaxis(colour_cutout(3), -1, 0).astype(np.float32)).writeto(fits_image)
    for option, image in (("--gallery", tmp_path / "g03.png"), ("-o", fits_image)):
        before = image.read_bytes()
        assert main(["similar", str(table), "--image", str(image), "-k", "2", "--model",
                     tiny_embedding, option, str(image), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert image.name in err and "one of the inputs" in err
        assert image.read_bytes() == before


def _write_labelled_embeddings(path):
    """A 30-row ECSV table with 8-d embeddings of 3 blobs and labels 'a', 'b' and none."""
    t = catalogue(30, d=8)
    t["embedding"], _ = blobs(n_per=10, k=3, d=8)
    t["label"] = ["a", "b", ""] * 10
    t.write(path)


def test_cli_cluster_refuses_a_column_the_output_format_cannot_hold_before_any_work(
        tmp_path, monkeypatch, capsys):
    """The table's columns are kept in the output of cluster and classify: a column Parquet
    cannot hold (here Python objects that are no arrays) made pyarrow fail with an
    AttributeError after the fit; it is now refused before it, naming the column."""
    pytest.importorskip("pyarrow")
    from astromorph.embeddings import _mixture

    _write_labelled_embeddings(tmp_path / "emb.ecsv")
    table = Table.read(tmp_path / "emb.ecsv")
    table["note"] = np.array([1, "x", 2.5] * 10, dtype=object)
    table.write(tmp_path / "emb.ecsv", overwrite=True)
    monkeypatch.setattr(_mixture, "_cluster_table",
                        lambda *a, **k: pytest.fail("fitted before the output was refused"))
    assert main(["cluster", str(tmp_path / "emb.ecsv"), "-k", "2", "-o",
                 str(tmp_path / "out.parquet")]) == 2
    err = capsys.readouterr().err
    assert "Parquet cannot hold the column(s) note" in err and ".ecsv" in err, err
    assert not (tmp_path / "out.parquet").exists()


def test_cli_cluster_covariance_option(tmp_path):
    """The FewRowsWarning of `astromorph cluster` on a small table advised
    covariance_type='diag', which the command had no way to ask for: it now takes
    --covariance diag (no warning then), and the warning names the command-line options."""
    import warnings

    from astromorph.exceptions import FewRowsWarning

    t = catalogue(30, d=16)
    t["embedding"], y = blobs(n_per=10, k=3, d=16)
    src = tmp_path / "emb.ecsv"
    t.write(src)
    with pytest.warns(FewRowsWarning, match=r"--covariance diag.*-k.*--pca"):
        assert main(["cluster", str(src), "-k", "3", "-o", str(tmp_path / "full.ecsv")]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", FewRowsWarning)
        assert main(["cluster", str(src), "-k", "3", "--covariance", "diag",
                     "-o", str(tmp_path / "diag.ecsv")]) == 0
    assert nmi(np.asarray(Table.read(tmp_path / "diag.ecsv")["cluster"]), y) > 0.95


def test_cli_quiet_prints_no_status_lines(tmp_path, capsys):
    t = catalogue(30, d=8)
    t["embedding"], _ = blobs(n_per=10, k=3, d=8)
    src = tmp_path / "emb.ecsv"
    t.write(src)
    from astromorph.exceptions import FewRowsWarning

    with pytest.warns(FewRowsWarning):  # 30 rows: a warning, not a status line
        assert main(["cluster", str(src), "-o", str(tmp_path / "c.ecsv"), "--map-method",
                     "pca", "--map", str(tmp_path / "m.png"), "-q"]) == 0
    assert main(["similar", str(src), "--query", "0", "-o", str(tmp_path / "s.ecsv"),
                 "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert (tmp_path / "c.ecsv").exists() and (tmp_path / "s.ecsv").exists()


def test_cli_csv_output_of_embeddings_is_refused_before_any_work(tiny_embedding, tmp_path,
                                                                  monkeypatch, capsys):
    """CSV cannot hold an embedding column: predict/annotate with an embedding model and
    cluster/classify of an embedding table refuse a .csv output before scoring or fitting,
    not after the whole run."""
    from PIL import Image

    from astromorph import _predict
    from astromorph.embeddings import _mixture

    Image.fromarray(colour_cutout(0)).save(tmp_path / "g.png")
    _write_labelled_embeddings(tmp_path / "emb.ecsv")
    work = []
    monkeypatch.setattr(_predict, "predict_files", lambda *a, **k: work.append(a))
    monkeypatch.setattr(_mixture, "_cluster_table", lambda *a, **k: work.append(a))
    from astromorph.embeddings import _head
    monkeypatch.setattr(_head.LabelHead, "fit", lambda *a, **k: work.append(a))
    from astromorph import _annotate
    monkeypatch.setattr(_annotate, "annotate", lambda *a, **k: work.append(a))
    for argv in (["predict", tiny_embedding, str(tmp_path / "g.png"), "-o"],
                 ["annotate", str(tmp_path / "emb.ecsv"), "-m", tiny_embedding, "-i",
                  str(tmp_path / "g.png"), "--stamp-size", "10", "-o"],
                 ["cluster", str(tmp_path / "emb.ecsv"), "-k", "2", "-o"],
                 ["classify", str(tmp_path / "emb.ecsv"), "--labels", "label", "-o"]):
        assert main([*argv, str(tmp_path / "out.csv")]) == 2
        err = capsys.readouterr().err
        assert "multidimensional" in err and "embedding" in err, err
    assert work == [] and not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("prefix, message", [
    ("", "prefix must be a non-empty string, got ''"),
    ("a b", "prefix 'a b' cannot start column names")])
@pytest.mark.parametrize("command", [["classify", "--labels", "label"], ["cluster", "-k", "2"]])
def test_cli_empty_prefix_is_refused_before_any_work(tmp_path, capsys, monkeypatch, command,
                                                     prefix, message):
    """classify --prefix '' was refused by LabelHead.annotate only after the head was
    fitted; both commands now refuse it before the table is read, and a prefix with a
    space (column names that ECSV, CSV and FITS keywords handle badly) too."""
    from astromorph.embeddings import _cli, _head, _mixture

    _write_labelled_embeddings(tmp_path / "emb.ecsv")
    work = []
    monkeypatch.setattr(_cli, "_read", lambda *a, **k: work.append(a))
    monkeypatch.setattr(_mixture, "_cluster_table", lambda *a, **k: work.append(a))
    monkeypatch.setattr(_head.LabelHead, "fit", lambda *a, **k: work.append(a))
    assert main([command[0], str(tmp_path / "emb.ecsv"), *command[1:], "--prefix", prefix,
                 "-o", str(tmp_path / "out.ecsv")]) == 2
    assert message in capsys.readouterr().err
    assert work == [] and not (tmp_path / "out.ecsv").exists()


def test_cli_cluster_map_that_cannot_be_drawn_fails_before_any_work(tmp_path, capsys):
    """--map-method umap without umap-learn: refused before the fit, with no table written
    (was: the table written, then the error, exit 2)."""
    import importlib.util

    if importlib.util.find_spec("umap") is not None:
        pytest.skip("umap-learn is installed")
    t = catalogue(30, d=8)
    t["embedding"], _ = blobs(n_per=10, k=3, d=8)
    t.write(tmp_path / "emb.ecsv")
    assert main(["cluster", str(tmp_path / "emb.ecsv"), "-k", "2", "-o",
                 str(tmp_path / "out.ecsv"), "--map", str(tmp_path / "m.png"),
                 "--map-method", "umap"]) == 2
    captured = capsys.readouterr()
    assert "umap-learn" in captured.err and "clusters" not in captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.ecsv"]


@pytest.mark.parametrize("picture", [["--gallery", "g.png"], ["--map", "m.png"]])
def test_cli_picture_without_matplotlib_fails_before_any_work(tmp_path, capsys, monkeypatch,
                                                              picture):
    from astromorph import _plotting
    from astromorph.exceptions import MissingDependencyError

    def missing():
        raise MissingDependencyError("drawing needs matplotlib")

    monkeypatch.setattr(_plotting, "matplotlib", missing)
    t = catalogue(30, d=8)
    t["embedding"], _ = blobs(n_per=10, k=3, d=8)
    t.write(tmp_path / "emb.ecsv")
    command = ["similar", "--query", "0"] if picture[0] == "--gallery" else ["cluster", "-k", "2"]
    assert main([command[0], str(tmp_path / "emb.ecsv"), *command[1:], "-o",
                 str(tmp_path / "out.ecsv"), picture[0], str(tmp_path / picture[1])]) == 2
    assert "matplotlib" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.ecsv"]


def test_cli_similar_gallery_without_file_column_writes_nothing(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    t = catalogue(30, d=8)
    t["embedding"], _ = blobs(n_per=10, k=3, d=8)
    t.write(tmp_path / "emb.ecsv")
    assert main(["similar", str(tmp_path / "emb.ecsv"), "--query", "0", "-o",
                 str(tmp_path / "out.ecsv"), "--gallery", str(tmp_path / "g.png")]) == 2
    assert "column of file paths" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.ecsv"]


@pytest.mark.parametrize("option", [["--max-separation", "2"], ["--ra-col", "ra"],
                                    ["--dec-col", "dec"], ["--source-column", "source"]])
def test_cli_similar_options_of_another_query_are_refused(tmp_path, capsys, option):
    """--max-separation/--ra-col/--dec-col without --ra/--dec, --source-column without
    --gallery: refused (naming the option) instead of silently ignored."""
    t = catalogue(30, d=8)
    t["embedding"], _ = blobs(n_per=10, k=3, d=8)
    t.write(tmp_path / "emb.ecsv")
    assert main(["similar", str(tmp_path / "emb.ecsv"), "--query", "0", *option]) == 2
    err = capsys.readouterr().err
    assert option[0] in err and err.startswith("astromorph: error:")


@pytest.mark.parametrize("command, needs", [
    (["cluster", "--map-method", "pca"], "--map"),
    (["cluster", "--map-method", "auto"], "--map"),
    (["cluster", "-k", "2", "--k-max", "6"], "without -k"),
    (["similar", "--query", "0", "--model", "embedding"], "--image"),
    (["similar", "--ra", "1", "--dec", "1", "--model", "x"], "--image"),
    (["similar", "--query", "0", "--providers", "cpu"], "--image"),
    (["similar", "--query", "0", "--threads", "1"], "--image"),
    (["similar", "--query", "0", "--precision", "float32"], "--image")])
def test_cli_options_that_would_be_ignored_are_refused(tmp_path, capsys, command, needs):
    """Options with a default that the command would not use (--map-method without --map,
    --k-max with -k, --model without --image): refused, naming them, before any work,
    instead of silently ignored, even when given with their default value."""
    t = catalogue(30, d=8)
    t["embedding"], _ = blobs(n_per=10, k=3, d=8)
    t.write(tmp_path / "emb.ecsv")
    option = next(o for o in command if o in ("--map-method", "--k-max", "--model", "--providers",
                                              "--threads", "--precision"))
    assert main([command[0], str(tmp_path / "emb.ecsv"), *command[1:], "-o",
                 str(tmp_path / "out.ecsv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("astromorph: error:") and option in err and needs in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.ecsv"]


@pytest.mark.parametrize("picture", [["--gallery", "g.txt"], ["--map", "m.txt"],
                                     ["--map", "m"]])
def test_cli_picture_extension_that_names_no_format_is_refused(tmp_path, capsys, picture):
    """--map m.txt (or --gallery g.txt) wrote a PNG under that name without a word: refused
    before any work, naming the file, like a table's unknown extension."""
    pytest.importorskip("matplotlib")
    t = catalogue(30, d=8)
    t["embedding"], _ = blobs(n_per=10, k=3, d=8)
    t["source"] = ["nowhere.png"] * 30
    t.write(tmp_path / "emb.ecsv")
    command = ["similar", "--query", "0"] if picture[0] == "--gallery" else ["cluster", "-k", "2"]
    assert main([command[0], str(tmp_path / "emb.ecsv"), *command[1:], "-o",
                 str(tmp_path / "out.ecsv"), picture[0], str(tmp_path / picture[1])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("astromorph: error:") and picture[1] in err and ".png" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.ecsv"]


def test_picture_format_follows_the_extension(tmp_path):
    """A map or gallery is written in the format its extension names (was: PNG bytes in a
    .svg or .pdf file); an extension naming none is refused before any work."""
    pytest.importorskip("matplotlib")
    x, y = blobs(n_per=10, k=3, d=8)
    plot_map(x, tmp_path / "m.svg", labels=y, method="pca")
    assert b"<svg" in (tmp_path / "m.svg").read_bytes()[:2000]
    plot_map(x, tmp_path / "m.PDF", labels=y, method="pca")
    assert (tmp_path / "m.PDF").read_bytes().startswith(b"%PDF")
    plot_map(x, tmp_path / "m.png", labels=y, method="pca")
    assert (tmp_path / "m.png").read_bytes().startswith(b"\x89PNG")
    with pytest.raises(InvalidArgumentError, match="m.txt"):
        plot_map(x, tmp_path / "m.txt", labels=y, method="pca")
    index = SimilarityIndex(x)
    nn = index.query(row=0, k=3)
    index.gallery(nn, tmp_path / "g.svg", images=np.zeros((30, 8, 8)))
    assert b"<svg" in (tmp_path / "g.svg").read_bytes()[:2000]
    with pytest.raises(InvalidArgumentError, match="g.fits"):
        index.gallery(nn, tmp_path / "g.fits", images=np.zeros((30, 8, 8)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.svg", "m.PDF", "m.png", "m.svg"]


def test_rows_negative_or_out_of_range_are_refused_naming_the_valid_range(tmp_path, capsys,
                                                                          monkeypatch):
    """A query row or an excluded row that is negative or past the end is refused with an
    InvalidArgumentError naming the value and the valid rows (a negative one used to count
    silently from the end of the table), in the API and in ``similar --query``, before the
    index is built; numpy integers keep working."""
    from astromorph.embeddings import _index

    t = catalogue(30, d=8)
    index = SimilarityIndex.from_table(t)
    for bad in (-1, -30, 30, np.int64(-2), np.int32(31)):
        with pytest.raises(InvalidArgumentError, match=rf"row {int(bad)} .*0 to 29"):
            index.query(row=bad, k=3)
        with pytest.raises(InvalidArgumentError, match=rf"{int(bad)}.*0 to 29"):
            index.search(np.ones(8), k=3, exclude=[[0, bad]])
    assert index.query(row=np.int64(29), k=3).meta["query_row"] == 29
    assert 4 not in index.search(t["embedding"][4], k=3, exclude=[[np.int16(4)]])[0][0]
    t.write(tmp_path / "emb.ecsv")
    built, from_table = [], _index.SimilarityIndex.from_table.__func__
    monkeypatch.setattr(_index.SimilarityIndex, "from_table", classmethod(
        lambda cls, *a, **kw: built.append(a) or from_table(cls, *a, **kw)))
    for bad, range_ in (("-1", "[0, 29]"), ("30", "[0, 29]"), ("-30", "[0, 29]")):
        assert main(["similar", str(tmp_path / "emb.ecsv"), "--query", bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("astromorph: error:") and "--query" in err, err
        assert bad in err and range_ in err, err
    t[:0].write(tmp_path / "empty.fits")  # no valid row: said so, not "in [0, -1]"
    assert main(["similar", str(tmp_path / "empty.fits"), "--query", "0"]) == 2
    assert "--query 0: the table has no rows" in capsys.readouterr().err
    assert not built  # refused before any work


def test_head_refuses_non_finite_embeddings():
    """A NaN row among the labelled embeddings made every coefficient NaN (all outputs NaN)
    without a word; predict on a NaN row returned the first class. Both now name the row."""
    from astromorph import LabelHead

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8))
    y = np.array(["a", "b"] * 20)
    bad = x.copy()
    bad[3] = np.nan
    with pytest.raises(InvalidArgumentError, match=r"NaN or infinite .*rows 3\)"):
        LabelHead(C=1.0).fit(bad, y)
    head = LabelHead(C=1.0).fit(x, y)
    bad[4, 0] = np.inf
    for method in (head.predict, head.predict_proba, head.decision_function):
        with pytest.raises(InvalidArgumentError, match=r"rows 3, 4\)"):
            method(bad)
    masked = np.ma.masked_array(x, mask=False)
    masked[7] = np.ma.masked
    with pytest.raises(InvalidArgumentError, match=r"masked row\(s\) \(rows 7\)"):
        head.predict(masked)


def test_head_options_and_state_are_checked():
    """cv < 2 fitted on empty training folds (cv=0 divided by zero) and picked a meaningless C;
    Cs=() raised a bare ValueError from min(); a to_dict state with inconsistent shapes
    loaded and failed later inside numpy. All are InvalidArgumentError naming the value."""
    from astromorph import LabelHead

    for kwargs, value in (({"cv": 1}, "1"), ({"cv": 0}, "0"), ({"Cs": ()}, r"\(\)"),
                          ({"Cs": (-1.0, 1.0)}, "-1")):
        with pytest.raises(InvalidArgumentError, match=value):
            LabelHead(**kwargs)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8))
    state = LabelHead(C=1.0).fit(x, np.array(["a", "b"] * 20)).to_dict()
    for key, value in (("coef", state["coef"][:3]), ("classes", ["a"]),
                       ("intercept", [0.0]), ("scale", state["scale"][:2])):
        with pytest.raises(InvalidArgumentError, match=key):
            LabelHead.from_dict({**state, key: value})
    for bad in (None, "classes C mean scale coef intercept", [1, 2]):
        with pytest.raises(InvalidArgumentError, match="not a LabelHead state"):
            LabelHead.from_dict(bad)
    assert LabelHead.from_dict(json.loads(json.dumps(state))).predict(x[:3]).tolist() == \
        LabelHead.from_dict(state).predict(x[:3]).tolist()


def test_search_reads_query_masks_and_types():
    """A masked query vector was searched with its fill values (neighbours of data that is
    not there); a non-numeric query raised a bare ValueError. Masked queries are now named
    as unusable queries, non-numbers give InvalidArgumentError."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 8)).astype(np.float32)
    index = SimilarityIndex(x)
    q = np.ma.masked_array(x[:3], mask=False)
    q[1, 2] = np.ma.masked
    with pytest.raises(InvalidArgumentError, match=r"1 of 3 are not \(query 1\)"):
        index.search(q, k=2)
    with pytest.raises(InvalidArgumentError, match="must be numbers"):
        index.search(["a"] * 8, k=2)
    assert index.search(np.ma.masked_array(x[:2], mask=False), k=1)[0].tolist() == [[0], [1]]


def test_mixture_checks_the_dimension():
    """A fitted mixture applied to vectors of another dimension (another embedding model)
    raised a numpy broadcasting ValueError; it is now InvalidArgumentError naming both."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8))
    gmm = GaussianMixture(n_components=2).fit(x)
    for method in (gmm.predict, gmm.predict_proba):
        with pytest.raises(InvalidArgumentError, match=r"4 dimensions.* 8"):
            method(x[:3, :4])
    with pytest.raises(InvalidArgumentError, match=r"4 dimensions.* 8"):
        gmm.annotate(Table({"embedding": x[:, :4]}))


def test_labels_differing_only_by_case_or_spaces_warn_once_naming_them(tmp_path, capsys):
    """"Spiral", "spiral " and "spiral" became three classes without a word; fit now warns
    once, naming the groups, and keeps them apart (astromorph classify refuses, before the
    fit, labels whose probability columns differ only by case)."""
    from astromorph.exceptions import SimilarLabelsWarning

    x, y = blobs(n_per=20, k=3, d=8)
    names = np.array(["Spiral", "spiral ", "E"])[y]
    names[y == 2] = np.where(np.arange((y == 2).sum()) % 2, "E", "e")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        head = LabelHead(C=1.0).fit(x, names)
    ours = [w for w in caught if issubclass(w.category, SimilarLabelsWarning)]
    assert len(ours) == 1 and ours[0].filename == __file__, caught
    assert "2 group(s)" in str(ours[0].message)
    assert "'E', 'e'" in str(ours[0].message) and "'Spiral', 'spiral '" in str(ours[0].message)
    assert head.classes_.tolist() == ["E", "Spiral", "e", "spiral "]  # not merged
    with warnings.catch_warnings():
        warnings.simplefilter("error", SimilarLabelsWarning)
        LabelHead(C=1.0).fit(x, np.array(["Spiral", "spiral-arm", "E"])[y])
        LabelHead(C=1.0).fit(x, y)
    t = Table({"embedding": x, "label": names})
    t.write(tmp_path / "lab.ecsv")
    assert main(["classify", str(tmp_path / "lab.ecsv"), "--labels", "label", "-C", "1",
                 "-o", str(tmp_path / "out.ecsv")]) == 2
    assert "'E', 'e' -> 'head_p_E', 'head_p_e'" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")  # HIERARCH keys
@pytest.mark.parametrize("fmt", ["ecsv", "fits"])
def test_class_names_with_commas_are_recorded_unambiguously(tmp_path, fmt):
    """``<label>_classes`` joined the class names with commas, so 'S0, edge-on' and 'E' read
    back as three classes; it is now one CSV record (the names that hold a comma or a quote
    in double quotes), the same "a,b,c" as before for every other name, and it survives
    a round trip through a file."""
    import csv

    x, y = blobs(n_per=20, k=3, d=8)
    classes = ["E", 'S0 "lenticular"', "S0, edge-on"]
    out = LabelHead(C=1.0).fit(x, np.array(classes)[y]).annotate(Table({"embedding": x}))
    out.write(tmp_path / f"out.{fmt}")
    for table in (out, Table.read(tmp_path / f"out.{fmt}")):
        value = table.meta["head_label_classes"]
        assert next(csv.reader([value])) == classes, value
    plain = LabelHead(C=1.0).fit(x, np.array(["a b", "c", "d"])[y]).annotate(
        Table({"embedding": x}))
    assert plain.meta["head_label_classes"] == "a b,c,d"


_ODD_CLASSES = ["E", "S0?", "Sa/Sb", "a,b", "edge-on disc"]
_SAFE_COLUMNS = ["m_p_E", "m_p_S0_", "m_p_Sa_Sb", "m_p_a_b", "m_p_edge-on_disc"]


def _odd_label_table(n_per=12, d=8):
    """Blobs labelled by classes whose names no column name may hold (a space, a comma, a
    slash, a question mark), every third row unlabelled."""
    x, y = blobs(n_per=n_per, k=len(_ODD_CLASSES), d=d)
    label = np.array(_ODD_CLASSES)[y].astype(object)
    label[np.arange(len(y)) % 3 == 2] = ""
    return Table({"embedding": x, "label": label.astype(str)}), np.array(_ODD_CLASSES)[y]


@pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")  # HIERARCH keys
@pytest.mark.parametrize("fmt", ["ecsv", "fits"])
def test_class_names_give_column_safe_probability_columns(tmp_path, fmt):
    """A label such as 'Sa/Sb' or 'edge-on disc' became the column 'm_p_Sa/Sb' or
    'm_p_edge-on disc' (a FITS TTYPE with a slash or a space, a name no other astromorph
    column could have); the probability columns now replace what a column name cannot hold
    by '_' (astromorph's one rule for column names), while the label column keeps the
    labels verbatim, each column's description and the ``_classes`` meta name the label
    as given, and a table classified again keeps working with on_conflict."""
    from astropy.io import fits

    from astromorph._registry import _COLUMN_PART

    t, truth = _odd_label_table()
    head = LabelHead(C=1.0).fit(t["embedding"], truth)
    out = head.annotate(t, prefix="m")
    assert out.colnames == ["embedding", "label", *_SAFE_COLUMNS, "m_label"]
    assert all(_COLUMN_PART.match(name) for name in out.colnames)
    path = tmp_path / f"out.{fmt}"
    out.write(path)
    if fmt == "fits":
        with fits.open(path) as hdul:
            assert hdul[1].columns.names == out.colnames  # TTYPE
    for table in (out, Table.read(path)):
        assert np.mean(np.asarray(table["m_label"]).astype(str) == truth) > 0.95  # verbatim
        assert set(np.asarray(table["m_label"]).astype(str)) <= set(_ODD_CLASSES)
        for name, label in zip(_SAFE_COLUMNS, _ODD_CLASSES):
            assert repr(label) in table[name].description, (name, table[name].description)
        assert table.meta["m_label_classes"] == 'E,S0?,Sa/Sb,"a,b",edge-on disc'
    # classified again: a suffix for all the run's columns, or the columns replaced
    again = head.annotate(out, prefix="m", on_conflict="suffix")
    assert [c + "_2" for c in _SAFE_COLUMNS + ["m_label"]] == again.colnames[-6:]
    assert_scores(again["m_p_Sa_Sb_2"], out["m_p_Sa_Sb"], rtol=0)
    assert again.meta["m_label_2_classes"] == out.meta["m_label_classes"]
    replaced = head.annotate(out, prefix="m", on_conflict="replace")
    assert replaced.colnames == out.colnames
    with pytest.raises(InputError, match="'m_p_Sa_Sb'"):
        head.annotate(out, prefix="m")


def test_class_names_that_give_one_column_name_are_refused_naming_both(tmp_path, capsys,
                                                                        monkeypatch):
    """'Sa/Sb' and 'Sa Sb' are two classes whose probability columns would both be
    'm_p_Sa_Sb': annotate (and astromorph classify, before the fit) refuse them, naming
    both labels and the column, rather than letting one column overwrite the other."""
    from astromorph.embeddings import _head

    x, y = blobs(n_per=15, k=3, d=8)
    names = np.array(["Sa/Sb", "Sa Sb", "E"])[y]
    head = LabelHead(C=1.0).fit(x, names)  # the classes themselves are fine
    assert head.classes_.tolist() == ["E", "Sa Sb", "Sa/Sb"]
    with pytest.raises(InvalidArgumentError, match="'Sa Sb', 'Sa/Sb'") as err:
        head.annotate(Table({"embedding": x}), prefix="m")
    assert "'m_p_Sa_Sb'" in str(err.value)
    Table({"embedding": x, "label": names}).write(tmp_path / "lab.ecsv")
    work = []
    monkeypatch.setattr(_head.LabelHead, "fit", lambda *a, **k: work.append(a))
    assert main(["classify", str(tmp_path / "lab.ecsv"), "--labels", "label", "--prefix", "m",
                 "-o", str(tmp_path / "out.ecsv")]) == 2
    message = capsys.readouterr().err
    assert "'Sa Sb', 'Sa/Sb'" in message and "'m_p_Sa_Sb'" in message
    assert work == [] and not (tmp_path / "out.ecsv").exists()


def test_cli_cluster_refuses_a_table_fits_cannot_hold_before_the_fit(tmp_path, capsys,
                                                                     monkeypatch):
    """A table with 'id' and 'ID' clustered into .fits: refused before the fit, naming both
    (FITS compares column names without regard to case), not written as two columns no
    FITS reader can tell apart."""
    x, _ = blobs(n_per=15, k=3, d=8)
    Table({"embedding": x, "id": np.arange(len(x)), "ID": np.arange(len(x))}).write(
        tmp_path / "t.ecsv")
    monkeypatch.setattr(GaussianMixture, "fit", lambda *a, **k: pytest.fail("fitted"))
    assert main(["cluster", str(tmp_path / "t.ecsv"), "-k", "3",
                 "-o", str(tmp_path / "out.fits")]) == 2
    assert "'id' and 'ID'" in capsys.readouterr().err
    assert not (tmp_path / "out.fits").exists()
    # meta keys too: 'survey' and 'SURVEY' would be one header keyword
    Table({"embedding": x}, meta={"survey": "a", "SURVEY": "b"}).write(tmp_path / "m.ecsv")
    assert main(["cluster", str(tmp_path / "m.ecsv"), "-k", "3",
                 "-o", str(tmp_path / "out.fits")]) == 2
    assert "meta key(s) 'survey' and 'SURVEY'" in capsys.readouterr().err
    assert not (tmp_path / "out.fits").exists()


def test_class_names_that_differ_only_by_case_are_refused_naming_both(tmp_path, capsys,
                                                                      monkeypatch):
    """'Spiral' and 'spiral' gave the columns 'm_p_Spiral' and 'm_p_spiral', which FITS (its
    TTYPE ignores case), TOPCAT and cfitsio cannot tell apart: annotate and astromorph
    classify (before the fit) now refuse them as they refuse 'Sa/Sb' and 'Sa Sb', naming
    both labels and both columns."""
    from astromorph.embeddings import _head
    from astromorph.exceptions import SimilarLabelsWarning

    x, y = blobs(n_per=15, k=3, d=8)
    names = np.array(["Spiral", "spiral", "S0"])[y]
    with pytest.warns(SimilarLabelsWarning, match="'Spiral', 'spiral'"):  # fitted apart
        head = LabelHead(C=1.0).fit(x, names)
    assert head.classes_.tolist() == ["S0", "Spiral", "spiral"]
    with pytest.raises(InvalidArgumentError, match="'Spiral', 'spiral'") as err:
        head.annotate(Table({"embedding": x}), prefix="m")
    assert "'m_p_Spiral', 'm_p_spiral'" in str(err.value)
    Table({"embedding": x, "label": np.array(["s0", "S0", "E"])[y]}).write(
        tmp_path / "lab.ecsv")
    work = []
    monkeypatch.setattr(_head.LabelHead, "fit", lambda *a, **k: work.append(a))
    assert main(["classify", str(tmp_path / "lab.ecsv"), "--labels", "label", "--prefix", "m",
                 "-o", str(tmp_path / "out.fits")]) == 2
    message = capsys.readouterr().err
    assert "'S0', 's0'" in message and "'m_p_S0', 'm_p_s0'" in message
    assert work == [] and not (tmp_path / "out.fits").exists()


@pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")  # HIERARCH keys
def test_cli_classify_names_columns_of_odd_labels_safely(tmp_path, capsys, monkeypatch):
    """astromorph classify --labels with labels such as 'Sa/Sb' writes column-safe
    probability columns (FITS TTYPE too) and the labels verbatim; a table that already has
    one of those columns is refused before the fit (the check used the raw names, which no
    table has, so it passed and the run went on)."""
    from astropy.io import fits

    from astromorph.embeddings import _head

    t, truth = _odd_label_table()
    t.write(tmp_path / "lab.fits")
    assert main(["classify", str(tmp_path / "lab.fits"), "--labels", "label", "--prefix", "m",
                 "-C", "1", "-o", str(tmp_path / "out.fits")]) == 0
    with fits.open(tmp_path / "out.fits") as hdul:
        assert hdul[1].columns.names == ["embedding", "label", *_SAFE_COLUMNS, "m_label"]
    out = Table.read(tmp_path / "out.fits")
    assert np.mean(np.asarray(out["m_label"]).astype(str) == truth) > 0.95
    assert "'Sa/Sb'" in out["m_p_Sa_Sb"].description
    assert main(["classify", str(tmp_path / "out.fits"), "--labels", "label", "--prefix", "m",
                 "-C", "1", "--on-conflict", "suffix", "-o", str(tmp_path / "again.ecsv")]) == 0
    assert "m_p_Sa_Sb_2" in Table.read(tmp_path / "again.ecsv").colnames
    clash = t.copy()
    clash["m_p_Sa_Sb"] = 0.5
    clash.write(tmp_path / "clash.ecsv")
    work = []
    monkeypatch.setattr(_head.LabelHead, "fit", lambda *a, **k: work.append(a))
    capsys.readouterr()
    assert main(["classify", str(tmp_path / "clash.ecsv"), "--labels", "label", "--prefix", "m",
                 "-o", str(tmp_path / "x.ecsv")]) == 2
    assert "'m_p_Sa_Sb'" in capsys.readouterr().err
    assert work == [] and not (tmp_path / "x.ecsv").exists()


def test_heads_and_mixtures_predict_no_rows_as_no_rows():
    """head.predict([]) read [] as one vector of 0 dimensions ("embeddings have 0
    dimensions; this head was fitted on 8"); no vectors now give no results, as a (0, D)
    array does, for every prediction method of LabelHead and GaussianMixture."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8))
    head = LabelHead(C=1.0).fit(x, np.array(["a", "b"])[np.arange(60) % 2])
    gmm = GaussianMixture(2).fit(x)
    for empty in ([], np.empty(0), np.empty((0, 0)), np.ma.masked_array(np.empty(0)),
                  np.empty((0, 8))):
        for method, shape in ((head.predict, (0,)), (head.predict_proba, (0, 2)),
                              (head.decision_function, (0, 2)), (gmm.predict, (0,)),
                              (gmm.predict_proba, (0, 2))):
            got = method(empty)
            assert got.shape == shape, (method, empty)
        assert head.predict(empty).dtype == head.classes_.dtype
    with pytest.raises(InvalidArgumentError, match=r"0 dimensions.* 8"):  # one empty vector
        head.predict([[]])
    with pytest.raises(InvalidArgumentError, match=r"5 dimensions.* 8"):
        gmm.predict(np.empty((0, 5)))


def test_heads_and_mixtures_make_no_float64_copy_of_a_float32_table():
    """A LabelHead or GaussianMixture applied to a float32 embedding table (as written by
    the model, and as read from FITS or Parquet) made float64 copies of the whole matrix:
    2 GB each for 1,000,000 256-d vectors, up to four at once (table_embeddings, then its
    usable rows; fit: all rows, then the finite ones), 7.6 GB for ``astromorph classify``
    of a 1 GB table. Now a block of rows at a time is made float64: the memory traced stays
    below one float64 copy of the vectors, and the results are those of float64 input."""
    rng = np.random.default_rng(0)
    n, d = 300_000, 32
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[: n // 2] += 2.0
    labels = np.where(np.arange(n) < n // 2, "a", "b")
    x[7] = np.nan  # a row without an embedding: masked outputs, not a copy of the others
    table = Table({"embedding": x})
    full64 = n * d * 8
    ok = np.arange(n) != 7
    x64 = x[ok].astype(np.float64)
    labelled = rng.choice(np.flatnonzero(ok), 200, replace=False)
    head = LabelHead(C=1.0).fit(x[labelled], labels[labelled])
    gmm = GaussianMixture(2, n_pca=4, n_init=1, max_fit_rows=20_000)
    for name, run in (("fit", lambda: gmm.fit(table["embedding"])),
                      ("head", lambda: head.annotate(table)),
                      ("head proba", lambda: head.predict_proba(x[8:])),
                      ("mixture", lambda: gmm.annotate(table)),
                      ("cluster_table", lambda: cluster_table(
                          table, n_components=2, n_pca=4, n_init=1, max_fit_rows=20_000))):
        out, peak = traced_peak(run)
        assert peak < full64, (name, peak / full64)
        if name == "head":
            assert out["head_label"].mask[7] and out["head_label"].mask.sum() == 1
            np.testing.assert_array_equal(np.asarray(out["head_p_a"])[ok],
                                          head.predict_proba(x64)[:, 0].astype(np.float32))
        elif name == "mixture":
            assert out["cluster"].mask[7] and out["cluster"].mask.sum() == 1
            np.testing.assert_array_equal(np.asarray(out["cluster"])[ok], gmm.predict(x64))
        elif name == "cluster_table":
            assert out[1].to_dict() == gmm.to_dict()  # the same rows fitted: the same fit
    np.testing.assert_array_equal(head.predict_proba(x[8:]),
                                  head.predict_proba(x[8:].astype(float)))



def test_head_annotate_makes_no_copy_of_a_masked_float32_column():
    """A masked embedding column (rows without a vector, as read from Parquet, ECSV or
    FITS) was copied whole to fill its masked rows with NaN, once by ``astromorph
    classify`` and again by LabelHead.annotate (1 GB each for 1,000,000 256-d float32
    vectors), and each block of 65,536 rows was made float64 (128 MB at 256-d). Now the
    masked rows are left out without filling them, and the blocks are smaller: the memory
    traced stays below half the column, the results are those of the rows without mask.
    Likewise GaussianMixture.fit, annotate and cluster_table (one copy each, two at once).
    """
    import tracemalloc

    from astromorph.embeddings._common import table_embeddings

    rng = np.random.default_rng(1)
    n, d = 200_000, 64
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[: n // 2] += 1.0
    labels = np.where(np.arange(n) < n // 2, "a", "b")
    mask = np.zeros((n, d), bool)
    mask[[3, 50_000, 150_001]] = True
    mask[9, 5] = True  # one value masked: the row has no usable vector
    x[9] = 1e30  # (finite data under a mask: still left out)
    table = Table({"embedding": MaskedColumn(x, mask=mask)})
    masked = mask.any(axis=1)
    head = LabelHead(C=1.0).fit(x[~masked][::1000], labels[~masked][::1000])
    got, valid = table_embeddings(table, dtype=None, fill_masked=False)
    assert np.shares_memory(got, table["embedding"]) and (valid == ~masked).all()
    tracemalloc.start()
    try:
        out = head.annotate(table)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < x.nbytes / 2, peak / x.nbytes
    assert (out["head_label"].mask == masked).all()
    np.testing.assert_array_equal(np.asarray(out["head_p_b"])[~masked],
                                  head.predict_proba(x[~masked])[:, 1].astype(np.float32))
    np.testing.assert_array_equal(np.asarray(out["head_label"])[~masked],
                                  head.predict(x[~masked]))
    # the mixtures too: no filled copy, the fit and the clusters of the rows without mask
    gmm = GaussianMixture(2, n_pca=4, n_init=1, max_fit_rows=20_000)
    plain = Table({"embedding": x[~masked]})
    for name, run in (("fit", lambda: gmm.fit(table["embedding"])),
                      ("mixture", lambda: gmm.annotate(table)),
                      ("cluster_table", lambda: cluster_table(
                          table, n_components=2, n_pca=4, n_init=1, max_fit_rows=20_000))):
        out, peak = traced_peak(run)
        assert peak < x.nbytes / 2, (name, peak / x.nbytes)
        if name == "fit":
            expected = GaussianMixture(2, n_pca=4, n_init=1, max_fit_rows=20_000).fit(
                plain["embedding"])
            assert gmm.to_dict() == expected.to_dict()
        elif name == "mixture":
            assert (out["cluster"].mask == masked).all()
            np.testing.assert_array_equal(np.asarray(out["cluster"])[~masked],
                                          gmm.predict(x[~masked]))
            assert_scores(np.asarray(out["cluster_prob"])[~masked],
                          gmm.annotate(plain)["cluster_prob"], rtol=0)
        else:
            assert out[1].to_dict() == gmm.to_dict()
    proba = gmm.predict_proba(table["embedding"])
    assert np.isnan(proba[masked]).all()
    np.testing.assert_array_equal(proba[~masked], gmm.predict_proba(x[~masked]))
    filled, valid = table_embeddings(table, dtype=None)  # the default: NaN rows, a copy
    assert np.isnan(filled[masked]).all() and (valid == ~masked).all()
    assert not np.shares_memory(filled, table["embedding"])


def test_similarity_index_makes_one_copy_of_a_masked_float32_column():
    """SimilarityIndex.from_table (``astromorph similar``) copied a masked embedding column
    whole to fill its masked rows with NaN, then made its normalised copy of that (two
    copies at once: 1 GB each for 1,000,000 256-d float32 vectors). Now the masked rows are
    marked unusable without filling them: only the normalised copy is made, from the
    column's own array, by from_table and by the constructor given the column; the
    neighbours are those of an index of the rows without mask."""
    rng = np.random.default_rng(2)
    n, d = 200_000, 64
    x = rng.normal(size=(n, d)).astype(np.float32)
    mask = np.zeros((n, d), bool)
    mask[[3, 50_000, 150_001]] = True
    mask[9, 5] = True  # one value masked: the row has no usable vector
    x[9] = 1e30  # (finite data under a mask: still left out)
    x[11] = x[0]  # (a masked duplicate of the query: never a neighbour)
    mask[11] = True
    table = Table({"id": np.arange(n), "embedding": MaskedColumn(x, mask=mask)})
    masked = mask.any(axis=1)
    rows = np.flatnonzero(~masked)
    plain = SimilarityIndex(x[rows]).query(row=0, k=5)
    for name, build in (("from_table", lambda: SimilarityIndex.from_table(table)),
                        ("column", lambda: SimilarityIndex(table["embedding"], table=table))):
        index, peak = traced_peak(build)
        assert peak < 1.5 * x.nbytes, (name, peak / x.nbytes)
        assert (index.valid == ~masked).all()
        assert not np.shares_memory(index.vectors, x)  # the column is left as it is
        assert (np.asarray(table["embedding"].data) == x).all()
        got = index.query(row=0, k=5)
        np.testing.assert_array_equal(got["row"], rows[plain["row"]])
        np.testing.assert_array_equal(got["similarity"], plain["similarity"])
        with pytest.raises(InputError, match="row 3 has no usable embedding"):
            index.query(row=3)


def test_query_with_k_far_above_the_rows():
    """k larger than the table returns every other row; a huge k (e.g. -k 10**12 on the
    command line) allocated a k-wide array and died with MemoryError."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 8))
    index = SimilarityIndex(x, table=Table({"id": np.arange(30)}))
    result = index.query(row=0, k=10**12)
    assert len(result) == 29 and 0 not in result["row"]
    assert result.meta["k"] == 10**12
    rows, sims = index.search(x[:2], k=40)
    assert rows.shape == (2, 40) and (rows[:, 30:] == -1).all() and np.isinf(sims[:, 30:]).all()
    assert sorted(rows[0, :30]) == list(range(30))
    for bad in (0, -3):
        with pytest.raises(InvalidArgumentError, match=f"k must be >= 1, got {bad}"):
            index.query(row=0, k=bad)


DATA_DIR = Path(__import__("os").environ.get("ASTROMORPH_DATA", REPO.parent / "shared" / "data"))


@requires_model
@pytest.mark.data
@pytest.mark.training
@pytest.mark.skipif(not (DATA_DIR / "gz1" / "labels.csv").is_file(), reason="no GZ1 data")
def test_card_heldout_search_and_clustering_reproduced():
    """The card's precision@25 within the 1600 held-out GZ1 galaxies and the NMI of a
    5-component mixture with the GZ1 classes, as `evaluate` computes them
    (`precision_at_k`, `GaussianMixture(n_components=5, n_init=3)`,
    `normalized_mutual_information`), from the raw JPEGs through the shipped ONNX; rounded
    to the card's 4 decimals. Not here, as too slow for CI: the probe (10 draws of a
    cross-validated logistic fit, ~30 s each), precision@25 against all 5338 GZ1 galaxies
    (every JPEG decoded) and k by BIC over 2-12 components (~40 s)."""
    pytest.importorskip("torch")
    import sys

    sys.path.insert(0, str(REPO / "training"))
    from astromorph_training import embedding as E

    m = json.loads((MODEL_DIR / "card.json").read_text())["metrics"]
    ids, labels = E.read_labels(DATA_DIR)
    _, pool, test = E.stratified_split(labels)
    held = np.concatenate([pool, test])
    files = [DATA_DIR / "gz1" / "images" / f"{i}.jpeg" for i in ids[held]]
    x = np.concatenate([opt.preprocess_colour_cutout(E.load_jpegs(files[k:k + 200]))
                        for k in range(0, len(files), 200)])
    emb = np.asarray(astromorph.load_model("embedding", providers="cpu")
                     .predict(x, progress=False)["embedding"])
    y = labels[held]
    got = {cls: round(E.precision_at_k(emb, y, np.flatnonzero(y == E.CLASS_NAMES.index(cls)), k=25), 4)
           for cls in m["precision_at_25"]}
    assert got == {cls: v["within_heldout"] for cls, v in m["precision_at_25"].items()}
    gmm5 = GaussianMixture(n_components=5, n_init=3).fit(emb)
    assert round(E.normalized_mutual_information(gmm5.predict(emb), y), 4) == m["clustering"]["nmi_k5"]


# ------------------------------------------------- provenance and persistence of heads
def _provenance_table(x, sha, version="1.0", *, labels=None):
    """A table as `astromorph.annotate(..., model="embedding")` leaves it: vectors and the
    provenance keys of the run that made them."""
    t = Table({"embedding": x})
    if labels is not None:
        t["label"] = labels
    t.meta.update(astromorph_model="embedding", astromorph_model_version=version,
                  astromorph_model_sha256=sha, astromorph_columns="embedding,emb_flags")
    if sha is None:
        del t.meta["astromorph_model_sha256"]
    return t


def test_heads_and_mixtures_refuse_vectors_of_another_embedding_model():
    """A head fitted on one embedding model's vectors was applied without a word to a table
    made by another model (or version) of the same dimension: confident, wrong
    probabilities. Fitted from a table, a head or mixture now records the model's name,
    version and sha256, and applying it to another model's table raises
    ProvenanceMismatchError naming both (unless check_provenance=False); a table that does
    not say which model made its vectors gives MissingProvenanceWarning."""
    import warnings

    from astromorph.exceptions import MissingProvenanceWarning, ProvenanceMismatchError

    x, y = blobs(n_per=30, k=2, d=8)
    a = _provenance_table(x, "a" * 64, labels=np.array(["p", "q"])[y])
    b = _provenance_table(x, "b" * 64)
    head = LabelHead(C=1.0).fit(a["embedding"], a["label"], provenance=a)
    assert head.provenance_ == {"model": "embedding", "version": "1.0", "sha256": "a" * 64}
    assert head.to_dict()["provenance"] == head.provenance_
    assert LabelHead.from_dict(head.to_dict()).provenance_ == head.provenance_
    mixture = GaussianMixture(2, n_pca=4).fit(a["embedding"], provenance=a)
    clustered, fitted = cluster_table(a, n_components=2, n_pca=4)
    assert fitted.provenance_ == mixture.provenance_ == head.provenance_
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        head.annotate(a)
        mixture.annotate(a)
    for tool in (head, mixture, fitted):
        with pytest.raises(ProvenanceMismatchError, match=f"{'a' * 64}.*{'b' * 64}"):
            tool.annotate(b)
        with pytest.raises(ProvenanceMismatchError, match="embedding 2.0"):  # no sha256
            tool.annotate(_provenance_table(x, None, version="2.0"))
        assert len(tool.annotate(b, check_provenance=False)) == len(x)
        with pytest.warns(MissingProvenanceWarning, match="embedding 1.0"):
            tool.annotate(Table({"embedding": x}))
    # the run that made the column counts, not a later run of another model
    later = a.copy()
    later.meta = {f"astromorph_run1_{k[len('astromorph_'):]}": v for k, v in a.meta.items()}
    later.meta.update(astromorph_model="morphology", astromorph_model_version="2.1",
                      astromorph_model_sha256="c" * 64, astromorph_columns="p_elliptical")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        head.annotate(later)
    later.meta["astromorph_run1_model_sha256"] = "b" * 64
    with pytest.raises(ProvenanceMismatchError):
        head.annotate(later)
    # the array API and heads fitted without provenance work as before, unchecked
    plain = LabelHead(C=1.0).fit(x, y)
    assert plain.provenance_ is None and len(plain.annotate(b)) == len(x)
    with pytest.raises(InvalidArgumentError, match="provenance"):
        LabelHead(C=1.0).fit(x, y, provenance="embedding")


def test_cli_classify_and_cluster_record_the_embedding_model(tmp_path, capsys):
    """The commands fit and apply through the same provenance check, and record the model
    of the run that made the embedding column (not a later run of another model)."""
    import warnings

    x, y = blobs(n_per=30, k=2, d=8)
    t = _provenance_table(x, "a" * 64, labels=np.where(np.arange(60) % 3 == 0,
                                                       np.array(["p", "q"])[y], ""))
    t.meta = {f"astromorph_run1_{k[len('astromorph_'):]}": v for k, v in t.meta.items()}
    t.meta.update(astromorph_model="morphology", astromorph_model_sha256="c" * 64,
                  astromorph_columns="p_elliptical")
    src = tmp_path / "a.ecsv"
    t.write(src)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["classify", str(src), "--labels", "label", "-C", "1",
                     "-o", str(tmp_path / "c.ecsv")]) == 0
        assert main(["cluster", str(src), "-k", "2", "--pca", "4",
                     "-o", str(tmp_path / "k.ecsv")]) == 0
    assert Table.read(tmp_path / "c.ecsv").meta["head_label_embedding_sha256"] == "a" * 64
    assert Table.read(tmp_path / "k.ecsv").meta["cluster_embedding_sha256"] == "a" * 64


def test_heads_and_mixtures_save_and_load(tmp_path):
    """LabelHead and GaussianMixture had no file format (a head could only be kept by
    hand through to_dict). save() writes JSON atomically (format version, classes or
    components, coefficients, provenance), refuses to overwrite unless asked; load() gives
    the same predictions, and a corrupt or wrong-kind file is InputError naming it."""
    from astromorph.exceptions import InputNotFoundError

    x, y = blobs(n_per=30, k=3, d=8)
    a = _provenance_table(x, "a" * 64, labels=np.array(["p", "q", "r"])[y])
    head = LabelHead().fit(a["embedding"], a["label"], provenance=a)
    mixture = GaussianMixture(3, n_pca=4).fit(x, provenance=a)
    for tool, cls, name in ((head, LabelHead, "head.json"),
                            (mixture, GaussianMixture, "mixture.json")):
        path = tmp_path / name
        assert tool.save(path) == path
        state = json.loads(path.read_text())
        assert state["kind"] == cls.__name__ and state["format_version"] == 1
        assert state["provenance"]["sha256"] == "a" * 64
        again = cls.load(path)
        np.testing.assert_allclose(again.predict_proba(x), tool.predict_proba(x))
        assert again.provenance_ == tool.provenance_
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".astromorph-tmp")]
        with pytest.raises(OutputExistsError, match=name):
            tool.save(path)
        tool.save(str(path), overwrite=True)
    np.testing.assert_array_equal(LabelHead.load(tmp_path / "head.json").classes_,
                                  head.classes_)
    assert LabelHead.load(tmp_path / "head.json").C_ == head.C_
    mix = GaussianMixture.load(tmp_path / "mixture.json")
    assert mix.n_components_ == 3 and mix.bic_ == mixture.bic_
    np.testing.assert_array_equal(mix.predict(x), mixture.predict(x))
    with pytest.raises(InputError, match=r"mixture\.json.*GaussianMixture"):
        LabelHead.load(tmp_path / "mixture.json")
    with pytest.raises(InputError, match=r"head\.json.*LabelHead"):
        GaussianMixture.load(tmp_path / "head.json")
    bad = tmp_path / "bad.json"
    for text in ("{not json", "[1, 2]", '{"kind": "LabelHead", "format_version": 1}',
                 '{"kind": "LabelHead", "format_version": 99}', "\xff\xfe"):
        bad.write_text(text, encoding="latin-1")
        with pytest.raises(InputError, match="bad.json"):
            LabelHead.load(bad)
        with pytest.raises(InputError, match="bad.json"):
            GaussianMixture.load(bad)
    state = json.loads((tmp_path / "mixture.json").read_text())
    state["covariances"] = (-np.asarray(state["covariances"])).tolist()
    bad.write_text(json.dumps(state))
    with pytest.raises(InputError, match="bad.json"):
        GaussianMixture.load(bad)
    with pytest.raises(InputNotFoundError, match="nothere.json"):
        LabelHead.load(tmp_path / "nothere.json")
    with pytest.raises(InvalidArgumentError, match="not fitted"):
        LabelHead().save(tmp_path / "new.json")
    assert not (tmp_path / "new.json").exists()


def test_a_head_file_with_values_that_cannot_be_used_is_refused(tmp_path):
    """LabelHead.load took a file whose scale was 0 or NaN (a hand-edited or damaged
    head) and its every probability was NaN, and one that repeated a class predicted a
    class by two columns; it is an InputError naming the file, as for a GaussianMixture
    whose values are not finite."""
    x, y = blobs(n_per=20, k=3, d=8)
    state = LabelHead(C=1.0).fit(x, np.array(["p", "q", "r"])[y]).to_dict()
    path = tmp_path / "head.json"
    for key, value in (("scale", 0.0), ("scale", -1.0), ("scale", float("nan")),
                       ("mean", float("inf")), ("coef", float("nan")),
                       ("intercept", float("nan"))):
        bad = {**state, key: np.full(np.shape(state[key]), value).tolist()}
        path.write_text(json.dumps({"kind": "LabelHead", "format_version": 1, **bad}))
        with pytest.raises(InputError, match=f"head.json.*{key}"):
            LabelHead.load(path)
    with pytest.raises(InvalidArgumentError, match="repeats a class"):
        LabelHead.from_dict({**state, "classes": ["p", "p", "r"]})
    assert LabelHead.from_dict(state).predict(x[:2]).tolist() == ["p", "p"]


def test_cli_classify_keeps_the_dtype_of_the_labels(tmp_path, capsys):
    """astromorph classify turned the label column into text before the fit, so integer
    labels 0/1/2 came back as the strings '0', '1', '2' in <prefix>_label (and in the
    printed classes), where LabelHead.fit/annotate keep the labels' dtype. The command now
    gives what the Python API gives."""
    x, y = blobs(n_per=20, k=3, d=8)
    t = Table({"embedding": x, "label": np.ma.masked_array(y.astype(np.int16),
                                                          mask=np.arange(len(y)) % 4 == 0)})
    src, out = tmp_path / "emb.ecsv", tmp_path / "out.ecsv"
    t.write(src)
    assert main(["classify", str(src), "--labels", "label", "-C", "1", "-o", str(out)]) == 0
    assert "classes [0, 1, 2]" in capsys.readouterr().err
    got = Table.read(out)["head_label"]
    labelled = ~t["label"].mask
    api = LabelHead(C=1.0).fit(x[labelled], y[labelled].astype(np.int16)).annotate(t)
    assert got.dtype == api["head_label"].dtype == np.int16
    assert_scores(got, api["head_label"], rtol=0)
    assert np.mean(np.asarray(got) == y) > 0.95


def test_a_mixture_file_with_values_that_cannot_be_used_is_refused(tmp_path):
    """GaussianMixture.load took weights that did not sum to 1 (every log-likelihood and
    BIC shifted), an asymmetric covariance (Cholesky read one triangle) and an
    explained_variance_ratio of NaN, and named no value for negative weights or a
    covariance that is not positive definite. Each is now an InputError naming the file
    and the offending value."""
    x, _ = blobs(n_per=20, k=2, d=4)
    path = tmp_path / "mixture.json"
    for covariance_type in ("full", "diag"):
        state = GaussianMixture(2, covariance_type=covariance_type, seed=0).fit(x).to_dict()
        covs = np.asarray(state["covariances"])
        asymmetric, indefinite = covs.copy(), covs.copy()
        if covariance_type == "full":
            asymmetric[1, 0, 1] += 1.0
            indefinite[1] = -np.eye(4)
        else:
            indefinite[1, 2] = -0.5
        cases = [("weights", [0.3, 0.3], r"sum to 1, got \[0\.3, 0\.3\] \(sum 0\.6\)"),
                 ("weights", [-0.5, 1.5], r"positive.*\[-0\.5, 1\.5\]"),
                 ("covariances", indefinite.tolist(), r"covariance 1 is not positive definite"),
                 ("means", np.where(np.eye(2, 4) > 0, np.nan, state["means"]).tolist(),
                  "'means'"),
                 ("covariances", covs[:1].tolist(), r"'covariances' has shape \(1,"),
                 ("explained_variance_ratio", float("nan"), "explained_variance_ratio.*nan")]
        if covariance_type == "full":
            cases.append(("covariances", asymmetric.tolist(), "covariance 1 is not symmetric"))
        for key, value, message in cases:
            path.write_text(json.dumps({"kind": "GaussianMixture", "format_version": 1,
                                        **state, key: value}))
            with pytest.raises(InputError, match=f"mixture.json.*{message}"):
                GaussianMixture.load(path)
        path.write_text(json.dumps({"kind": "GaussianMixture", "format_version": 1, **state}))
        np.testing.assert_array_equal(GaussianMixture.load(path).predict(x),
                                      GaussianMixture.from_dict(state).predict(x))


def test_mixture_states_and_fits_at_their_limits(monkeypatch):
    """The limits of GaussianMixture: weights summing to 1.001 and a covariance whose
    least eigenvalue (variance) is 0 are refused by from_dict (singular: no density);
    FewRowsWarning for full covariances on n / k = d rows per component, fewer than the
    d + 1 a d-d covariance needs, none for d + 1; and no subset BIC sweep for exactly
    max_select_rows rows (only for more)."""
    import warnings as _warnings

    from astromorph.embeddings import _mixture
    from astromorph.exceptions import FewRowsWarning

    x, _ = blobs(n_per=20, k=2, d=4)
    for covariance_type in ("full", "diag"):
        state = GaussianMixture(2, covariance_type=covariance_type).fit(x).to_dict()
        singular = np.asarray(state["covariances"])
        singular[1] = np.diag([1.0, 1.0, 1.0, 0.0]) if covariance_type == "full" else \
            [1.0, 1.0, 1.0, 0.0]
        for key, value, message in (
                ("weights", (np.asarray(state["weights"]) * 1.001).tolist(), "sum to 1"),
                ("covariances", singular.tolist(), "covariance 1 is not positive definite")):
            with pytest.raises(InvalidArgumentError, match=message):
                GaussianMixture.from_dict({**state, key: value})
    few, _ = blobs(n_per=4, k=2, d=4)  # 8 rows, 2 components, d = 4: 4 per component
    with pytest.warns(FewRowsWarning, match="4.0 rows per component, fewer than the 5"):
        GaussianMixture(2, n_pca=None).fit(few)
    enough, _ = blobs(n_per=5, k=2, d=4)  # 5 = d + 1 per component
    with _warnings.catch_warnings():
        _warnings.simplefilter("error", FewRowsWarning)
        GaussianMixture(2, n_pca=None).fit(enough)
    sizes = []
    em = _mixture.GaussianMixture._em

    def counting(self, z, k, rng, start=None):
        sizes.append(len(z))
        return em(self, z, k, rng, start=start)

    monkeypatch.setattr(_mixture.GaussianMixture, "_em", counting)
    GaussianMixture(k_range=(2, 3), n_init=1, max_select_rows=len(x)).fit(x)
    assert sizes == [len(x), len(x)]  # one fit per k, all rows, no refit


def test_maps_and_galleries_refuse_a_path_that_is_no_path():
    """gallery(result, None) and plot_map(x, None) or (x, 3) ended in a bare TypeError from
    os.fspath; they raise InvalidArgumentTypeError naming the value, before any work."""
    from astromorph.exceptions import InvalidArgumentTypeError

    x = unit_rows(12, 8)
    index = SimilarityIndex(x, table=Table({"name": np.arange(12)}))
    result = index.query(row=0, k=3)
    for path in (None, 3, b"map.png"):
        with pytest.raises(InvalidArgumentTypeError, match=repr(path).replace("'", ".")):
            plot_map(x, path)
        with pytest.raises(InvalidArgumentTypeError, match="file path"):
            index.gallery(result, path, images=np.zeros((12, 4, 4, 3)))


def test_position_queries_in_frames_that_are_no_rotation_of_the_table_s():
    """A query position in FK4 (or a table of FK4 positions queried in ICRS) found the row
    but leaked astropy's NonRotationTransformationWarning from SkyCoord.separation; an AltAz
    position without a location ended in a bare AttributeError. The position is now
    transformed to the table's frame first (no warning), or refused by
    InvalidArgumentError."""
    from astropy.coordinates import AltAz

    x = unit_rows(30, 8)
    rng = np.random.default_rng(4)
    ra, dec = rng.uniform(0, 360, 30), np.degrees(np.arcsin(rng.uniform(-1, 1, 30)))
    icrs = SkyCoord(ra, dec, unit="deg")
    plain = SimilarityIndex(x, table=Table({"ra": ra, "dec": dec},
                                           units={"ra": "deg", "dec": "deg"}))
    fk4 = SimilarityIndex(x, table=QTable({"coord": icrs.fk4}))
    for index, position in ((plain, icrs[7].fk4), (plain, icrs[7].galactic),
                            (fk4, icrs[7]), (fk4, icrs[7].fk4)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert index.query(position=position, k=2, max_separation=0.01).meta[
                "query_row"] == 7
    with pytest.raises(InvalidArgumentError, match="cannot transform the position"):
        plain.query(position=SkyCoord(10, 10, unit="deg", frame=AltAz()), k=2)


def test_a_head_refuses_labels_of_mixed_kinds():
    """Labels of an object column mixing numbers and strings (1 and "a") ended the fit in a
    bare TypeError from np.unique ('<' not supported between 'int' and 'str'); they are an
    InvalidArgumentTypeError naming the kinds, and the head stays unfitted."""
    from astromorph.exceptions import InvalidArgumentTypeError

    x, _ = blobs(n_per=3, k=2, d=4)
    head = LabelHead(C=1.0)
    with pytest.raises(InvalidArgumentTypeError, match="int, str"):
        head.fit(x, np.array(["a", 1, "b", "a", 1, "b"], dtype=object))
    with pytest.raises(InvalidArgumentError, match="not fitted"):
        head.predict(x)


def test_the_table_functions_refuse_what_is_not_a_table(tmp_path):
    """SimilarityIndex.from_table, cluster_table and the annotate of a fitted LabelHead or
    GaussianMixture took a table path (which evaluate_labels accepts) or None to a bare
    AttributeError ('str' object has no attribute 'colnames'); they raise InputError
    naming the type, as annotate does."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(20, 4))
    head = LabelHead().fit(x, ["a", "b"] * 10)
    mixture = GaussianMixture(2).fit(x)
    for bad in (str(tmp_path / "t.ecsv"), None):
        for call in (lambda: SimilarityIndex.from_table(bad), lambda: cluster_table(bad),
                     lambda: head.annotate(bad), lambda: mixture.annotate(bad)):
            with pytest.raises(InputError, match=rf"an astropy Table or QTable, got "
                                                 rf"{type(bad).__name__}"):
                call()


def test_query_refuses_booleans_as_row_or_k():
    """_whole took True as 1: query(row=True) queried row 1, k=True gave one neighbour."""
    from astromorph.exceptions import InvalidArgumentTypeError

    index = SimilarityIndex(unit_rows(5, 4))
    for kwargs in ({"row": True}, {"row": 0, "k": True}, {"row": np.True_}):
        with pytest.raises(InvalidArgumentTypeError, match="must be a whole number, got (np.)?True"):
            index.query(**kwargs)
    with pytest.raises(InvalidArgumentTypeError, match="got False"):
        index.search(unit_rows(1, 4), k=False)


def test_index_of_no_usable_vector_warns():
    """An index whose every vector is NaN/masked/zero (every row flagged) found nothing for
    every query without a word; it now warns once when built."""
    from astromorph.exceptions import UnusableInputWarning

    with pytest.warns(UnusableInputWarning, match="none of the 3 embedding vectors"):
        index = SimilarityIndex(np.full((3, 4), np.nan))
    assert len(index.query(vector=np.ones(4), k=2)) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnusableInputWarning)  # one usable row: no warning
        SimilarityIndex(np.array([[np.nan] * 4, [1, 0, 0, 0]]))
        SimilarityIndex(np.zeros((0, 4)))


def test_a_query_by_a_rows_own_vector_has_no_negative_distance():
    """float32 rounding made the cosine of a unit vector with itself 1.0000001 and its
    `distance` -1.2e-07: a cosine is at most 1, and the distance never negative."""
    rng = np.random.default_rng(0)
    v = rng.normal(size=(50, 256)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    index = SimilarityIndex.from_table(Table({"embedding": v}))
    for k in range(len(v)):
        res = index.query(vector=v[k], k=3)
        assert res["row"][0] == k
        assert np.all(res["similarity"] <= 1) and np.all(res["distance"] >= 0), res


def test_head_labels_read_from_fits_are_text_not_bytes(tmp_path):
    """A string column read back from FITS holds bytes: a head fitted on it had classes
    b'disc', columns named "head_p_b'disc'" and could not be saved (TypeError from
    json). Its classes are now the text, as for any other table."""
    x, y = blobs(n_per=20, k=2, d=8)
    t = Table({"embedding": x, "my_class": np.array(["disc", "round"])[y]})
    t.write(tmp_path / "t.fits")
    back = Table.read(tmp_path / "t.fits")
    assert back["my_class"].dtype.kind == "S"  # what FITS gives
    head = LabelHead(C=1.0).fit(back["embedding"], back["my_class"])
    assert head.classes_.tolist() == ["disc", "round"]
    assert {"head_p_disc", "head_p_round"} <= set(head.annotate(back).colnames)
    head.save(tmp_path / "head.json")
    assert LabelHead.load(tmp_path / "head.json").classes_.tolist() == ["disc", "round"]


def test_head_c_must_be_finite(tmp_path):
    """C=inf was accepted, and the fitted head could then not be saved (ValueError from
    json: inf is no JSON number); C=True was taken as 1. Both are refused now."""
    for bad in (np.inf, float("nan"), True):
        with pytest.raises(InvalidArgumentError, match="C must be a finite positive number"):
            LabelHead(C=bad)


def test_mixture_regularisation_must_be_positive():
    """reg_covar=0 was accepted: on repeated vectors (e.g. blank stamps or duplicated
    rows) a component's covariance is singular and the fit crashed with numpy's
    LinAlgError. It is refused up front now."""
    x, _ = blobs(n_per=10, k=3, d=8)
    with pytest.raises(InvalidArgumentError, match="reg_covar"):
        GaussianMixture(3, reg_covar=0)
    duplicated = np.repeat(x[:3], 10, axis=0)  # three distinct vectors
    labels = GaussianMixture(3, seed=1).fit(duplicated).predict(duplicated)
    assert len(np.unique(labels)) == 3


def test_mixture_warns_of_full_covariances_on_too_few_rows():
    """40 rows of 64-d vectors, 3 components, full covariances (16-d after the PCA): 13.3
    rows per component, each covariance singular but for reg_covar, and no word was said.
    A FewRowsWarning now gives the numbers and the way out; the fit is unchanged."""
    from astromorph.exceptions import FewRowsWarning

    x = np.random.default_rng(3).normal(size=(51, 64))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    with pytest.warns(FewRowsWarning, match=r"3 components .* on 40 rows in 16 dimensions: "
                      r"13\.3 rows per component, fewer than the 17 .*'diag'.*, fewer components"):
        GaussianMixture(3, covariance_type="full").fit(x[:40])
    with warnings.catch_warnings():
        warnings.simplefilter("error", FewRowsWarning)
        GaussianMixture(3, covariance_type="diag").fit(x[:40])  # 16 variances: enough rows
        GaussianMixture(3, covariance_type="full").fit(x)  # 17 rows per component
        GaussianMixture(3, covariance_type="full", n_pca=8).fit(x[:40])


def test_mixture_keeps_a_numpy_seed():
    """A numpy integer seed was written as None by to_dict/save (only a Python int was
    kept)."""
    x, _ = blobs(n_per=10, k=2, d=8)
    assert GaussianMixture(2, seed=np.int64(7)).fit(x).to_dict()["seed"] == 7


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_map_of_few_points_or_one_dimension_is_two_columns(method):
    """embedding_map of a single vector gave PCA coordinates of shape (1, 1), and of
    one-dimensional vectors (N, 1); the t-SNE of 1 to 3 points aimed at a perplexity
    below 1 (log(0) for one point: RuntimeWarnings). Coordinates are (N, 2) now."""
    x, _ = blobs(n_per=5, k=2, d=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for n in (1, 2, 3):
            coords, used = embedding_map(x[:n], method=method)
            assert coords.shape == (n, 2) and used == method
            assert np.all(np.isfinite(coords))
        assert embedding_map(x[:, :1], method=method)[0].shape == (len(x), 2)


def test_pca_map_does_not_form_the_singular_vectors():
    """The PCA map took an SVD of the whole (N, D) matrix, which also forms its N x D
    left singular vectors: twice the input's memory (200 MB more for 100,000 256-d
    vectors, and seconds of work). It uses the D x D scatter matrix now."""
    import tracemalloc

    x = np.random.default_rng(0).normal(size=(20000, 64))
    tracemalloc.start()
    try:
        coords, _ = embedding_map(x, method="pca")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert coords.shape == (len(x), 2)
    assert peak < 1.5 * x.nbytes


def test_tsne_holds_no_square_array():
    """The t-SNE was exact: N x N affinities and kernels, three of them at once (600 MB at
    5,000 rows) and O(N^2) time per iteration (3 min 19 s for a 5,000-row map). Its
    affinities are now over each row's 3 * perplexity nearest neighbours and its repulsion
    interpolated on a grid: memory grows as N."""
    import tracemalloc

    from astromorph.embeddings._plots import _tsne

    n = 5000
    x = np.random.default_rng(0).normal(size=(n, 8))
    tracemalloc.start()
    try:
        coords = _tsne(x, n_iter=3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert coords.shape == (n, 2) and np.all(np.isfinite(coords))
    assert peak < 0.5 * n * n * 8, peak


@pytest.mark.parametrize("scale", [1e-3, 0.3, 3.0, 20.0, 45.0])
def test_tsne_repulsion_matches_the_exact_sums(scale):
    """The grid-interpolated repulsion of the t-SNE against the exact O(N^2) sums, from a
    map smaller than the kernel's scale to one of many units, far from the origin, and
    one over 300 units wide (where boxes of 2 units once made the forces 50 per cent
    wrong): the normalisation Z and the forces to a few percent (FIt-SNE's accuracy with
    unit boxes), to 1e-3 and better on maps smaller than a box."""
    from astromorph.embeddings._plots import _repulsion

    rng = np.random.default_rng(1)
    y = rng.normal(size=(400, 2)) * scale + 1000.0
    y[:150] += 3 * scale  # two groups
    d = y[:, None, :] - y[None, :, :]
    w = 1.0 / (1.0 + (d ** 2).sum(-1))
    np.fill_diagonal(w, 0.0)
    z, rep = _repulsion(y, {})
    exact = ((w ** 2)[:, :, None] * d).sum(1)
    tolerance = 1e-5 if scale < 0.01 else 1e-3 if scale < 1 else 0.05
    assert abs(z - w.sum()) / w.sum() < tolerance
    assert np.linalg.norm(rep - exact) / np.linalg.norm(exact) < tolerance


def test_tsne_map_is_the_same_at_every_run():
    """The t-SNE starts from the PCA coordinates: one map for one input, whatever the
    seed (which places the points only when they all coincide)."""
    x, y = blobs(n_per=30, k=3, d=16)
    first = embedding_map(x, method="tsne", seed=0)[0]
    np.testing.assert_array_equal(first, embedding_map(x, method="tsne", seed=5)[0])
    d2 = ((first[:, None] - first[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    assert np.mean(y[d2.argmin(1)] == y) > 0.95
    same = embedding_map(np.ones((5, 4)), method="tsne", seed=3)[0]
    assert np.all(np.isfinite(same)) and same.shape == (5, 2)


def _tsne_kl(x, coords):
    """KL divergence of a t-SNE map ``coords`` of ``x`` from the map's own input affinities
    (dense: a few hundred rows)."""
    from astromorph.embeddings._mixture import _pca
    from astromorph.embeddings._plots import _affinities

    n = len(x)
    z = x - x.mean(0)
    z = z @ _pca(z, min(50, z.shape[1]))[0].T
    rows, cols, p = _affinities(z, max(1.0, min(30.0, (n - 1) / 3)))
    big_p = np.zeros((n, n))
    np.add.at(big_p, (rows, cols), p)
    w = 1.0 / (1.0 + ((coords[:, None] - coords[None]) ** 2).sum(-1))
    np.fill_diagonal(w, 0.0)
    q = w / w.sum()
    keep = big_p > 0
    return float(np.sum(big_p[keep] * np.log(big_p[keep] / q[keep])))


@pytest.mark.parametrize("kind, most", [("blob", 0.75), ("clusters", 0.18)])
def test_tsne_of_few_rows_converges(kind, most):
    """The t-SNE's learning rate was n / 48 with scikit-learn's floor of 50: ten times the
    largest stable step on 60 rows, whose points overshot through the exaggerated phase
    and, on a 60-row GZ1 map, were flung far from the rest late on (three points 7 times
    the median radius out). The KL divergence of these 60-row maps was 0.92 and 0.25; it
    is 0.61 and 0.13 with the rate n / 48 alone."""
    rng = np.random.default_rng(0)
    if kind == "blob":  # one anisotropic cloud of unit vectors
        x = rng.normal(size=(60, 256)) * np.geomspace(1, 0.05, 256)
        x[:, 0] += 3
    else:  # four overlapping groups
        x = rng.normal(size=(4, 256))[np.arange(60) % 4] \
            + rng.normal(scale=3, size=(60, 256)) * np.geomspace(1, 0.1, 256)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    coords, _ = embedding_map(x, method="tsne")
    assert _tsne_kl(x, coords) < most


@requires_model
@pytest.mark.data
@pytest.mark.skipif(not (DATA_DIR / "gz1" / "images").is_dir(), reason="no GZ1 data")
def test_tsne_map_of_60_gz1_galaxies_has_no_stray_points():
    """The reviewer's map: 60 GZ1 cutouts (the first by name) embedded with the shipped
    model; three of its t-SNE points lay 7 times the median distance from the centre (KL
    divergence 0.84); now none lies beyond twice it (KL 0.25)."""
    files = sorted((DATA_DIR / "gz1" / "images").glob("*.jpeg"))[:60]
    out = astromorph.predict_files("embedding", files, progress=False)
    x = np.asarray(out["embedding"], dtype=np.float64)
    coords, used = embedding_map(x, method="tsne")
    r = np.linalg.norm(coords - np.median(coords, 0), axis=1)
    assert used == "tsne" and r.max() < 2 * np.median(r)
    assert _tsne_kl(x, coords) < 0.4


def test_one_class_error_names_it_and_bad_prefix_fails_before_clustering(monkeypatch):
    """A head fitted on one class said only "got 1" (not which label); cluster_table
    with a prefix that is no column name fitted the whole mixture before refusing it."""
    x, _ = blobs(n_per=10, k=2, d=8)
    with pytest.raises(InvalidArgumentError, match="got 1: 'spiral'"):
        LabelHead(C=1.0).fit(x, ["spiral"] * len(x))

    def no_fit(*args, **kwargs):
        raise AssertionError("fitted before the prefix was checked")

    monkeypatch.setattr(GaussianMixture, "fit", no_fit)
    for bad in (5, ""):
        with pytest.raises(InvalidArgumentError, match="prefix"):
            cluster_table(Table({"embedding": x}), prefix=bad)


def test_a_failed_fit_leaves_a_fitted_head_or_mixture_as_it_was():
    """A fit that failed half-way (one class; all vectors equal) had already replaced
    part of the fitted state: a fresh head then passed the "fitted?" check and crashed
    with AttributeError, and a fitted one named its old coefficients with the new classes;
    a fitted mixture projected with the new mean and axes. Both are left as they were."""
    x, y = blobs(n_per=20, k=2, d=8)
    fresh = LabelHead(C=1.0)
    with pytest.raises(InvalidArgumentError, match="two classes"):
        fresh.fit(x, ["a"] * len(x))
    with pytest.raises(InvalidArgumentError, match="not fitted"):
        fresh.predict(x)
    head = LabelHead(C=1.0).fit(x, np.array(["p", "q"])[y])
    before = head.predict_proba(x)
    with pytest.raises(InvalidArgumentError, match="two classes"):
        head.fit(x + 5, ["z"] * len(x))
    assert head.classes_.tolist() == ["p", "q"]
    np.testing.assert_array_equal(head.predict_proba(x), before)
    mixture = GaussianMixture(2, n_pca=4).fit(x)
    before = mixture.predict_proba(x)
    with pytest.raises(InputError, match="all the same vector"):
        mixture.fit(np.ones((20, 8)))
    np.testing.assert_array_equal(mixture.predict_proba(x), before)


def test_index_of_no_dimension_is_refused_and_no_query_is_no_rows():
    """SimilarityIndex([]) built a 0 x 0 index no query could match; search([]) raised
    'dimension 0' where LabelHead/GaussianMixture.predict([]) give no rows."""
    with pytest.raises(InvalidArgumentError, match=r"at least one dimension, got shape \(0, 0\)"):
        SimilarityIndex([])
    index = SimilarityIndex(unit_rows(3, 4))
    rows, sim = index.search([], k=2)
    assert rows.shape == (0, 2) and sim.shape == (0, 2)
    assert len(SimilarityIndex(np.zeros((0, 4)))) == 0  # an empty table's column: allowed




def test_mixture_refuses_repeated_vectors_whose_mean_rounds():
    """The check for "all the same vector" looked at the variance of the projected rows,
    which is not exactly zero when the mean of a repeated float64 vector rounds (e.g.
    averaged or converted vectors; float32 ones sum exactly): 50 copies of one unit
    vector were fitted as clusters of rounding noise. Identical rows are now refused
    whatever their values and dtype."""
    v = np.random.default_rng(0).standard_normal(32)
    x = np.tile(v / np.linalg.norm(v), (50, 1))
    for n_components, n_pca in ((None, 16), (2, 16), (2, None)):
        with pytest.raises(InputError, match="all the same vector"):
            GaussianMixture(n_components, n_pca=n_pca).fit(x)
    with pytest.raises(InputError, match="all the same vector"):
        cluster_table(Table({"embedding": x}))


def test_index_norms_do_not_overflow_or_underflow_in_float32():
    """The norms of the rows and of the queries were computed in float32, whose squares
    overflow above about 1e19 and underflow below about 1e-23: such rows, finite and
    non-zero, were silently never returned (no warning unless every row was lost) and such
    queries refused as zero. Norms are now computed in float64."""
    x = unit_rows(10, 8, seed=1)
    x[3] *= 1e20
    x[5] *= 1e-23
    index = SimilarityIndex(x)
    assert index.valid.all()
    for row in (3, 5):
        rows, sims = index.search(x[row], k=1)
        assert rows[0, 0] == row
        np.testing.assert_allclose(sims[0, 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(index.vectors, axis=1), 1.0, atol=1e-6)


def test_index_norms_are_exact_where_float32_squares_are_subnormal():
    """Rows and queries of norm 1e-21 or 1e-22 have squares (1e-42, 1e-44) that float32
    holds only as subnormal numbers, a few digits or fewer: their float32 norms are 0.1 %
    and 8 % off, not zero, so only a check for zero or infinite norms would keep them,
    and their cosines would be as far off. They are normalised in float64 like rows of
    1e-23: unit vectors, and the cosines of the float64 vectors."""
    x = unit_rows(10, 8, seed=1)
    x[3] *= np.float32(1e-21)
    x[5] *= np.float32(1e-22)
    index = SimilarityIndex(x)
    np.testing.assert_allclose(np.linalg.norm(index.vectors, axis=1), 1.0, atol=1e-6)
    x64 = x.astype(np.float64)
    x64 /= np.linalg.norm(x64, axis=1, keepdims=True)
    for row in (3, 5):
        rows, sims = index.search(x[row], k=10)  # a query of such a norm too
        np.testing.assert_allclose(sims[0], x64[rows[0]] @ x64[row], atol=1e-6)
        assert rows[0, 0] == row


def test_index_renormalises_vectors_a_little_off_unit_length():
    """Vectors within 1e-4 of unit length were indexed as they were, so the similarity was
    the dot product, not the cosine: off by up to 1e-4, enough to swap neighbours whose
    cosines differ by less (common among a million 256-d vectors). Only vectors unit to
    float32 rounding are now kept as they are."""
    q = np.array([1.0, 0.0, 0.0])
    far = np.array([0.8, 0.6, 0.0]) * (1 + 9e-5)  # cosine 0.8
    near = np.array([0.80004, np.sqrt(1 - 0.80004 ** 2), 0.0]) * (1 - 9e-5)  # 0.80004
    rows, sims = SimilarityIndex(np.array([far, near])).search(q, k=2)
    assert rows.tolist() == [[1, 0]]
    np.testing.assert_allclose(sims[0], [0.80004, 0.8], atol=2e-7)
    x = unit_rows(50, 16)  # model output: kept as it is (no copy)
    assert SimilarityIndex(x).vectors is x


def _drawn_figures(monkeypatch, module):
    """The figures ``module`` saves (its ``save_figure``), drawn without rendering."""
    drawn = []
    real = module.save_figure

    def record(fig, *args, **kwargs):
        drawn.append(fig)
        return real(fig, *args, **kwargs)

    monkeypatch.setattr(module, "save_figure", record)
    return drawn


def test_gallery_says_what_it_shows(tmp_path, monkeypatch):
    """A gallery had no title unless title= was given (which model's vectors, which query,
    how many neighbours of how many rows) and its tiles gave row numbers only, not the
    source's name; with many tiles a given title was drawn over the first row of tiles.
    Now the default title says it, each tile names its row, and the title stays above."""
    pytest.importorskip("matplotlib")
    import astromorph.embeddings._plots as plots

    drawn = _drawn_figures(monkeypatch, plots)
    t = catalogue(250)
    t["name"] = [f"NGC {1000 + i}" for i in range(250)]
    t.meta.update(astromorph_model="embedding", astromorph_model_version="9.9.9")
    index = SimilarityIndex.from_table(t)
    pictures = np.zeros((250, 8, 8, 3), np.uint8)
    for k in (3, 199):
        index.gallery(index.query(row=3, k=k), tmp_path / f"g{k}.png", images=pictures)
        fig = drawn[-1]
        title = fig._suptitle.get_text().replace("\n", " ")
        assert f"{k} nearest neighbours of row 3 among 250 rows" in title
        assert "embedding v9.9.9" in title
        tiles = [ax.get_title() for ax in fig.axes if ax.get_title()]
        assert len(tiles) == k + 1 and tiles[0].endswith("NGC 1003")
        assert all("NGC 1" in tile for tile in tiles)
        fig.draw_without_rendering()
        top = max(ax.get_window_extent().y1 for ax in fig.axes)
        heads = [ax.title.get_window_extent().y1 for ax in fig.axes if ax.get_title()]
        assert fig._suptitle.get_window_extent().y0 >= max([top] + heads)
        assert fig._suptitle.get_window_extent().x0 >= 0  # not cut off at the sides
        assert fig._suptitle.get_window_extent().x1 <= fig.bbox.x1


def test_plot_map_legend_and_title(tmp_path, monkeypatch):
    """The legend sat inside the axes over the points ('best' place, 12 clusters covered a
    corner); beyond 20 categories tab20's colours came round again, two labels looking
    alike; a given title dropped the method and the number of rows drawn. Now the legend
    is outside the axes, every category has its own colour and marker, and the title keeps
    the method and the rows."""
    pytest.importorskip("matplotlib")
    import astromorph.embeddings._plots as plots

    drawn = _drawn_figures(monkeypatch, plots)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8))
    plot_map(x, tmp_path / "m.png", labels=np.arange(400) % 37, method="pca",
             title="my clusters")
    (fig,) = drawn
    (ax,) = fig.axes
    assert ax.get_title() == "my clusters\npca projection of 400 rows"
    assert "arbitrary units" in ax.get_xlabel()
    looks = {(tuple(c.get_facecolor()[0]), c.get_paths()[0].vertices.tobytes())
             for c in ax.collections}
    assert len(looks) == 37
    legend = ax.get_legend()
    assert len(legend.get_texts()) == 37 and legend.get_title().get_text()
    fig.draw_without_rendering()
    box, frame = legend.get_window_extent(), ax.get_window_extent()
    assert box.x0 >= frame.x1 and box.x1 <= fig.bbox.x1 and box.y0 >= fig.bbox.y0


def test_plot_map_legend_names_the_labels_and_title_is_not_smaller(tmp_path, monkeypatch):
    """The map's legend was titled 'label (rows)' even for `astromorph cluster`'s clusters,
    and its title was 9 pt under axis labels of 10. The legend is titled with the labels'
    name (a column's name; 'cluster' from the command line; 'label' for a plain array) and
    the title is as large as the axis labels."""
    pytest.importorskip("matplotlib")
    import astromorph.embeddings._plots as plots
    from astropy.table import Column

    drawn = _drawn_figures(monkeypatch, plots)
    x, y = blobs(n_per=10, k=3, d=8)
    plot_map(x, tmp_path / "a.png", labels=y, method="pca")
    plot_map(x, tmp_path / "b.png", labels=Column(y, name="class"), method="pca")
    t = Table({"embedding": x.astype(np.float32)})
    t.write(tmp_path / "t.ecsv")
    assert main(["cluster", str(tmp_path / "t.ecsv"), "-k", "3", "-o", str(tmp_path / "c.ecsv"),
                 "--map", str(tmp_path / "c.png"), "--map-method", "pca", "-q"]) == 0
    titles = [fig.axes[0].get_legend().get_title().get_text() for fig in drawn]
    assert titles == ["label (rows)", "class (rows)", "cluster (rows)"]
    for fig in drawn:
        ax = fig.axes[0]
        assert ax.title.get_fontsize() >= ax.xaxis.label.get_fontsize()


def test_gallery_draws_fits_stamps_north_up(tmp_path, monkeypatch):
    """A FITS stamp's first row is its bottom (north up for a usual WCS), but the gallery drew
    every picture top row first: FITS stamps came out upside down, mirrored. They are now
    drawn as ds9 shows them; a PNG keeps its top row at the top."""
    pytest.importorskip("matplotlib")
    from astropy.io import fits
    from PIL import Image

    data = np.zeros((24, 24), np.float32)
    data[-4:] = 100.0  # bright at the top of the sky (last FITS rows)
    fits.writeto(tmp_path / "s.fits", data)
    png = np.zeros((24, 24, 3), np.uint8)
    png[:4] = 255  # bright at the top of the picture (first rows)
    Image.fromarray(png).save(tmp_path / "p.png")
    t = catalogue(3)
    t["source"] = [str(tmp_path / "s.fits"), str(tmp_path / "p.png"), str(tmp_path / "s.fits")]
    shown = _shown_pictures(monkeypatch)
    index = SimilarityIndex.from_table(t)
    index.gallery(index.query(row=0, k=2), tmp_path / "g.png")
    assert len(shown) == 3
    for picture in shown:
        rows = picture.reshape(-1, 24, 24, picture.shape[-1])[0] if picture.ndim == 3 and \
            picture.shape[-1] == 3 else picture.reshape(-1, 24, 24)[0]
        top, bottom = np.asarray(rows[:4], float).mean(), np.asarray(rows[-4:], float).mean()
        assert top > bottom


@pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")  # HIERARCH keys
def test_commands_find_the_provenance_of_fits_tables_they_wrote(tiny_embedding, tmp_path):
    """FITS upper-cases standard header keywords of 8 characters or fewer, so predict's
    older ``model`` key read back as ``MODEL``; write_table now writes a short key that is
    not in upper case as a HIERARCH card, which keeps its case. classify, cluster and
    similar find the model that made the vectors in a FITS table as in an ECSV one."""
    from PIL import Image

    from astromorph.exceptions import MissingProvenanceWarning

    for s in range(12):
        Image.fromarray(colour_cutout(s)).save(tmp_path / f"g{s:02d}.png")
    emb = tmp_path / "emb.fits"
    assert main(["predict", tiny_embedding, str(tmp_path / "*.png"), "-o", str(emb),
                 "--no-progress"]) == 0
    back = Table.read(emb)
    assert back.meta["astromorph_model"] == tiny_embedding
    assert back.meta["model"] == tiny_embedding and "MODEL" not in back.meta
    back["label"] = ["a", "b", "c"] * 4
    back.write(tmp_path / "lab.fits")
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingProvenanceWarning)
        assert main(["classify", str(tmp_path / "lab.fits"), "--labels", "label", "-C", "1",
                     "-o", str(tmp_path / "c.fits")]) == 0
        assert main(["cluster", str(emb), "-k", "2", "-o", str(tmp_path / "k.fits")]) == 0
        assert main(["similar", str(emb), "--image", str(tmp_path / "g03.png"), "-k", "2",
                     "--model", tiny_embedding, "-o", str(tmp_path / "q.fits")]) == 0
    classified = Table.read(tmp_path / "c.fits").meta
    assert classified["head_label_embedding_model"] == tiny_embedding
    assert classified["head_label_classes"] == "a,b,c"
    assert Table.read(tmp_path / "k.fits").meta["cluster_embedding_model"] == tiny_embedding
    found = Table.read(tmp_path / "q.fits")
    assert found["row"][0] == 3 and found.meta["astromorph_model"] == tiny_embedding
    assert found.meta["k"] == 2 and "K" not in found.meta  # (a HIERARCH card)


def test_classes_with_too_few_labelled_rows_are_named(tmp_path):
    """A class with one labelled row (or fewer than the folds of the cross-validation that
    chooses C) was fitted without a word: its row is never in the training part of the fold
    that holds it out, so C is chosen blind to it. A FewRowsWarning now names each such
    class and its count, from the API and the command line alike; with C given, only a
    class of one row is named."""
    from astromorph.exceptions import FewRowsWarning

    x, y = blobs(n_per=20, k=3, d=8)
    labels = np.array(["E", "S", "Irr"])[y]
    keep = (labels != "Irr") | (np.cumsum(labels == "Irr") <= 1)  # one Irr row, two of S0
    x, labels = x[keep], labels[keep].astype("U3")
    labels[np.flatnonzero(labels == "S")[:2]] = "S0"
    with pytest.warns(FewRowsWarning) as caught:
        LabelHead().fit(x, labels)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "'Irr' (1 row)" in message and "'S0' (2 rows)" in message, message
    assert "'E'" not in message and "5 folds" in message, message
    with pytest.warns(FewRowsWarning, match=r"'Irr' \(1 row\)") as caught:
        LabelHead(C=1.0).fit(x, labels)
    assert "S0" not in str(caught[0].message)
    with warnings.catch_warnings():  # enough rows of every class: not a word
        warnings.simplefilter("error", FewRowsWarning)
        LabelHead().fit(x[labels == "E"].tolist() + x[labels == "S"].tolist(),
                        ["E"] * int((labels == "E").sum()) + ["S"] * int((labels == "S").sum()))
    t = Table({"embedding": x, "label": labels})
    t.write(tmp_path / "lab.ecsv")
    with pytest.warns(FewRowsWarning, match=r"'Irr' \(1 row\)"):
        assert main(["classify", str(tmp_path / "lab.ecsv"), "--labels", "label",
                     "-o", str(tmp_path / "out.ecsv")]) == 0


def test_search_similarities_stay_within_the_cosine_range():
    """Identical vectors gave ``search`` a similarity of 1.0000001 (float32 sums; ``query``
    clipped it, ``search`` did not): both now stay within [-1, 1], padding still -inf."""
    x = np.random.default_rng(2).normal(size=(40, 64)).astype(np.float32)
    x[7] = x[3]
    index = SimilarityIndex(x)
    rows, sims = index.search(x, k=45)
    assert np.isfinite(sims[:, :40]).all() and (np.abs(sims[:, :40]) <= 1).all()
    assert np.isneginf(sims[:, 40:]).all() and (rows[:, 40:] == -1).all()
    assert set(rows[3, :2]) == {3, 7}


def test_mixture_state_messages_name_the_field_and_value():
    """A NaN weight gave "'weights' has shape (2,) (or values that are not finite),
    expected (2,)": the shape it had was the one expected and no value was named; a
    field of text ("abc") gave "could not convert string to float: 'abc'" without the
    field; a numpy float explained_variance_ratio (np.float32(0.5), as a state built
    from numpy values holds) was refused as no number. The messages now say which field
    and which value; numpy numbers are numbers."""
    x, _ = blobs(n_per=20, k=2, d=4)
    state = GaussianMixture(2, covariance_type="diag", seed=0).fit(x).to_dict()
    with pytest.raises(InvalidArgumentError, match=r"'weights' holds values that are not "
                       r"finite: \[nan, "):
        GaussianMixture.from_dict({**state, "weights": [float("nan"), 1.0]})
    with pytest.raises(InvalidArgumentError, match="'means'.*'abc'"):
        GaussianMixture.from_dict({**state, "means": "abc"})
    for ratio in (np.float32(0.5), np.float64(0.5), np.int64(1)):
        again = GaussianMixture.from_dict({**state, "explained_variance_ratio": ratio})
        assert again.explained_variance_ratio_ == float(ratio)
        assert type(again.explained_variance_ratio_) is float
    with pytest.raises(InvalidArgumentError, match="explained_variance_ratio.*True"):
        GaussianMixture.from_dict({**state, "explained_variance_ratio": True})


def test_mixture_chooses_k_on_a_subset_then_fits_it_on_all_rows(monkeypatch):
    """Without n_components, the BIC sweep runs on at most max_select_rows of the fitted
    rows (a sweep over 11 k on 100,000 rows took many minutes), then the chosen k is fitted
    on all of them; a table no larger than max_select_rows is fitted as before."""
    from astromorph.embeddings import _mixture

    x, y = blobs(n_per=150, k=3, d=16)
    seen = []
    em = _mixture.GaussianMixture._em

    def counting(self, z, k, rng, start=None):
        seen.append((len(z), k))
        return em(self, z, k, rng, start=start)

    monkeypatch.setattr(_mixture.GaussianMixture, "_em", counting)
    gmm = GaussianMixture(k_range=range(2, 6), max_select_rows=200, n_init=2, n_pca=4).fit(x)
    assert gmm.n_components_ == 3 and sorted(gmm.bic_) == [2, 3, 4, 5]
    assert seen[:8] == [(200, k) for k in (2, 3, 4, 5) for _ in range(2)]
    assert seen[8:] == [(450, 3)]  # the chosen k on all the rows, from the subset's fit
    assert nmi(gmm.predict(x), y) > 0.95
    seen.clear()
    whole = GaussianMixture(k_range=range(2, 6), n_init=2, n_pca=4).fit(x)  # 450 <= 20,000
    assert {n for n, _ in seen} == {450} and len(seen) == 8
    assert whole.n_components_ == 3


def _object_column(rows):
    """A 1-d object array holding ``rows`` (arrays, lists or None) one per cell."""
    out = np.empty(len(rows), object)
    for i, r in enumerate(rows):
        out[i] = r
    return out


def test_object_embedding_column_from_pandas_parquet(tmp_path, capsys):
    """A Parquet file written by pandas (a column of per-row arrays, read by astropy as an
    object column) was refused with "embeddings must be numbers, got object values"; its
    vectors are now stacked, a None row (a null) being a masked row."""
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    x, y = blobs(n_per=20, k=3, d=8)
    rows = list(x)
    rows[7] = None
    path = tmp_path / "pandas.parquet"
    pd.DataFrame({"id": np.arange(len(x)), "embedding": rows,
                  "label": np.array(["a", "b", "c"])[y]}).to_parquet(path)
    with warnings.catch_warnings():  # astropy's own, harmless: astromorph's readers skip it
        warnings.filterwarnings("ignore", message="No table::len::label found in metadata")
        table = Table.read(path)
    assert table["embedding"].dtype == object  # as the user gets it
    out = tmp_path / "nn.ecsv"
    assert main(["similar", str(path), "--query", "5", "-k", "4", "-o", str(out)]) == 0
    xn = x.copy()
    xn[7] = np.nan
    ref = SimilarityIndex(xn)
    assert Table.read(out)["row"].tolist() == ref.query(row=5, k=4)["row"].tolist()
    assert main(["cluster", str(path), "-k", "3", "-o", str(tmp_path / "c.ecsv")]) == 0
    clustered = Table.read(tmp_path / "c.ecsv")
    assert clustered["cluster"].mask[7] and not clustered["cluster"].mask[:7].any()
    assert main(["classify", str(path), "--labels", "label", "-o",
                 str(tmp_path / "l.ecsv")]) == 0
    # the Python API
    index = SimilarityIndex.from_table(table)
    assert index.vectors.dtype == np.float32 and not index.valid[7] and index.valid.sum() == 59
    assert index.query(row=5, k=4)["row"].tolist() == ref.query(row=5, k=4)["row"].tolist()
    some = [0, 1, 20, 21, 40, 41]
    head = LabelHead().fit(table["embedding"][some], y[some])
    assert (head.predict(x) == y).mean() > 0.95
    assert head.annotate(table)["head_label"].mask.tolist() == [False] * 7 + [True] + \
        [False] * 52
    gmm = GaussianMixture(n_components=3, seed=0).fit(table["embedding"])
    xn = x.copy()
    xn[7] = np.nan
    same = GaussianMixture(n_components=3, seed=0).fit(xn)
    assert gmm.predict(x).tolist() == same.predict(x).tolist()
    # a Table built from a list of arrays / lists, as a plain object array
    obj = _object_column([list(map(float, v)) for v in x])
    assert np.array_equal(SimilarityIndex(obj).vectors, SimilarityIndex(x).vectors)


@pytest.mark.parametrize("cell, says", [
    (np.zeros(5, np.float32), r"row 3 .*5 values.* 8"),
    (["a"] * 8, r"row 3 .*not numbers"),
    (np.zeros((2, 4)), r"row 3 .*shape \(2, 4\)"),
    ("abcdefgh", r"row 3 "),
    (3.0, r"row 3 .*not a vector"),
])
def test_object_embedding_column_refuses_bad_cells(cell, says):
    """An object column whose cells are not all equal-length 1-d vectors of numbers is
    refused with InputError naming the first such row and what it holds."""
    x, _ = blobs(n_per=5, k=2, d=8)
    rows = list(x)
    rows[3] = cell
    rows[6] = np.zeros(3)  # a later bad row: the first is named
    table = Table({"embedding": _object_column(rows)})
    for call in (lambda: SimilarityIndex.from_table(table),
                 lambda: GaussianMixture(n_components=2).fit(table["embedding"]),
                 lambda: LabelHead().fit(table["embedding"], np.arange(10) % 2)):
        with pytest.raises(InputError, match=says):
            call()


def test_label_head_probability_descriptions_name_the_class_as_given():
    """The probability columns' descriptions named the class by numpy's repr
    (``LabelHead probability of class np.str_('disc')``) rather than as given."""
    x, y = blobs(n_per=20, k=2, d=8)
    head = LabelHead(C=1.0).fit(x, np.array(["Sa/Sb", "disc"])[y])
    out = head.annotate(Table({"embedding": x}), prefix="m")
    assert out["m_p_Sa_Sb"].description == "LabelHead probability of class 'Sa/Sb'"
    assert out["m_p_disc"].description == "LabelHead probability of class 'disc'"
    ints = LabelHead(C=1.0).fit(x, y).annotate(Table({"embedding": x}), prefix="n")
    assert ints["n_p_1"].description == "LabelHead probability of class '1'"


def test_position_queries_parse_the_table_s_positions_once_and_see_every_change(monkeypatch):
    """Every position query read the table's RA/Dec columns into a SkyCoord again (0.1-0.4 s
    on a million rows). They are read once and kept with a copy of the columns read; a query
    on a table whose position columns changed in any way (a value edited in place, a unit, a
    mask, a column replaced, renamed or added) reads them again, and never returns a row of
    the old positions."""
    import astromorph._annotate as annotate_module

    calls = []
    real = annotate_module._positions

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(annotate_module, "_positions", counting)
    rng = np.random.default_rng(5)
    n = 200
    t = Table({"ra": rng.uniform(0, 360, n), "dec": np.degrees(np.arcsin(rng.uniform(-1, 1, n))),
               "embedding": unit_rows(n, 8)}, units={"ra": "deg", "dec": "deg"})
    index = SimilarityIndex.from_table(t)
    for row in (3, 50, 199):
        assert index.row_of_position((t["ra"][row], t["dec"][row]))[0] == row
    assert index.query(position=(t["ra"][7], t["dec"][7]), k=2).meta["query_row"] == 7
    assert len(calls) == 1  # read once for the four queries
    assert index.row_of_position((10.0, 20.0), ra_col="ra", dec_col="dec")[0] == \
        index.row_of_position((10.0, 20.0))[0]  # other options: read for those
    calls.clear()
    # an in-place edit of one value is seen
    t["ra"][5], t["dec"][5] = 123.0, 45.0
    row, sep = index.row_of_position((123.0, 45.0))
    assert row == 5 and sep.to_value(u.arcsec) < 1e-6
    # a unit changed: the same numbers are hours now
    t["ra"].unit = "hourangle"
    assert index.row_of_position((123.0 * 15 % 360, 45.0))[0] == 5
    t["ra"].unit = "deg"
    # a mask: row 5 has no position any more
    t["ra"] = MaskedColumn(t["ra"], mask=np.arange(n) == 5)
    assert index.row_of_position((123.0, 45.0))[0] != 5
    t["ra"].mask[5] = False  # unmasked in place
    assert index.row_of_position((123.0, 45.0))[0] == 5
    # a column replaced by another object of equal values: the same row
    t["dec"] = t["dec"].copy()
    assert index.row_of_position((123.0, 45.0))[0] == 5
    # a SkyCoord column added takes precedence over RA/Dec columns
    coords = SkyCoord(t["ra"], t["dec"], unit="deg")
    coords = SkyCoord(np.roll(coords.ra.deg, 1), np.roll(coords.dec.deg, 1), unit="deg")
    t["coord"] = coords
    assert index.row_of_position((123.0, 45.0))[0] == 6
    del t["coord"]
    t.rename_column("ra", "RAJ2000")
    t.rename_column("dec", "DEJ2000")
    assert index.row_of_position((123.0, 45.0))[0] == 5
    assert len(calls) == 6  # once per change


def test_position_queries_find_the_row_of_least_separation():
    """The nearest row, found by unit vectors (the largest dot product), is the one of least
    astropy separation (the first by row where several are as near: duplicate positions),
    with the same separation; rows without an embedding or a position are never found."""
    rng = np.random.default_rng(11)
    n = 5000
    ra, dec = rng.uniform(0, 360, n), np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    ra[100:110], dec[100:110] = ra[3], dec[3]  # duplicates of row 3 (after it)
    ra[20], dec[20] = ra[4000], dec[4000]  # a duplicate before row 4000
    ra[30], dec[30] = ra[31] + 1e-9, dec[31]  # 3.6 microarcsec apart
    dec[40] = np.nan  # no position
    x = unit_rows(n, 4)
    x[50] = np.nan  # no embedding
    t = Table({"ra": ra, "dec": dec}, units={"ra": "deg", "dec": "deg"})
    index = SimilarityIndex(x, table=t)
    coords = SkyCoord(np.where(np.isfinite(dec), ra, 0), np.nan_to_num(dec), unit="deg")
    ok = np.flatnonzero(np.isfinite(dec) & np.isfinite(x).all(axis=1))
    targets = [SkyCoord(ra[r], dec[r], unit="deg") for r in (3, 4000, 30, 31, 50)]
    targets += [SkyCoord(ra[31] + 0.5e-9, dec[31], unit="deg")]
    targets += list(SkyCoord(rng.uniform(0, 360, 200), rng.uniform(-90, 90, 200), unit="deg"))
    targets += [SkyCoord(ra[50], dec[50], unit="deg").galactic,  # another frame
                SkyCoord(ra[7] + 180, -dec[7], unit="deg")]  # antipode of row 7
    for target in targets:
        sep = target.icrs.separation(coords[ok]).to_value(u.arcsec)
        row, found = index.row_of_position(target)
        assert row == ok[np.argmin(sep)]
        assert abs(found.to_value(u.arcsec) - sep.min()) < 1e-9
    assert index.row_of_position(targets[0])[0] == 3 and \
        index.row_of_position(targets[1])[0] == 20


def test_position_query_nearest_row_where_dot_products_round_the_wrong_way():
    """Two rows 13.42 and 13.58 mas from the position: the float64 dot product of their
    unit vectors with the position's (1 - 2e-15) ranks the farther one first by an ulp,
    so the nearest is taken among all within 1e-13 of the largest, by astropy's
    separation: row 0. A ``max_separation`` equal to that separation accepts it (the
    limit is on rows farther)."""
    ra0, dec0 = 274.2452764598691, 43.408519843904145
    t = Table({"ra": [274.2452812678539, 274.24527169771085],
               "dec": [43.40851853774507, 43.40852134748672]}, units={"ra": "deg", "dec": "deg"})
    target = SkyCoord(ra0, dec0, unit="deg")
    sep = target.separation(SkyCoord(t["ra"], t["dec"])).to(u.mas)
    assert sep[0] < sep[1] - 0.1 * u.mas  # 13.42 and 13.58 mas
    index = SimilarityIndex(unit_rows(2, 4), table=t)
    row, found = index.row_of_position(target)
    assert row == 0
    assert abs(found - sep[0]) < 1e-9 * u.arcsec
    assert index.row_of_position(target, max_separation=found)[0] == 0
    assert index.query(position=target, k=1, max_separation=found).meta["query_row"] == 0
    with pytest.raises(InputError, match="max_separation"):
        index.row_of_position(target, max_separation=found * (1 - 1e-9))


def test_cli_classify_checks_the_columns_of_a_fits_label_column_before_the_fit(
        tmp_path, capsys, monkeypatch):
    """A FITS table's text labels come back as bytes: the check for existing probability
    columns before the fit named them ``head_p_b_edge_on_`` and so missed an existing
    ``head_p_edge_on`` (refused only after the fit, by annotate)."""
    from astromorph.embeddings import _head

    x, y = blobs(n_per=10, k=2, d=8)
    t = Table({"embedding": x, "label": np.array(["edge_on", "spiral"])[y]})
    t["head_p_edge_on"] = np.zeros(len(t))
    t.write(tmp_path / "lab.fits")
    assert Table.read(tmp_path / "lab.fits")["label"].dtype.kind == "S"
    work = []
    monkeypatch.setattr(_head.LabelHead, "fit", lambda *a, **k: work.append(a))
    assert main(["classify", str(tmp_path / "lab.fits"), "--labels", "label",
                 "-o", str(tmp_path / "out.ecsv")]) == 2
    assert "head_p_edge_on" in capsys.readouterr().err
    assert work == [] and not (tmp_path / "out.ecsv").exists()


def test_query_result_leaves_out_an_object_embedding_column(tmp_path, capsys):
    """A Parquet table written by pandas holds its vectors as an object column (one array
    per row): the query result copied that column (256 numbers a row) into the table that
    `astromorph similar` prints, as 'the indexed table's columns (without the vectors)'
    does not; the vector column is left out whatever its storage, as from the tables that
    `astromorph cluster` and `classify` print."""
    t = catalogue(n=30)
    cells = Table({"id": t["id"], "ra": t["ra"], "dec": t["dec"]})
    cells["embedding"] = np.empty(30, dtype=object)
    for i, v in enumerate(t["embedding"]):
        cells["embedding"][i] = np.asarray(v)
    res = SimilarityIndex.from_table(cells).query(row=7, k=5)
    assert "embedding" not in res.colnames and "id" in res.colnames
    # also through a column passed with its table
    res = SimilarityIndex(cells["embedding"], table=cells).query(row=7, k=5)
    assert "embedding" not in res.colnames
    pytest.importorskip("pyarrow")
    pytest.importorskip("pandas")
    import pandas as pd

    df = pd.DataFrame({"id": np.arange(30), "embedding": [list(v) for v in t["embedding"]]})
    df["label"] = np.where(np.arange(30) % 3 == 0, "", np.array(["a", "b"])[np.arange(30) % 2])
    df.to_parquet(tmp_path / "pandas.parquet")
    # the printed tables of similar, cluster and classify leave it out too
    for args in (["similar", "--query", "7", "-k", "3"],
                 ["cluster", "-k", "2", "--covariance", "diag"],
                 ["classify", "--labels", "label", "-C", "1"]):
        assert main(args[:1] + [str(tmp_path / "pandas.parquet")] + args[1:]) == 0
        out = capsys.readouterr().out
        assert "embedding" not in out and len(max(out.splitlines(), key=len)) < 100, args


def test_labels_of_one_row_each_cannot_choose_c(tmp_path, capsys):
    """Labels in which every class has a single row (an identifier column given as
    --labels, as a catalogue's 'source') left the cross-validation nothing to choose C
    with (each held-out row's class is missing from its training part, so the smallest
    C always won) and took minutes (9 candidates x 2 folds of a 300-class fit on GZ1's
    300 rows): refused at once, naming the count and pointing to C=; with C given
    (one exemplar per class) the head is fitted, with a FewRowsWarning."""
    from astromorph.exceptions import FewRowsWarning

    x = unit_rows(12, 8)
    ids = [f"obj{i}" for i in range(12)]
    with pytest.raises(InvalidArgumentError, match=r"12 classes.*12 labelled rows.*C="):
        LabelHead().fit(x, ids)
    with pytest.warns(FewRowsWarning):
        head = LabelHead(C=1.0).fit(x[:3], ["E", "S", "Irr"])
    assert head.predict(x[:3]).tolist() == ["E", "S", "Irr"]
    t = Table({"embedding": x, "source": ids})
    t.write(tmp_path / "t.ecsv")
    assert main(["classify", str(tmp_path / "t.ecsv"), "--labels", "source"]) == 2
    err = capsys.readouterr().err
    assert "12 classes" in err and "-C" in err and "Traceback" not in err, err


def test_query_by_a_constant_image_is_refused_and_flags_are_kept(tiny_embedding, tmp_path,
                                                                  capsys):
    """A blank or constant picture (an all-zero PNG, a grey array) was embedded and queried
    without a word: `predict` flags it CONSTANT ('outputs are not meaningful'), but the query
    dropped the flags and returned 'neighbours' of nothing. It is now refused with
    InputError naming the reason, as an unusable file is; the flags of a usable query image
    are kept in the result's meta (``query_flags``: 0 for a clean one)."""
    from PIL import Image
    from astromorph._adapters import RawStamps, prepare

    model = astromorph.load_model(tiny_embedding)
    images = np.stack([colour_cutout(s) for s in range(20)])
    x, _ = prepare(model, RawStamps("colour", images))
    t = Table({"id": np.arange(20), "embedding": model.predict(x)["embedding"]})
    index = SimilarityIndex.from_table(t)
    blank, grey = tmp_path / "blank.png", tmp_path / "grey.png"
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(blank)
    Image.fromarray(np.full((100, 100, 3), 128, np.uint8)).save(grey)
    for image in (blank, grey, np.zeros((100, 100, 3), np.uint8),
                  np.full((100, 100, 3), 0.5), np.full((3, 64, 64), 0.2, np.float32)):
        with pytest.raises(InputError, match=r"constant|all zero"):
            index.query(image=image, k=3, model=tiny_embedding)
    png = tmp_path / "q.png"
    Image.fromarray(images[4]).save(png)
    assert index.query(image=png, k=2, model=tiny_embedding).meta["query_flags"] == 0
    assert index.query(image=images[4], k=2, model=tiny_embedding).meta["query_flags"] == 0
    t.meta.update(astromorph_model=tiny_embedding)
    t.write(tmp_path / "t.ecsv")
    assert main(["similar", str(tmp_path / "t.ecsv"), "--image", str(blank)]) == 2
    err = capsys.readouterr().err
    assert "blank.png" in err and "all zero" in err and "Traceback" not in err, err


# ------------------------------------------- label head and pictures: found by mutation tests
@pytest.mark.parametrize("class_weight", [None, "balanced"])
def test_label_head_fitted_probabilities_balance_as_its_class_weights_say(class_weight):
    """At the optimum of a logistic regression with an unpenalised bias, the weighted sum of
    each class's predicted probability over the labelled rows equals its weighted count:
    unweighted, the mean probability of a class is its share of the rows; ``"balanced"``
    (each row weighted ``n / (k * n_c)``), the mean over the classes of their rows' mean
    probability of a class is ``1 / k`` for every class."""
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1, 2], [120, 30, 10])
    x = rng.normal(0, 1, (len(y), 4)) + 0.8 * np.eye(4)[y]  # overlapping classes
    p = LabelHead(C=1.0, class_weight=class_weight).fit(x, y).predict_proba(x)
    if class_weight is None:
        np.testing.assert_allclose(p.mean(axis=0), [120 / 160, 30 / 160, 10 / 160], atol=2e-3)
    else:
        per_class = np.array([p[y == c].mean(axis=0) for c in range(3)])
        np.testing.assert_allclose(per_class.mean(axis=0), 1 / 3, atol=2e-3)


def test_label_head_fits_embeddings_with_a_constant_dimension():
    """A dimension that is the same in every labelled row (e.g. a unit a ReLU never fires)
    carries no information: it is left unscaled, and the head fits and predicts as without
    it (finite probabilities, not NaN from a zero spread)."""
    x, y = blobs(n_per=30, k=2, d=8)
    with_const = np.column_stack([x, np.full(len(x), 0.5, np.float32)])
    head = LabelHead(C=1.0).fit(with_const, y)
    p = head.predict_proba(with_const)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p, LabelHead(C=1.0).fit(x, y).predict_proba(x), atol=1e-6)
    assert (head.predict(with_const) == y).mean() > 0.95


@pytest.mark.parametrize("C", [0.05, 1.0])
def test_label_head_weights_are_the_l2_regularised_optimum(C):
    """The head minimises ``sum_i CE_i + ||W||^2 / (2 C)``: at its weights the gradient
    vanishes, ``W = C * Z^T (Y - P)`` for the standardised embeddings Z, one-hot labels Y
    and fitted probabilities P (a smaller C gives proportionally smaller weights)."""
    rng = np.random.default_rng(4)
    y = np.repeat([0, 1, 2], 40)
    x = rng.normal(0, 1, (len(y), 5)) + 1.5 * np.eye(5)[y]
    head = LabelHead(C=C).fit(x, y)
    z = (x - head.mean_) / head.scale_
    residual = np.eye(3)[y] - head.predict_proba(x)
    np.testing.assert_allclose(head.coef_, C * z.T @ residual, atol=1e-3 * max(C, 1.0))


def test_label_head_probabilities_of_rows_far_from_the_labelled_ones_are_finite():
    """Each row's logits are shifted by their own maximum before the exponential: a row
    whose logits lie a thousand units below another row's still gets probabilities that
    sum to one (not NaN from an underflow to 0 / 0), in `predict_proba` and `annotate`."""
    x, y = blobs(n_per=20, k=2, d=4)
    head = LabelHead(C=1.0).fit(x, y)
    direction = head.coef_[:, 0] - head.coef_[:, 1]  # raises the logit of class 0
    far = head.mean_ + head.scale_ * np.array([1, -1])[:, None] * 2000 * direction / (
        direction @ direction)
    rows = np.vstack([far, head.mean_])  # and a row at the labelled rows' mean
    p = head.predict_proba(rows)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1), 1)
    np.testing.assert_allclose(p[:2], [[1, 0], [0, 1]], atol=1e-12)
    b = head.intercept_
    np.testing.assert_allclose(p[2], np.exp(b) / np.exp(b).sum())
    out = head.annotate(Table({"embedding": rows}))
    assert out["head_label"].tolist()[:2] == [0, 1]
    assert np.isfinite(np.asarray(out["head_p_0"])).all()


def test_label_head_folds_deal_every_class_on_from_where_the_last_one_stopped():
    """The stratified folds of the cross-validation are dealt round-robin over the classes in
    turn, each class starting where the previous one stopped: the folds differ in size by
    one row at most (here 4 classes of 6 rows in 5 folds: 5, 5, 5, 5, 4 rows, not 8, 4, 4,
    4, 4), and each class's rows are spread over the folds as evenly as they can be."""
    head = LabelHead(cv=5)
    y = np.repeat(np.arange(4), 6)
    folds, n_folds = head._folds(y, np.random.default_rng(0))
    assert n_folds == 5
    sizes = np.bincount(folds, minlength=5)
    assert sizes.max() - sizes.min() <= 1
    for c in range(4):
        per_class = np.bincount(folds[y == c], minlength=5)
        assert per_class.max() - per_class.min() <= 1


def test_label_head_chooses_the_c_of_least_held_out_log_loss():
    """Without C, the head uses the candidate whose cross-validated log-loss (`cv_scores_`)
    is least: on well-separated blobs a weak regularisation, not the strongest."""
    x, y = blobs(n_per=20, k=3, d=8)
    head = LabelHead(Cs=(0.001, 1.0, 100.0)).fit(x, y)
    assert set(head.cv_scores_) == {0.001, 1.0, 100.0}
    assert head.cv_scores_[head.C_] == min(head.cv_scores_.values())
    assert head.C_ > 0.001


def test_gallery_tile_names_of_22_characters_are_whole_and_longer_ones_shortened():
    """A row's name is shown whole up to 22 characters; a longer one as its first 10 and
    last 11 characters around an ellipsis (22 in all)."""
    from types import SimpleNamespace

    from astromorph.embeddings._plots import _row_names

    names = ["a" * 21, "b" * 22, "c" * 10 + "d" * 2 + "e" * 11]
    index = SimpleNamespace(table=Table({"name": names}))
    assert _row_names(index, [0, 1, 2], None) == [
        "a" * 21, "b" * 22, "c" * 10 + "\u2026" + "e" * 11]


def test_auto_map_method_is_tsne_up_to_its_row_limit(monkeypatch):
    """``method="auto"`` without umap-learn: t-SNE for up to `TSNE_MAX_POINTS` rows
    included, PCA above."""
    import importlib.util

    import astromorph.embeddings._plots as plots

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "umap" else real(name, *a))
    monkeypatch.setattr(plots, "TSNE_MAX_POINTS", 8)
    x = np.random.default_rng(0).normal(size=(9, 4))
    assert embedding_map(x[:8])[1] == "tsne"
    assert embedding_map(x)[1] == "pca"


def test_a_loaded_label_head_has_every_documented_attribute():
    """A head read back (`from_dict`) has the attributes of a fitted one: `cv_scores_` is
    empty (the scores are not saved), not missing."""
    x, y = blobs(n_per=10, k=2, d=4)
    again = LabelHead.from_dict(json.loads(json.dumps(LabelHead(C=1.0).fit(x, y).to_dict())))
    assert again.cv_scores_ == {} and again.C_ == 1.0 and again.provenance_ is None
    assert again.classes_.tolist() == [0, 1]


def test_display_image_of_flux_bands_is_the_documented_stretch_in_r_g_b_order():
    """Flux bands: each pixel ``asinh(10 t) / asinh(10)``, ``t`` its value above the 1st
    percentile of all the bands' pixels in units of the 1st to 99.5th percentile range
    (so a single hot pixel does not darken the rest), clipped to [0, 1]; three bands
    (g, r, i) drawn as R, G, B = i, r, g."""
    from astromorph.embeddings import display_image

    rng = np.random.default_rng(5)
    bands = rng.uniform(0, 1, (3, 20, 20))
    bands[0] *= 0.1        # a faint first band: the blue of the picture
    bands[2, 3, 4] = 1e6   # one hot pixel
    lo, hi = np.percentile(bands, [1, 99.5])
    expected = np.clip(np.arcsinh(np.clip((bands - lo) / (hi - lo), 0, None) * 10)
                       / np.arcsinh(10), 0, 1)
    rgb = display_image(bands)
    np.testing.assert_allclose(rgb, np.moveaxis(expected[::-1], 0, -1), atol=1e-6)


def test_gallery_tile_is_transparent_only_where_no_band_has_a_value():
    """A tile's pixel is transparent where no band has a finite value (off the stamp); a
    pixel blank in one band only keeps the others' colour, opaque."""
    from astromorph.embeddings._plots import _tile_image

    bands = np.random.default_rng(6).uniform(1, 2, (3, 8, 8))
    bands[0, 2, 2] = np.nan          # one band blank
    bands[:, 5, 5] = np.nan          # every band blank
    tile = _tile_image(bands)
    assert tile.shape == (8, 8, 4)
    assert tile[2, 2, 3] == 1 and tile[5, 5, 3] == 0
    assert (tile[..., 3].sum() == 63) and np.isfinite(tile).all()


def test_gallery_has_at_most_8_columns_and_draws_tiles_top_row_first(tmp_path, monkeypatch):
    """64 tiles (a query and 63 neighbours) are drawn 8 to a row (at most 8 columns, about
    the square root of the tile count), each picture with its first row at the top."""
    pytest.importorskip("matplotlib")
    import astromorph.embeddings._plots as plots

    figures = []
    real = plots.figure
    monkeypatch.setattr(plots, "figure", lambda *a, **k: figures.append(real(*a, **k))
                        or figures[-1])
    t = catalogue(64)
    index = SimilarityIndex.from_table(t)
    index.gallery(index.query(row=0, k=63), tmp_path / "g.png",
                  images=np.random.default_rng(0).uniform(0, 1, (64, 4, 4, 3)), dpi=20)
    (fig,) = figures
    axes = fig.get_axes()
    assert len(axes) == 64
    assert len({round(ax.get_position().x0, 3) for ax in axes}) == 8
    drawn = [ax for ax in axes if ax.images]
    assert len(drawn) == 64 and all(ax.yaxis_inverted() for ax in drawn)


def test_gallery_refuses_a_result_row_one_past_the_index():
    """A result naming row ``len(index)`` is not a result of this index (rows run from 0 to
    ``len(index) - 1``): refused before any picture is read."""
    from astromorph.embeddings._plots import _result_rows

    index = SimilarityIndex(unit_rows(5, 3))
    res = Table({"rank": [1], "row": [5], "similarity": [0.5]})
    with pytest.raises(InvalidArgumentError, match="not a query result of this index"):
        _result_rows(index, res)
    assert _result_rows(index, Table({"rank": [1], "row": [4], "similarity": [0.5]})) == \
        ([4], None)


def test_display_image_of_uint8_bands_is_scaled_to_one():
    """8-bit single bands and band stacks are shown as value / 255 (a single band grey)."""
    from astromorph.embeddings import display_image

    band = np.full((4, 4), 51, np.uint8)
    np.testing.assert_allclose(display_image(band), 0.2, rtol=1e-6)
    stack = np.stack([band, band * 2, band * 3])
    np.testing.assert_allclose(display_image(stack)[0, 0], [0.2, 0.4, 0.6], rtol=1e-6)


def test_a_picture_with_some_finite_pixels_is_drawn():
    """Only a picture without any finite pixel is 'no image': one NaN pixel (a masked or
    off-chip pixel) does not blank the tile."""
    from astromorph.embeddings._plots import _no_picture

    picture = np.ones((3, 8, 8))
    picture[0, 1, 1] = np.nan
    assert _no_picture(picture, "images=") is None
    assert "no finite pixel" in _no_picture(np.full((8, 8), np.nan), "images=")


def test_pca_map_is_the_projection_of_the_centred_vectors():
    """``method="pca"``: the coordinates are the centred vectors projected on their two
    leading principal axes (mean zero, the variances of the two largest singular values),
    whatever the vectors' offset."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(50, 6)) * [5, 2, 1, 1, 1, 1] + 100.0
    coords, method = embedding_map(x, method="pca")
    assert method == "pca"
    np.testing.assert_allclose(coords.mean(axis=0), 0, atol=1e-9)
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    np.testing.assert_allclose(np.sort(np.linalg.norm(coords, axis=0))[::-1], s[:2],
                               rtol=1e-9)


# --- embedding_matrix / finite_rows edge cases (found by mutation testing) ---------------

def test_many_bad_rows_are_named_ten_at_most_then_dots():
    """The error naming unusable rows lists the first ten and then '...': ten rows are all
    named, eleven end with '...' (without it a user cannot tell there are more)."""
    from astromorph.embeddings._common import embedding_matrix

    x = np.ones((20, 3))
    x[:10] = np.nan
    with pytest.raises(InvalidArgumentError,
                       match=r"10 row\(s\) .*\(rows 0, 1, 2, 3, 4, 5, 6, 7, 8, 9\);"):
        embedding_matrix(x)
    x[10] = np.inf
    with pytest.raises(InvalidArgumentError,
                       match=r"11 row\(s\) .*\(rows 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, \.\.\.\);"):
        embedding_matrix(x)


def test_finite_rows_is_right_at_every_chunk_boundary():
    """Every row is checked whatever the block size: a row left out of the blocks would be
    an uninitialised flag, usable or not at random."""
    from astromorph.embeddings._common import finite_rows

    rng = np.random.default_rng(1)
    for n in range(1, 9):
        for chunk in (1, 2, 3, 4, 7):
            x = rng.standard_normal((n, 3))
            x[rng.random(n) < 0.4, 1] = np.nan
            for _ in range(3):  # uninitialised memory: garbage differs between calls
                np.testing.assert_array_equal(finite_rows(x, chunk_rows=chunk),
                                              np.isfinite(x).all(axis=1))


def test_object_arrays_of_numbers_are_numbers():
    """A 2-d object array of numbers is an (N, D) matrix, and a 1-d object array of numbers
    one vector: neither is refused as cells that are 'a scalar' or 'object values'."""
    from astromorph.embeddings._common import embedding_matrix

    x = np.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(embedding_matrix(x.astype(object)), x)
    np.testing.assert_array_equal(embedding_matrix(np.array([1.0, 2.0], dtype=object)),
                                  [[1.0, 2.0]])


def test_object_column_whose_first_cell_is_masked():
    """A masked object column whose first cell is masked (its data a placeholder scalar) is
    still a column of vectors: the masked row is NaN, the others are kept."""
    from astropy.table import MaskedColumn

    from astromorph.embeddings._common import embedding_matrix

    col = MaskedColumn(_object_column([0.0, np.ones(4), np.arange(4.0)]),
                       mask=[True, False, False])
    x = embedding_matrix(col, allow_masked=True)
    assert np.isnan(x[0]).all()
    np.testing.assert_array_equal(x[1:], [np.ones(4), np.arange(4.0)])


def test_list_of_vectors_of_unequal_length_names_the_row():
    """A list of vectors of unequal length names the first row whose length differs
    (InputError), not 'embeddings must be numbers, got object values'."""
    from astromorph.embeddings._common import embedding_matrix

    with pytest.raises(InputError, match=r"row 2 holds a vector of 2 values, but the rows "
                                         r"before it hold 3"):
        embedding_matrix([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [1.0, 2.0]])


def test_bad_cell_is_described_in_at_most_60_characters():
    """A long bad cell is shown cut to 60 characters ending '...' (one short line)."""
    from astromorph.embeddings._common import embedding_matrix

    cell = "x" * 70  # its repr: 72 characters
    with pytest.raises(InputError) as info:
        embedding_matrix(_object_column([np.ones(3), cell]))
    shown = f"'{'x' * 56}..."
    assert f"row 1 holds {shown}:" in str(info.value)


def test_unsigned_integer_cells_are_numbers_and_bool_cells_are_not():
    """Cells of unsigned integers (e.g. uint8 vectors) are vectors of numbers; cells of
    booleans are refused naming the row, not silently made 0/1."""
    from astromorph.embeddings._common import embedding_matrix

    x = embedding_matrix(_object_column([np.array([1, 2], np.uint8), np.array([3, 4], np.uint16)]))
    np.testing.assert_array_equal(x, [[1, 2], [3, 4]])
    with pytest.raises(InputError, match=r"row 1 holds .*bool values, not numbers"):
        embedding_matrix(_object_column([np.ones(2), np.array([True, False])]))


def test_object_cells_keep_their_float_precision_with_dtype_none():
    """With dtype=None, float32 cells make a float32 matrix (no doubled memory) and any
    float64 cell makes a float64 one (no lost precision)."""
    from astromorph.embeddings._common import embedding_matrix

    f32 = [np.ones(3, np.float32), np.zeros(3, np.float32)]
    assert embedding_matrix(_object_column(f32), dtype=None).dtype == np.float32
    mixed = embedding_matrix(_object_column([f32[0], np.full(3, 1 + 1e-12)]), dtype=None)
    assert mixed.dtype == np.float64
    assert mixed[1, 0] == 1 + 1e-12


def test_astropy_masked_array_rows_are_masked_rows():
    """An astropy `Masked` array (a Table column of one) is not a numpy masked array, but
    its masked rows are still masked rows: NaN, or refused naming them."""
    from astropy.utils.masked import Masked

    from astromorph.embeddings._common import embedding_matrix

    m = Masked(np.ones((3, 2)), mask=[[False, False], [True, False], [False, False]])
    x = embedding_matrix(m, allow_masked=True)
    assert np.isnan(x[1]).all() and (x[[0, 2]] == 1).all()
    with pytest.raises(InvalidArgumentError, match=r"1 masked row\(s\) \(rows 1\)"):
        embedding_matrix(m)


def test_embedding_matrix_leaves_the_masked_column_alone():
    """Filling masked rows with NaN works on a copy: the caller's float64 masked column
    keeps the data under its mask."""
    from astropy.table import MaskedColumn

    from astromorph.embeddings._common import embedding_matrix

    col = MaskedColumn(np.arange(6.0).reshape(3, 2), mask=[[False] * 2, [True] * 2, [False] * 2])
    x = embedding_matrix(col, allow_masked=True)
    assert np.isnan(x[1]).all()
    np.testing.assert_array_equal(col.data.data, np.arange(6.0).reshape(3, 2))


def test_column_of_scalars_is_not_one_vector_per_row():
    """A column of one number per row is refused naming its shape, not read as one vector
    (one row of usable flags for a table of many rows)."""
    from astromorph.embeddings._common import table_embeddings

    with pytest.raises(InputError, match=r"column 'embedding' is not one vector per row "
                                         r"\(shape \(3,\)\)"):
        table_embeddings(Table({"embedding": np.arange(3.0)}))


def test_masked_float_columns_hold_nan_under_the_mask():
    """A new float column's masked rows hold NaN under the mask, so ``np.asarray`` of it
    (or any reader ignoring the mask) sees no number there, not a made-up 0."""
    from astromorph.embeddings._common import masked_column

    col = masked_column([0.25, 0.75], np.array([True, False, True]), "p")
    assert col.mask.tolist() == [False, True, False]
    np.testing.assert_array_equal(np.asarray(col), [0.25, np.nan, 0.75])
    ints = masked_column([1, 2], np.array([True, False, True]), "k")
    assert ints.dtype.kind == "i" and ints.mask.tolist() == [False, True, False]


def test_cli_printed_table_leaves_out_every_vector_column(tmp_path, capsys):
    """Without -o the printed table leaves out every 2-d column (not only the embedding
    column): a vector per row would print as a long unreadable cell."""
    t = catalogue(12, d=4)
    t["embedding"] = blobs(n_per=4, k=3, d=4)[0]
    t["features"] = np.ones((12, 3))
    t.write(tmp_path / "emb.ecsv")
    capsys.readouterr()
    assert main(["cluster", str(tmp_path / "emb.ecsv"), "-k", "2", "--pca", "2", "-q"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert "cluster_prob" in header and "features" not in header and "embedding" not in header


def test_cli_similar_ra_without_dec_is_refused(tmp_path, capsys):
    """--ra without --dec (or --dec without --ra) is no query: refused before any work."""
    t = catalogue(10, d=4)
    t["embedding"] = unit_rows(10, 4)
    t.write(tmp_path / "emb.ecsv")
    for half in (["--ra", "1"], ["--dec", "1"]):
        assert main(["similar", str(tmp_path / "emb.ecsv"), *half]) == 2
        assert "give exactly one query" in capsys.readouterr().err


def test_integer_embeddings_become_float64_with_dtype_none():
    """dtype=None keeps float32 and float64 only: integer vectors become float64 (masked
    rows can then hold NaN)."""
    from astromorph.embeddings._common import embedding_matrix

    x = embedding_matrix(np.ma.masked_array(np.arange(6).reshape(3, 2),
                                            mask=[[0, 0], [1, 1], [0, 0]]),
                         allow_masked=True, dtype=None)
    assert x.dtype == np.float64 and np.isnan(x[1]).all() and x[2].tolist() == [4.0, 5.0]


def test_cli_similar_writes_neighbours_to_csv(tmp_path):
    """The neighbours table holds no embedding column, so ``similar -o out.csv`` works on a
    table with one (only outputs holding the input's columns are checked for them)."""
    t = catalogue(10, d=4)
    t.write(tmp_path / "emb.ecsv")
    with pytest.warns(Warning, match="CSV keeps values only"):
        assert main(["similar", str(tmp_path / "emb.ecsv"), "--query", "0", "-k", "3", "-q",
                     "-o", str(tmp_path / "nn.csv")]) == 0
    assert len(Table.read(tmp_path / "nn.csv")) == 3


def test_cli_similar_max_separation_is_in_arcsec(tmp_path, capsys):
    """--max-separation is in arcsec: a position 36 arcsec from the nearest row fails with
    30 and passes with 40."""
    t = catalogue(5, d=4)
    t["ra"] = [10.0, 11.0, 12.0, 13.0, 14.0] * u.deg
    t["dec"] = [0.0] * 5 * u.deg
    t.write(tmp_path / "emb.ecsv")
    argv = ["similar", str(tmp_path / "emb.ecsv"), "--ra", "10.01", "--dec", "0", "-k", "2",
            "-q", "--max-separation"]
    assert main([*argv, "30"]) == 2
    assert main([*argv, "40"]) == 0


def test_cli_cluster_passes_its_options_to_the_fit(tmp_path, monkeypatch):
    """--seed, --pca, --covariance and the BIC range (2..--k-max, 2..12 by default) reach
    the mixture fit."""
    import astromorph.embeddings._mixture as mixture

    seen = []

    def fake(table, column, k, prefix, on_conflict, options):
        seen.append(options)
        raise InputError("stop")

    monkeypatch.setattr(mixture, "_cluster_table", fake)
    src = str(tmp_path / "emb.ecsv")
    catalogue(10, d=4).write(src)
    assert main(["cluster", src, "--seed", "7", "--pca", "3", "--covariance", "diag"]) == 2
    assert main(["cluster", src, "--k-max", "3"]) == 2
    assert main(["cluster", src, "-k", "2"]) == 2
    assert seen[0] == dict(n_pca=3, seed=7, covariance_type="diag", k_range=range(2, 13))
    assert seen[1]["k_range"] == range(2, 4) and seen[1]["seed"] == 0
    assert "k_range" not in seen[2]


def test_cli_classify_passes_balanced_and_C_to_the_head(tmp_path, monkeypatch):
    """--balanced (class_weight='balanced', else None) and -C (else None: by
    cross-validation) reach the LabelHead the command fits."""
    import astromorph.embeddings._head as head

    seen = []

    class Recording(head.LabelHead):
        def __init__(self, **options):
            seen.append(options)
            raise InputError("stop")

    monkeypatch.setattr(head, "LabelHead", Recording)
    src = str(tmp_path / "emb.ecsv")
    _write_labelled_embeddings(src)
    assert main(["classify", src, "--labels", "label", "-q"]) == 2
    assert main(["classify", src, "--labels", "label", "-q", "--balanced", "-C", "0.5"]) == 2
    assert seen == [dict(class_weight=None, C=None), dict(class_weight="balanced", C=0.5)]


def test_cli_similar_gives_25_neighbours_by_default(tmp_path):
    """Without -k, similar lists 25 neighbours (the help's default)."""
    t = catalogue(40, d=4)
    t.write(tmp_path / "emb.ecsv")
    assert main(["similar", str(tmp_path / "emb.ecsv"), "--query", "3", "-q",
                 "-o", str(tmp_path / "nn.ecsv")]) == 0
    res = Table.read(tmp_path / "nn.ecsv")
    assert len(res) == 25 and 3 not in res["row"]


def test_cli_classify_with_one_labelled_row_names_the_label_column(tmp_path, capsys):
    """One labelled row with an embedding (the other labelled row's embedding is masked) is
    refused by the command naming the label column and what is short, not by the head's
    fit with a count of classes that does not say why."""
    t = catalogue(10, d=4)
    t["embedding"] = MaskedColumn(t["embedding"], mask=np.zeros((10, 4), bool))
    t["embedding"].mask[1] = True
    t["label"] = ["a", "b"] + [""] * 8
    t.write(tmp_path / "emb.ecsv")
    capsys.readouterr()
    assert main(["classify", str(tmp_path / "emb.ecsv"), "--labels", "label", "-C", "1"]) == 2
    assert "column 'label' labels fewer than two rows with embeddings" in capsys.readouterr().err


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("masked", [False, True])
def test_column_of_only_none_cells_holds_no_vectors(n, masked):
    """An object column whose every cell is None or masked (pandas' Parquet of rows without
    embeddings) is refused as holding no vectors, not read as one vector of NaN (a 1-row
    table got a (1, 1) NaN matrix; more rows, 'not one vector per row')."""
    from astromorph.embeddings._common import embedding_matrix, table_embeddings

    cells = np.empty(n, object)
    cells[:] = None
    if masked:  # masked cells holding vectors are no vectors either
        cells[0] = np.zeros(4)
        cells = MaskedColumn(cells, mask=np.ones(n, bool))
    with pytest.raises(InputError, match=rf"the embedding column holds no vectors "
                                         rf"\(all {n} rows are masked or None\)"):
        table_embeddings(Table({"embedding": cells}))
    # the dimension given (a fitted head or index): NaN rows, one per cell
    x = embedding_matrix(cells, allow_masked=True, dim=4)
    assert x.shape == (n, 4) and np.isnan(x).all()


# ------------------------------------------------- mixture: mutation-test survivors
def _overlapping(n_per=60, seed=7):
    """Three 4-d Gaussian groups close enough that many rows are shared between clusters
    (membership probabilities well away from 0 and 1), as float64 rows."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0, 0, 0], [1.2, 0.5, 0, 0], [0.3, 1.4, 0.4, 0]])
    return np.concatenate([c + rng.normal(size=(n_per, 4)) * [0.6, 0.5, 0.4, 0.3]
                           for c in centres])


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_gmm_probabilities_are_the_posterior_and_sum_to_one_per_row(covariance_type,
                                                                     monkeypatch):
    """predict_proba is the posterior w_j N(z | mu_j, S_j) / sum_l w_l N(z | mu_l, S_l) of
    each row (written out with scipy's densities in the PCA space): every row sums to 1
    also where clusters overlap, predict and the ``cluster`` column of annotate are its
    argmax and ``cluster_prob`` its maximum, and ``chunk_rows`` blocks give the same
    values with no block longer than asked. Users would otherwise get probabilities that
    are not probabilities (e.g. each row divided by its largest term instead of the sum),
    or a memory bound that is not applied."""
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    x = _overlapping()
    gmm = GaussianMixture(3, covariance_type=covariance_type, n_pca=3).fit(x)
    z = (x - gmm.mean_) @ gmm.components_.T
    covs = gmm.covariances_ if covariance_type == "full" else \
        [np.diag(c) for c in gmm.covariances_]
    logp = np.stack([np.log(w) + multivariate_normal(m, c).logpdf(z)
                     for w, m, c in zip(gmm.weights_, gmm.means_, covs)], axis=1)
    expect = np.exp(logp - logsumexp(logp, axis=1, keepdims=True))
    p = gmm.predict_proba(x)
    assert np.sum(p.max(axis=1) < 0.9) > 20  # the clusters do overlap
    np.testing.assert_allclose(p, expect, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(gmm.predict(x), np.argmax(expect, axis=1))
    out = gmm.annotate(Table({"embedding": x}))
    np.testing.assert_array_equal(out["cluster"], np.argmax(p, axis=1))
    np.testing.assert_array_equal(out["cluster_prob"], p.max(axis=1).astype(np.float32))
    blocks = []
    log_prob = GaussianMixture._log_prob

    def recording(self, z, *params):
        blocks.append(len(z))
        return log_prob(self, z, *params)

    monkeypatch.setattr(GaussianMixture, "_log_prob", recording)
    np.testing.assert_allclose(gmm.predict_proba(x, chunk_rows=70), p, rtol=1e-12, atol=0)
    assert blocks == [70, 70, 40]


@pytest.mark.parametrize("n_pca", [3, None])
@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_gmm_saved_state_round_trips_exactly(tmp_path, covariance_type, n_pca):
    """A mixture saved and loaded back is the same mixture to the last bit: every fitted
    array, the BIC of every k tried, the explained variance ratio, the options
    (covariance_type, n_pca, seed) and the provenance, so its state and its file are
    identical and its probabilities equal bit for bit. A loaded mixture that lost its
    ``n_pca`` or ``explained_variance_ratio_`` would report other numbers than the
    fitted one (and write another file when saved again)."""
    x = _overlapping()
    a = _provenance_table(x, "a" * 64)
    gmm = GaussianMixture(k_range=range(2, 5), covariance_type=covariance_type, n_pca=n_pca,
                          seed=3).fit(x, provenance=a)
    assert len(gmm.bic_) == 3
    path = gmm.save(tmp_path / "m.json")
    back = GaussianMixture.load(path)
    assert back.to_dict() == gmm.to_dict()
    for name in ("mean_", "weights_", "means_", "covariances_"):
        got, want = getattr(back, name), getattr(gmm, name)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    if n_pca is None:
        assert back.components_ is None and gmm.components_ is None
    else:
        np.testing.assert_array_equal(back.components_, gmm.components_)
        assert gmm.explained_variance_ratio_ < 1
    assert back.explained_variance_ratio_ == gmm.explained_variance_ratio_
    assert back.bic_ == gmm.bic_ and list(back.bic_) == list(gmm.bic_)
    assert (back.n_components_, back.dim_, back.covariance_type, back.n_pca, back.seed) == \
        (gmm.n_components_, gmm.dim_, gmm.covariance_type, gmm.n_pca, gmm.seed)
    assert back.provenance_ == gmm.provenance_
    np.testing.assert_array_equal(back.predict_proba(x), gmm.predict_proba(x))
    again = back.save(tmp_path / "again.json")
    assert again.read_bytes() == path.read_bytes()


def test_gmm_em_runs_until_the_log_likelihood_stops_changing():
    """EM stops when the mean log-likelihood per row changes by less than ``tol``: one
    more EM step from the fitted parameters raises it by less than ``tol`` (EM never
    lowers it). A fit stopped after a couple of iterations would give users clusters and
    a BIC of a mixture far from its maximum likelihood."""
    x = _overlapping(n_per=100, seed=11)
    for covariance_type in ("full", "diag"):
        gmm = GaussianMixture(3, covariance_type=covariance_type, n_pca=None, n_init=1,
                              tol=1e-6).fit(x)
        z = x - gmm.mean_
        params = (gmm.weights_, gmm.means_, gmm.covariances_)

        def mean_ll(params):
            logp = gmm._log_prob(z, *params)
            m = logp.max(axis=1, keepdims=True)
            return float(np.mean(m[:, 0] + np.log(np.exp(logp - m).sum(axis=1))))

        logp = gmm._log_prob(z, *params)
        resp = np.exp(logp - logp.max(axis=1, keepdims=True))
        resp /= resp.sum(axis=1, keepdims=True)
        reg = gmm.reg_covar * float(np.mean(np.var(z, axis=0)))
        gain = mean_ll(gmm._m_step(z, resp, reg)) - mean_ll(params)
        assert -1e-9 < gain < 1e-6, (covariance_type, gain)


def test_gmm_does_not_depend_on_the_units_of_the_vectors():
    """``reg_covar`` is in units of the mean variance of the rows: vectors multiplied by
    1024 (exact in floating point) give the same clusters and probabilities, and
    covariances 1024**2 times as large. An absolute regularisation would make the
    clusters of small-valued vectors (unit embeddings in 16 dimensions have variances
    ~0.01) depend on their scale."""
    x, _ = blobs(n_per=40, k=3, d=16, seed=6)
    x = x.astype(np.float64)
    for covariance_type in ("full", "diag"):
        a = GaussianMixture(3, covariance_type=covariance_type, n_pca=4, reg_covar=0.05).fit(x)
        b = GaussianMixture(3, covariance_type=covariance_type, n_pca=4,
                            reg_covar=0.05).fit(x * 1024)
        # the same components, in the order the (scaled) k-means++ draws happened to give
        order = np.argmin(((b.means_[:, None] / 1024 - a.means_[None]) ** 2).sum(-1), axis=0)
        assert sorted(order) == [0, 1, 2]
        np.testing.assert_allclose(b.means_[order], a.means_ * 1024, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(b.covariances_[order], a.covariances_ * 1024 ** 2,
                                   rtol=1e-9)
        np.testing.assert_allclose(b.predict_proba(x * 1024)[:, order], a.predict_proba(x),
                                   rtol=1e-9, atol=1e-12)


def test_gmm_kmeans_plus_plus_draws_by_the_distance_to_the_nearest_centre():
    """Each k-means++ centre after the first is drawn with probability proportional to
    the squared distance of a row to the nearest centre already drawn (not to the last
    one drawn, which lets a second centre fall into an already-covered cluster)."""
    rng0 = np.random.default_rng(0)
    z = rng0.normal(size=(60, 3))
    drawn = []

    class Recording:
        def __init__(self):
            self.rng = np.random.default_rng(5)

        def integers(self, n):
            drawn.append((self.rng.integers(n), None))
            return drawn[-1][0]

        def choice(self, n, p=None):
            drawn.append((self.rng.choice(n, p=p), p))
            return drawn[-1][0]

    GaussianMixture(4)._kmeans_pp(z, 4, Recording(), iters=1)
    assert len(drawn) == 4 and drawn[0][1] is None
    for i in range(1, 4):
        centres = z[[j for j, _ in drawn[:i]]]
        d2 = ((z[:, None] - centres[None]) ** 2).sum(-1).min(axis=1)
        np.testing.assert_allclose(drawn[i][1], d2 / d2.sum(), rtol=1e-12, atol=1e-15)


def test_gmm_fits_at_most_max_fit_rows_and_keeps_n_pca_dimensions(monkeypatch):
    """max_fit_rows: one row more than it is fitted on max_fit_rows drawn rows (exactly
    that many: all of them); n_pca = D - 1 projects on D - 1 axes (only n_pca >= D
    keeps the vectors unprojected)."""
    from astromorph.embeddings import _mixture

    x, _ = blobs(n_per=30, k=2, d=8)
    sizes = []
    em = _mixture.GaussianMixture._em

    def counting(self, z, k, rng, start=None):
        sizes.append(z.shape)
        return em(self, z, k, rng, start=start)

    monkeypatch.setattr(_mixture.GaussianMixture, "_em", counting)
    GaussianMixture(2, n_init=1, n_pca=4, max_fit_rows=59).fit(x)
    GaussianMixture(2, n_init=1, n_pca=4, max_fit_rows=60).fit(x)
    assert sizes == [(59, 4), (60, 4)]
    seven = GaussianMixture(2, n_pca=7).fit(x)
    assert seven.components_.shape == (7, 8) and seven.dim_ == 7
    assert seven.explained_variance_ratio_ < 1
    eight = GaussianMixture(2, n_pca=8).fit(x)
    assert eight.components_ is None and eight.dim_ == 8


def test_gmm_refuses_vectors_whose_spread_underflows():
    """Vectors that differ, but by so little that their variance underflows to 0 in
    float64 (values ~1e-180), are refused as nothing to cluster (InputError), not fitted
    with a zero regularisation into numpy's LinAlgError."""
    x = np.random.default_rng(0).normal(size=(20, 4)) * 1e-180
    assert not (x == x[:1]).all()
    with pytest.raises(InputError, match="nothing to cluster"):
        GaussianMixture(2, n_pca=None).fit(x)


def test_mixture_file_with_a_zero_weight_or_a_ratio_above_one_is_refused():
    """from_dict refuses a weight of 0 (its component has log-weight -inf: NaN
    probabilities) and an explained_variance_ratio above 1, naming the value."""
    x, _ = blobs(n_per=20, k=2, d=4)
    state = GaussianMixture(2, seed=0).fit(x).to_dict()
    with pytest.raises(InvalidArgumentError, match=r"positive.*\[0\.0, 1\.0\]"):
        GaussianMixture.from_dict({**state, "weights": [0.0, 1.0]})
    with pytest.raises(InvalidArgumentError, match="explained_variance_ratio.*1.5"):
        GaussianMixture.from_dict({**state, "explained_variance_ratio": 1.5})


# --------------------------------------------- saved state: mutation-test survivors
def test_table_provenance_picks_the_latest_run_that_made_the_column():
    """Which embedding model made a column, from a table's meta: of earlier runs kept as
    ``astromorph_run<k>_*`` (k higher for later runs) that list the column, the latest;
    none when the latest run lists its columns and the column is not among them, or
    when the meta names neither a model nor a sha256; empty values are left out. A
    wrong pick lets a head or mixture be applied to another model's vectors."""
    from astromorph.embeddings._state import table_provenance

    meta = {"astromorph_run1_model": "embedding", "astromorph_run1_model_sha256": "a" * 64,
            "astromorph_run1_columns": "embedding",
            "astromorph_run2_model": "embedding", "astromorph_run2_model_sha256": "b" * 64,
            "astromorph_run2_columns": "embedding,emb_flags",
            "astromorph_model": "morphology", "astromorph_model_sha256": "c" * 64,
            "astromorph_columns": "p_elliptical"}
    assert table_provenance(meta) == {"model": "embedding", "sha256": "b" * 64}
    assert table_provenance(meta, "p_elliptical") == {"model": "morphology",
                                                      "sha256": "c" * 64}
    latest = {k: v for k, v in meta.items() if "_run" not in k}
    assert table_provenance(latest) is None  # the latest run made other columns only
    assert table_provenance({"astromorph_model": "embedding"}) == {"model": "embedding"}
    assert table_provenance({"astromorph_model_version": "1.0"}) is None
    assert table_provenance({"astromorph_model": "embedding", "astromorph_model_version": "",
                             "astromorph_model_sha256": ""}) == {"model": "embedding"}


def test_provenance_given_as_a_dict_is_checked_and_kept_as_text():
    """``fit(..., provenance=dict)``: the dict must name a model or a sha256 (a version
    alone identifies nothing: InvalidArgumentTypeError); None or empty values are left
    out and the others kept as text, as from a table's meta."""
    from astromorph.exceptions import InvalidArgumentTypeError

    x, _ = blobs(n_per=20, k=2, d=4)
    gmm = GaussianMixture(2, n_pca=None).fit(
        x, provenance={"model": "embedding", "version": 1.0, "sha256": None})
    assert gmm.provenance_ == {"model": "embedding", "version": "1.0"}
    with pytest.raises(InvalidArgumentTypeError, match="provenance"):
        GaussianMixture(2, n_pca=None).fit(x, provenance={"version": "1.0"})


def test_a_file_of_another_format_version_is_refused_naming_it(tmp_path):
    """load reads format_version 1 only: a complete state of another version (from a
    newer astromorph, whose fields may mean other things) is an InputError naming the
    file and the version, not read as if it were version 1."""
    x, _ = blobs(n_per=20, k=2, d=4)
    path = GaussianMixture(2, n_pca=None).fit(x).save(tmp_path / "m.json")
    state = json.loads(path.read_text())
    state["format_version"] = 2
    path.write_text(json.dumps(state))
    with pytest.raises(InputError, match=r"m\.json.*format_version 2"):
        GaussianMixture.load(path)
