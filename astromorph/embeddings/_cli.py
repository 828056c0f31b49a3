"""``astromorph similar``, ``astromorph cluster`` and ``astromorph classify``: embedding tables."""
import logging

import numpy as np

from ..cli import add_model_option, add_runtime_options, check_range, report

__all__ = ["register"]

log = logging.getLogger(__name__)


def _read(args, *, output_has_its_columns=True):
    """The input table; before any work, an output that will hold its columns and cannot
    is refused (CSV and the embedding column, any column the format cannot hold; FITS and
    names that differ only by case)."""
    from .._cli_annotate import _read_catalogue
    from .._io import check_columns_held, check_fits_names

    table = _read_catalogue(args.table, "table")
    if args.output and output_has_its_columns:
        check_columns_held(args.output, table)
        check_fits_names(args.output, table.colnames, meta=table.meta)
    return table


def _write_or_print(table, args, what):
    from .._io import write_table

    if args.output:
        write_table(table, args.output, overwrite=args.overwrite)
        report(args, f"wrote {len(table)} {what} to {args.output}")
    else:
        show = table.copy(copy_data=False)
        for name in list(show.colnames):  # no vectors: 2-d columns, and the vector column
            # by name (an object column of one array per row, as pandas writes Parquet)
            if show[name].ndim > 1 or name == getattr(args, "column", None):
                show.remove_column(name)
        show.pprint(max_lines=-1, max_width=-1)


def _check_outputs(args, **outputs):
    """Every output (option name -> path) checked before any work or any write (extension,
    existing file, folder, one of the inputs (the table, a query image), two outputs naming
    one file, matplotlib for a picture)."""
    from .. import _plotting
    from .._io import check_distinct_outputs, check_output

    check_distinct_outputs({"--" + name: p for name, p in outputs.items()})
    inputs = [p for p in (args.table, getattr(args, "image", None)) if p]  # similar --image
    for p in outputs.values():
        if p:
            check_output(p, overwrite=args.overwrite, table=p == getattr(args, "output", None),
                         inputs=inputs)
    for name in ("gallery", "map"):  # matplotlib, and an extension naming a format
        if outputs.get(name):
            _plotting.picture_format(outputs[name])


def _cmd_similar(args):
    import astropy.units as u

    from ._index import SimilarityIndex
    from ._plots import _row_images
    from ..exceptions import InvalidArgumentError

    check_range("-k", args.k, low=1)
    check_range("--max-separation", args.max_separation, low=0)
    check_range("--threads", args.threads, low=0)
    _check_outputs(args, output=args.output, gallery=args.gallery)
    given = [n for n in ("query", "ra", "image") if getattr(args, n) is not None]
    if len(given) != 1 or (args.ra is None) != (args.dec is None):
        raise InvalidArgumentError("give exactly one query: --query ROW, --ra/--dec or "
                                   "--image FILE")
    for option, value, needed, name in (  # options of another query: not silently ignored
            ("--max-separation", args.max_separation, args.ra, "--ra/--dec"),
            ("--ra-col", args.ra_col, args.ra, "--ra/--dec"),
            ("--dec-col", args.dec_col, args.ra, "--ra/--dec"),
            ("--source-column", args.source_column, args.gallery, "--gallery"),
            ("-m/--model", args.model, args.image, "--image"),
            ("--providers", args.providers, args.image, "--image"),
            ("--threads", args.threads, args.image, "--image"),
            ("--precision", args.precision, args.image, "--image")):
        if value is not None and needed is None:
            raise InvalidArgumentError(f"{option} applies only with {name}")
    table = _read(args, output_has_its_columns=False)  # neighbours: no embeddings
    # a row number (-1 is no row from the end), refused naming the table's rows: checked
    # once the table is read, before the index is built
    if len(table) or args.query is None:
        check_range("--query", args.query, low=0, high=len(table) - 1)
    else:
        raise InvalidArgumentError(f"--query {args.query}: the table has no rows")
    index = SimilarityIndex.from_table(table, column=args.column, backend=args.backend)
    if args.image is not None:  # the model named, else the one that made the table's vectors
        from ._index import _query_model

        model = _query_model(table.meta, args.column, args.model, providers=args.providers,
                             threads=args.threads, precision=args.precision)
    if args.gallery:  # the column of the rows' files, checked before any write
        _row_images(index, [], None, args.source_column)
    kwargs = dict(k=args.k, include_query=args.include_query)
    if args.query is not None:
        result = index.query(row=args.query, **kwargs)
    elif args.ra is not None:
        result = index.query(position=(args.ra, args.dec), max_separation=(
            None if args.max_separation is None else args.max_separation * u.arcsec),
            ra_col=args.ra_col, dec_col=args.dec_col, **kwargs)
    else:
        result = index.query(image=args.image, model=model, **kwargs)
    if "query_separation_arcsec" in result.meta:
        report(args, f"query: row {result.meta['query_row']} "
               f"({result.meta['query_separation_arcsec']:.2f} arcsec from the position)")
    if result.meta.get("query_flags"):  # a usable but flagged stamp (EDGE, BLANK...)
        from .._flags import Flag

        flags = result.meta["query_flags"]
        report(args, f"query image {args.image}: flags {flags} "
               f"({'|'.join(f.name for f in Flag if f & flags)})")
    _write_or_print(result, args, "neighbours")
    if args.gallery:
        index.gallery(result, args.gallery, source_column=args.source_column,
                      overwrite=args.overwrite)
        report(args, f"wrote gallery {args.gallery}")
    return 0


