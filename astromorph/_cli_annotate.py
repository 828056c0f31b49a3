"""``astromorph annotate``: catalogue + images -> catalogue with model columns."""
__all__ = ["register"]


def _read_catalogue(path, what="catalogue"):
    """The table in the file ``path``, read by its extension; ``what`` names it in the
    errors (``"table"`` for the ``TABLE`` of the other commands)."""
    import csv
    import os

    from astropy.table import QTable

    from ._io import check_input_file, plain_votable_columns, read_parquet, table_format
    from .exceptions import InputError

    path = os.fspath(check_input_file(path, what))  # a missing file, not its extension
    fmt = table_format(path, read=True)
    # an ECSV cell of a stamp column (a (3, 63, 63) triplet, as `annotate -o x.ecsv` writes
    # one) is longer than the 131072 characters the csv module takes by default
    limit = csv.field_size_limit(2**31 - 1)  # C long on every platform
    try:
        if fmt == "ascii.csv":
            return QTable.read(path, format="ascii.csv")
        if fmt == "parquet":  # array columns in one piece, the rows of stamp columns reshaped
            return read_parquet(path)
        table = QTable.read(path, format=fmt)
        if fmt == "votable":  # its text and variable-length arrays as plain columns
            return plain_votable_columns(table)
        return table
    except (OSError, ValueError, csv.Error) as exc:
        raise InputError(f"{what} {path!r} cannot be read: {exc}") from exc
    finally:
        csv.field_size_limit(limit)


def _pixel_scale_option(text):
    """``--pixel-scale`` as `annotate_stamps` takes it: one number (arcsec/pixel), two
    numbers ``scale_y,scale_x`` (pixels that are not square) as a tuple, else a column name
    (None: not given)."""
    from .exceptions import InvalidArgumentError

    if text is None:
        return None
    parts = text.split(",")
    try:
        numbers = tuple(float(p) for p in parts)
    except ValueError:
        if len(parts) > 1 and any(p.strip() for p in parts):
            try:  # numbers and an empty part ("0.5,"): a mistyped pair, not a column
                [float(p) for p in parts if p.strip()]
            except ValueError:
                return text  # a column name
            raise InvalidArgumentError(f"--pixel-scale must be one number (arcsec/pixel), two "
                                       f"(scale_y,scale_x) or a column name, got {text!r}") \
                from None
        return text  # a column name
    if len(numbers) > 2:
        raise InvalidArgumentError(f"--pixel-scale must be one number (arcsec/pixel) or two "
                                   f"(scale_y,scale_x), got {len(numbers)}: {text!r}")
    return numbers[0] if len(numbers) == 1 else numbers


def _run(args):
    import astropy.units as u

    from ._annotate import annotate
    from ._io import check_columns_held, check_fits_names, check_output, write_table
    from ._predict import summary_line
    from ._stamp_table import annotate_stamps
    from .cli import check_model_output, check_range, report
    from .exceptions import InvalidArgumentError

    # options of one mode given in the other (a forgotten -i, say): before any work
    image_only = [o for o, v in (("--band", args.band), ("--ra-col", args.ra_col),
                                 ("--dec-col", args.dec_col), ("--size-col", args.size_col),
                                 ("--stamp-size", args.stamp_size)) if v is not None]
    stamp_only = [o for o, v in (("--stamp-col", args.stamp_col),
                                 ("--pixel-scale", args.pixel_scale),
                                 ("--negative-col", args.negative_col),
                                 ("--centre-col", args.centre_col),
                                 ("--crop-fraction", args.crop_fraction)) if v is not None]
    if args.image and stamp_only:
        raise InvalidArgumentError(f"{', '.join(stamp_only)}: for tables that hold their "
                                   "own stamps, not with --image")
    if not args.image and image_only:
        raise InvalidArgumentError(f"{', '.join(image_only)}: for cutting stamps from "
                                   "--image files; give the images with -i/--image")
    if args.centre_col is not None and len(args.centre_col) > 2:
        raise InvalidArgumentError(f"--centre-col takes one column of (x, y) pairs or two "
                                   f"columns, x then y; got {len(args.centre_col)}: "
                                   f"{args.centre_col}")
    check_range("--stamp-size", args.stamp_size, low=0, low_open=True)
    check_range("--crop-fraction", args.crop_fraction, low=0, high=1, low_open=True)
    check_range("--batch-size", args.batch_size, low=1)
    check_range("--threads", args.threads, low=0)
    if args.output:  # fail before any work
        check_output(args.output, overwrite=args.overwrite, table=True,
                     inputs=[args.catalog, *(args.image or [])])
        check_model_output(args.model, args.output)
    table = _read_catalogue(args.catalog)
    if args.output:  # its columns are the output's: still before any work
        check_columns_held(args.output, table)
        check_fits_names(args.output, table.colnames, meta=table.meta)
    common = dict(model=args.model, on_conflict=args.on_conflict, batch_size=args.batch_size,
                  providers=args.providers, threads=args.threads, precision=args.precision,
                  progress=False if args.no_progress else None,
                  match_beam=args.match_beam)
    if args.image:
        result = annotate(
            table, args.image, ra_col=args.ra_col, dec_col=args.dec_col,
            size_col=args.size_col,
            stamp_size=None if args.stamp_size is None else args.stamp_size * u.arcsec,
            bands=args.band, **common)
    else:
        scale = _pixel_scale_option(args.pixel_scale)
        centre = args.centre_col  # one column of (x, y) pairs, or an x and a y column
        if centre is not None:
            centre = centre[0] if len(centre) == 1 else tuple(centre)
        result = annotate_stamps(table, columns=args.stamp_col, pixel_scale=scale,
                                 negative=args.negative_col, centre=centre,
                                 crop_fraction=args.crop_fraction,
                                 copy=False,  # the table read here is not used again
                                 **common)
    if args.output:
        write_table(result, args.output, overwrite=args.overwrite)
    else:  # the stamps themselves (arrays, FITS bytes) are no reading matter
        stamps = [c for c in str(result.meta.get("astromorph_stamp_columns", "")).split(",")
                  if c in result.colnames]
        shown = result[[c for c in result.colnames if c not in stamps]] if stamps else result
        shown.pprint(max_lines=-1, max_width=-1)
        if stamps:
            report(args, f"(stamp column(s) {', '.join(stamps)} not printed; -o writes them)")
    report(args, summary_line(result) + (f"; table written to {args.output}" if args.output
                                         else ""))
    return 0


