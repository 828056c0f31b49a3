"""``astromorph annotate``: catalogue + images -> catalogue with model columns."""
import sys

__all__ = ["register"]


def _read_catalogue(path):
    from astropy.table import QTable

    from ._io import table_format
    from .exceptions import InputError

    fmt = table_format(path)
    try:
        if fmt == "ascii.csv":
            return QTable.read(path, format="ascii.csv")
        return QTable.read(path, format=fmt)
    except FileNotFoundError:
        raise InputError(f"catalogue {path!r} does not exist") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"catalogue {path!r} cannot be read: {exc}") from exc


def _run(args):
    import astropy.units as u

    from ._annotate import annotate
    from ._io import write_table

    table = _read_catalogue(args.catalog)
    result = annotate(
        table, args.image, model=args.model, ra_col=args.ra_col, dec_col=args.dec_col,
        size_col=args.size_col, stamp_size=None if args.stamp_size is None else args.stamp_size * u.arcsec,
        bands=args.band, on_conflict=args.on_conflict, batch_size=args.batch_size,
        providers=args.providers, precision=args.precision,
        progress=False if args.no_progress else None)
    if args.output:
        write_table(result, args.output, overwrite=args.overwrite)
        print(f"wrote {len(result)} rows to {args.output}", file=sys.stderr)
    else:
        result.pprint(max_lines=-1 if len(result) < 100 else 60, max_width=-1)
    return 0


def register(sub):
    p = sub.add_parser(
        "annotate", help="add model columns to a catalogue from FITS images with WCS",
        description="Cut a stamp of every catalogue source from the images (resampled with "
                    "their WCS to the model's grid), score it, and write the catalogue with new "
                    "columns. Formats by extension: .ecsv .fits .csv .parquet.")
    p.add_argument("catalog", help="input catalogue (ECSV, FITS, CSV or Parquet)")
    p.add_argument("-i", "--image", action="append", required=True,
                   help="FITS image with a celestial WCS (repeat for bands or mosaic tiles)")
    p.add_argument("-m", "--model", required=True, help="model name or path")
    p.add_argument("-o", "--output", help="output catalogue (default: print the table)")
    p.add_argument("--band", action="append",
                   help="band of each --image, in order (default: from the FITS headers)")
    p.add_argument("--ra-col", help="RA column (default: ra, RA, RAJ2000, ...)")
    p.add_argument("--dec-col", help="Dec column (default: dec, DEC, DEJ2000, ...)")
    p.add_argument("--size-col", help="Petrosian R90 radius column (arcsec) for galaxy-scaled models")
    p.add_argument("--stamp-size", type=float, help="stamp side in arcsec for every source")
    p.add_argument("--on-conflict", choices=["error", "suffix", "replace"], default="error",
                   help="when a new column already exists (default: error)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--providers", default=None, help="auto, cpu, cuda or tensorrt")
    p.add_argument("--precision", choices=["float32", "int8"], default=None,
                   help="model variant: int8 is a quantised copy, faster on CPUs, where the "
                        "card lists one (default: float32)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