#: The largest number of clusters ``astromorph cluster`` tries by BIC (without ``--k-max``).
_K_MAX = 12


def _made_by(table):
    """``'model NAME vVERSION vectors'`` from a table's provenance meta, or ``'vectors'``."""
    model = table.meta.get("astromorph_model")
    version = table.meta.get("astromorph_model_version")
    return f"model {model}{f' v{version}' if version else ''} vectors" if model else "vectors"


def _cmd_cluster(args):
    from ._common import check_prefix
    from ._mixture import _cluster_table
    from ._plots import plot_map
    from ..exceptions import InvalidArgumentError

    check_prefix(args.prefix)  # before any work
    for option, value, low in (("-k", args.k, 1), ("--k-max", args.k_max, 2),
                               ("--pca", args.pca, 1), ("--seed", args.seed, 0)):
        check_range(option, value, low=low)
    # options with a default that this run would not use: refused, not silently ignored
    if args.map_method is not None and not args.map:
        raise InvalidArgumentError("--map-method applies only with --map")
    if args.k_max is not None and args.k is not None:
        raise InvalidArgumentError("--k-max applies only without -k (it bounds the number "
                                   "of clusters chosen by BIC)")
    map_method = args.map_method or "auto"
    _check_outputs(args, output=args.output, map=args.map)
    if args.map:  # a map that cannot be drawn fails before the fit and any write
        from ._plots import check_map_method

        check_map_method(map_method)
    table = _read(args)
    kwargs = {"k_range": range(2, (args.k_max or _K_MAX) + 1)} if args.k is None else {}
    out, mixture, name = _cluster_table(table, args.column, args.k, args.prefix,
                                        args.on_conflict,
                                        dict(n_pca=args.pca, seed=args.seed,
                                             covariance_type=args.covariance, **kwargs))
    if mixture.bic_ and len(mixture.bic_) > 1:
        report(args, "BIC: " + ", ".join(f"k={k}: {v:.0f}" for k, v in mixture.bic_.items()))
    counts = np.bincount(np.ma.filled(out[name], -1)[~np.ma.getmaskarray(out[name])],
                         minlength=mixture.n_components_)
    report(args, f"{mixture.n_components_} clusters; members: "
           + ", ".join(f"{i}: {c}" for i, c in enumerate(counts)))
    _write_or_print(out, args, "rows")
    if args.map:
        from ._common import table_embeddings

        x, valid = table_embeddings(out, args.column)
        labels = np.where(valid, np.ma.filled(out[name], -1), -1)
        x = np.where(valid[:, None], x, np.nan)
        from astropy.table import Column

        plot_map(x, args.map, labels=Column(labels, name=name), method=map_method,
                 title=f"{args.table}: {mixture.n_components_} Gaussian-mixture clusters "
                       f"of {_made_by(out)}",
                 seed=args.seed, overwrite=args.overwrite)
        report(args, f"wrote map {args.map}")
    return 0