def register(sub):
    from .cli import add_model_option, add_runtime_options

    p = sub.add_parser(
        "annotate", help="add model columns to a catalogue, from FITS images with WCS or from "
                         "the stamps its rows hold",
        description="With --image: cut a stamp of every catalogue source from the images "
                    "(resampled with their WCS to the model's grid), score it, and write the "
                    "catalogue with new columns. Without: score the stamps the rows hold "
                    "(array columns or FITS bytes, e.g. science/reference/difference; see "
                    "--stamp-col). Formats by extension: .ecsv .fits .csv .parquet; read only: "
                    ".vot .xml (VOTable), .tbl (IPAC).")
    p.add_argument("catalog", metavar="CATALOG",
                   help="input catalogue (ECSV, FITS, CSV, Parquet, VOTable or IPAC)")
    p.add_argument("-i", "--image", action="append",
                   help="FITS image with a celestial WCS (repeat for bands or mosaic tiles)")
    add_model_option(p, "model name or path", required=True)
    p.add_argument("-o", "--output", help="output catalogue (default: print the table)")
    p.add_argument("--band", action="append",
                   help="band of each --image, in order (default: from the FITS headers)")
    p.add_argument("--ra-col", help="with --image: RA column (default: ra, RA, RAJ2000, ..., "
                        "else UCD pos.eq.ra;meta.main)")
    p.add_argument("--dec-col", help="with --image: Dec column (default: dec, DEC, DEJ2000, "
                        "..., else UCD pos.eq.dec;meta.main)")
    p.add_argument("--size-col", help="with --image: Petrosian R90 radius column (arcsec) for "
                                      "galaxy-scaled models (refused by models with a fixed "
                                      "field: real-bogus, radio-morphology)")
    p.add_argument("--stamp-size", type=float,
                   help="with --image, galaxy models: stamp side in arcsec for every source "
                        "(instead of --size-col)")
    p.add_argument("--stamp-col", action="append",
                   help="without --image: column holding the stamps (repeat for one column per "
                        "plane: science, reference, difference; default: found by name)")
    p.add_argument("--pixel-scale",
                   help="without --image: pixel scale of the stamps in arcsec/pixel: one "
                        "number, or two, scale_y,scale_x (rows, then columns), for pixels "
                        "that are not square (e.g. 0.75,0.5); or a column holding one or two "
                        "per row (default: from FITS WCS, else the model's)")
    p.add_argument("--negative-col",
                   help="without --image: boolean column of rows whose difference holds a "
                        "negative candidate (negated before scoring; not for ZTF stamps)")
    p.add_argument("--centre-col", action="append", metavar="COL",
                   help="without --image, difference-imaging models: the candidate's 0-based "
                        "pixel (x, y) in each row's stamps, where it is not their central "
                        "pixel n // 2 (stamps cut at the CCD edge): a column of (x, y) "
                        "pairs, or given twice, an x column then a y column; the model's "
                        "field is centred there (NaN or masked: n // 2)")
    p.add_argument("--crop-fraction", type=float, default=None, metavar="F",
                   help="without --image, galaxy models: central fraction of each stamp the "
                        "network sees, as for predict (default 0.35, for cutouts of "
                        "cutout_size_from_petrosian(petroR90_r); 1.0 for stamps already cut "
                        "to stamp_size_from_petrosian)")
    p.add_argument("--on-conflict", choices=["error", "suffix", "replace"], default="error",
                   help="when a new column already exists (default: error)")
    p.add_argument("--batch-size", type=int, default=256, metavar="N",
                   help="stamps per model call (default 256)")
    add_runtime_options(p, threads_help="CPU threads of ONNX Runtime (default: "
                        "$ASTROMORPH_NUM_THREADS, else ONNX Runtime's choice; 0: ONNX "
                        "Runtime's choice) and, with --image, "
                        "threads cutting the stamps (default: the CPU count, at most 8)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output file (default: refuse before any work)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-match-beam", dest="match_beam", action="store_false",
                   help="radio-morphology: score an image whose restoring beam is finer than "
                        "FIRST's 5.4\" in some direction as given (default: convolve it to the "
                        "smallest beam that contains FIRST's first)")
    p.set_defaults(func=_run)