def _cmd_classify(args):
    from .._annotate import check_clashes, check_on_conflict
    from ._common import check_prefix, table_embeddings
    from ._head import LabelHead, _class_columns, _missing_labels
    from ._state import table_provenance
    from ..exceptions import InputError

    check_prefix(args.prefix)  # before any work (LabelHead.annotate: only after the fit)
    check_range("-C", args.C, low=0, low_open=True)
    _check_outputs(args, output=args.output)
    table = _read(args)
    if args.labels not in table.colnames:
        raise InputError(f"no label column {args.labels!r} (columns: {table.colnames})")
    # float32 stays float32, and masked rows are left unfilled (only labelled rows are used)
    x, valid = table_embeddings(table, args.column, dtype=None, fill_masked=False)
    col = table[args.labels]
    values = np.asarray(np.ma.getdata(col))  # the labels' own dtype, as LabelHead.fit keeps
    if values.dtype.kind == "S":  # text read from FITS: its class columns name the text
        values = np.char.decode(values, "utf-8", errors="replace")
    labelled = valid & ~_missing_labels(col)  # masked, empty, None or NaN: unlabelled
    if labelled.sum() < 2:
        raise InputError(f"column {args.labels!r} labels fewer than two rows with embeddings")
    check_on_conflict(args.on_conflict)
    check_clashes(table, _class_columns(args.prefix, np.unique(values[labelled]))
                  + [f"{args.prefix}_label"], args.on_conflict)  # before the fit
    head = LabelHead(class_weight="balanced" if args.balanced else None, C=args.C)
    head.fit(x[labelled], values[labelled],
             provenance=table_provenance(table.meta, args.column))
    out = head.annotate(table, column=args.column, prefix=args.prefix,
                        on_conflict=args.on_conflict)
    report(args, f"fitted on {int(labelled.sum())} labelled rows, classes "
           f"{head.classes_.tolist()}, C={head.C_:.3g}; applied to {int(valid.sum())} rows")
    _write_or_print(out, args, "rows")
    return 0


def register(sub):
    """Add ``similar``, ``cluster`` and ``classify`` to the ``astromorph`` command line."""
    p = sub.add_parser(
        "similar", help="nearest neighbours of a row, position or image in an embedding table",
        description="Find the rows of a table most similar (cosine similarity of the "
                    "'embedding' column, e.g. from `astromorph predict embedding ...`) to a "
                    "query row, the row nearest a sky position, or an image.")
    p.add_argument("table", metavar="TABLE",
                   help="table with an embedding column (ECSV, FITS or Parquet)")
    p.add_argument("--query", type=int, metavar="ROW", help="query by this row number (0-based)")
    p.add_argument("--ra", type=float, help="query by the row nearest this RA (deg)")
    p.add_argument("--dec", type=float, help="... and Dec (deg)")
    p.add_argument("--image", metavar="FILE", help="query by an image file (embedded with --model)")
    p.add_argument("-k", type=int, default=25, help="number of neighbours (default 25)")
    p.add_argument("-o", "--output", metavar="OUT", help="output table (default: print)")
    p.add_argument("--gallery", metavar="PNG", help="save a picture of the query and neighbours")
    p.add_argument("--column", default="embedding", help="embedding column (default embedding)")
    p.add_argument("--source-column", default=None,
                   help="column of image paths for --gallery (default: source, path, file)")
    add_model_option(p, "with --image: the model embedding it (default: the one that made "
                        "the table's vectors, by its meta; else embedding)")
    add_runtime_options(p, threads_help="with --image: CPU threads of ONNX Runtime (default: "
                        "$ASTROMORPH_NUM_THREADS, else ONNX Runtime's choice; 0: ONNX "
                        "Runtime's choice)")
    p.add_argument("--backend", default="exact", choices=["exact", "auto", "faiss", "hnswlib"],
                   help="search backend (default exact)")
    p.add_argument("--max-separation", type=float, metavar="ARCSEC",
                   help="with --ra/--dec: fail when the nearest row is farther")
    p.add_argument("--ra-col", default=None,
                   help="with --ra/--dec: the table's RA column (default: ra, RA, RAJ2000, ...)")
    p.add_argument("--dec-col", default=None,
                   help="with --ra/--dec: the table's Dec column (default: dec, DEC, DEJ2000, ...)")
    p.add_argument("--include-query", action="store_true", help="keep the query row in the results")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (default: refuse before any work)")
    p.set_defaults(func=_cmd_similar)

    p = sub.add_parser(
        "cluster", help="Gaussian-mixture clusters of an embedding table",
        description="Cluster the 'embedding' vectors of a table with a Gaussian mixture "
                    "(number of clusters by BIC unless -k) and add 'cluster' and "
                    "'cluster_prob' columns.")
    p.add_argument("table", metavar="TABLE",
                   help="table with an embedding column (ECSV, FITS or Parquet)")
    p.add_argument("-o", "--output", metavar="OUT", help="output table (default: print)")
    p.add_argument("-k", type=int, default=None, help="number of clusters (default: by BIC)")
    p.add_argument("--k-max", type=int, default=None,
                   help=f"without -k: largest k tried by BIC (default {_K_MAX})")
    p.add_argument("--pca", type=int, default=16, help="principal components kept (default 16)")
    p.add_argument("--covariance", choices=["full", "diag"], default="full",
                   help="covariance of each cluster: full, or diag (diagonal, for tables with "
                        "few rows per cluster; default full)")
    p.add_argument("--column", default="embedding", help="embedding column (default embedding)")
    p.add_argument("--prefix", default="cluster", help="name of the new columns (default cluster)")
    p.add_argument("--on-conflict", choices=["error", "suffix", "replace"], default="error",
                   help="when a new column already exists (default: error)")
    p.add_argument("--map", metavar="PNG", help="save a 2-d map coloured by cluster")
    p.add_argument("--map-method", default=None, choices=["auto", "umap", "tsne", "pca"],
                   help="with --map: its projection (default auto: UMAP when umap-learn is "
                        "installed, else t-SNE up to 5000 rows, else PCA)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the mixture fit and the map (default 0)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (default: refuse before any work)")
    p.set_defaults(func=_cmd_cluster)

    p = sub.add_parser(
        "classify", help="few-label classifier on an embedding table",
        description="Fit a logistic-regression head on the rows of a table that have a label "
                    "and apply it to every row: <prefix>_p_<class> and <prefix>_label columns "
                    "(in <class>, a character other than letters, digits, '_', '.', '-' and "
                    "'+' becomes '_': 'Sa/Sb' gives <prefix>_p_Sa_Sb; <prefix>_label holds "
                    "the labels as given).")
    p.add_argument("table", metavar="TABLE",
                   help="table with an embedding column (ECSV, FITS or Parquet)")
    p.add_argument("--labels", required=True, metavar="COLUMN",
                   help="column of labels; empty or masked entries are unlabelled")
    p.add_argument("-o", "--output", metavar="OUT", help="output table (default: print)")
    p.add_argument("--prefix", default="head", help="prefix of the new columns (default head)")
    p.add_argument("--on-conflict", choices=["error", "suffix", "replace"], default="error",
                   help="when a new column already exists (default: error)")
    p.add_argument("--balanced", action="store_true", help="weight classes equally")
    p.add_argument("-C", type=float, default=None,
                   help="inverse L2 strength (default: by cross-validation)")
    p.add_argument("--column", default="embedding", help="embedding column (default embedding)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output file (default: refuse before any work)")
    p.set_defaults(func=_cmd_classify)
    return p
