"""``astromorph demo``: the main job on the packaged input (a Hubble Deep Field crop)."""
from collections import Counter
from pathlib import Path

from ._plotting import figure, picture_format

__all__ = ["demo_paths", "run_demo", "register"]

DATA = Path(__file__).resolve().parent / "data"


def demo_paths():
    """``(image, catalogue)`` paths of the packaged demo input."""
    return DATA / "hdf_crop.fits", DATA / "hdf_sources.ecsv"


def run_demo(*, model="morphology", output="astromorph_demo.ecsv", gallery=None, overwrite=False,
             progress=None, providers=None, threads=None, precision=None):
    """Annotate the packaged HDF sources with a galaxy model; write the table (and a gallery).

    Parameters
    ----------
    model : str, optional
        Model name or folder: a model of optical galaxy stamps (the demo image is an
        optical one), given the catalogue's ``r90`` column as ``size_col``. A radio or
        difference-imaging model raises `InvalidArgumentError` before any work.
    output : str or os.PathLike, optional
        Output table (its extension picks the format); ``None`` writes none.
    gallery : str or os.PathLike, optional
        Also write a gallery of labelled colour thumbnails, in the picture format its
        extension names (.png, .pdf, .svg...); for models with labels (classifiers).
    overwrite : bool, optional
        Replace existing output files (default: raise `OutputExistsError` before any work).
    progress : bool, optional
        Show a progress bar (default: on a terminal).
    providers, threads, precision : optional
        How the model is loaded and run, as for `astromorph.load_model`.

    Returns
    -------
    astropy.table.QTable
    """
    from astropy.table import QTable

    from ._adapters import fixed_field, model_family
    from ._annotate import annotate
    from ._io import check_distinct_outputs, check_output, write_table
    from ._model import as_model
    from .exceptions import InvalidArgumentError

    check_distinct_outputs({"output": output, "gallery": gallery})  # before any work
    for path in (output, gallery):
        if path:
            check_output(path, overwrite=overwrite, table=path == output)
    if gallery:
        picture_format(gallery)  # a missing matplotlib or a bad extension fails here
    model = as_model(model, providers=providers, threads=threads, precision=precision)
    family = model_family(model.card)
    if family != "optical":
        needs = {"radio": "radio images (FIRST-like, Jy/beam)",
                 "triplet": "science, reference and difference stamps"}.get(family, family)
        raise InvalidArgumentError(
            f"the demo input is an optical image (a crop of the Hubble Deep Field); model "
            f"{model.name!r} takes {needs}: run `astromorph annotate` or `astromorph "
            f"predict` on such data instead")
    if gallery and model.labels is None:
        raise InvalidArgumentError(f"the gallery (--gallery {str(gallery)!r}) shows labels; "
                                   f"model {model.name!r} gives none (outputs: "
                                   f"{', '.join(model.output_names)})")
    image, catalogue = demo_paths()
    table = QTable.read(catalogue)
    size_col = "r90" if fixed_field(model.card) is None else None  # galaxy models only
    result = annotate(table, str(image), model=model, size_col=size_col, progress=progress)
    if output:
        write_table(result, output, overwrite=overwrite)
    if gallery:
        _gallery(result, image, gallery, overwrite=overwrite)
    return result


def _gallery(table, image, path, n=24, *, overwrite=False):
    """Colour thumbnails of the largest sources clear of the crop's edges, labelled.

    Each thumbnail spans the field the network saw (the card's stamp size for the source's
    ``r90``), at the image's own pixels.
    """
    import numpy as np
    from astropy.io import fits
    from astropy.nddata import Cutout2D
    from astropy.visualization import make_lupton_rgb
    from astropy.wcs import WCS

    from ._flags import Flag, describe_flags
    from ._io import atomic_output
    from ._plotting import save_figure
    from .preprocessing import stamp_size_from_petrosian

    label_col = next(c for c in table.colnames if c.endswith("_label"))
    prefix = label_col[:-len("_label")]
    with fits.open(image) as hdul:
        planes = {h.header.get("BAND"): h for h in hdul if h.data is not None}
        wcs = WCS(planes["r"].header)
        scale = wcs.proj_plane_pixel_scales()[0].to_value("arcsec")
        r90 = np.asarray(table["r90"])
        on_edge = (np.asarray(table[f"{prefix}_flags"]) & (Flag.EDGE | Flag.OFF_IMAGE)) != 0
        flags = np.asarray(table[f"{prefix}_flags"])
        order = np.lexsort((-r90, on_edge))[:n]  # clear of the edges first, largest first
        fig = figure(figsize=(12, 8.6))
        axes = fig.subplots(4, 6)
        for ax, k in zip(axes.ravel(), order):
            pos = wcs.pixel_to_world(*wcs.world_to_pixel_values(table["ra"][k].value,
                                                                table["dec"][k].value))
            side = max(24, int(round(stamp_size_from_petrosian(r90[k]) / scale)))
            cut = [Cutout2D(planes[b].data, pos, side, wcs=wcs, mode="partial", fill_value=0).data
                   for b in "irg"]
            with np.errstate(invalid="ignore", divide="ignore"):
                rgb = make_lupton_rgb(*cut, Q=8, stretch=0.5)
            ax.imshow(rgb, origin="lower")
            p = table[f"{prefix}_p_{table[label_col][k]}"][k]
            # what a user needs of each tile: the source, its label and probability, the
            # field shown and any quality flag of its row
            ax.set_title(f"#{table['id'][k]} {table[label_col][k]} p={p:.2f}\n"
                         f"{side * scale:.1f}\u2033 {describe_flags(int(flags[k]))}".rstrip(),
                         fontsize=8)
            ax.set_axis_off()
        for ax in axes.ravel()[len(order):]:
            ax.set_axis_off()
        meta = table.meta
        fig.suptitle(f"astromorph demo, model {meta.get('astromorph_model', prefix)} "
                     f"v{meta.get('astromorph_model_version', '?')}: the {len(order)} largest "
                     f"of {len(table)} sources of the packaged HDF crop, clear of its edges "
                     f"first\neach tile: id, label, probability; the field the stamp covered "
                     f"(arcsec), flags. Lupton RGB (i, r, g), north up, east left")
        fig.tight_layout()
        with atomic_output(path, overwrite=overwrite) as tmp:
            save_figure(fig, tmp, dpi=90, fmt=picture_format(path))


def _run(args):
    from .cli import check_range, report

    check_range("--threads", args.threads, low=0)
    result = run_demo(model=args.model, output=args.output, gallery=args.gallery,
                      overwrite=args.overwrite, progress=False if args.no_progress else None,
                      providers=args.providers, threads=args.threads, precision=args.precision)
    label_col = next((c for c in result.colnames if c.endswith("_label")), None)
    if args.quiet:  # errors only: the table is in the file
        return 0
    if label_col is None:  # e.g. an embedding: no labels to count
        new = result.meta["astromorph_columns"].split(",")
        print(f"{len(result)} sources of the packaged Hubble Deep Field crop, model "
              f"{args.model}: columns {', '.join(new)}")
        cols = ["id", "r90"] + new
    else:
        counts = Counter(str(v) for v in result[label_col] if v is not None and str(v) != "--")
        print(f"{len(result)} sources of the packaged Hubble Deep Field crop, model "
              f"{args.model}:")
        for label, count in counts.most_common():
            print(f"  {label:12s} {count}")
        cols = ["id", "r90", label_col] + [c for c in result.colnames if "_p_" in c] + \
            [c for c in result.colnames if c.endswith("_flags")]
    result[cols][:10].pprint(max_width=-1)
    if args.output:
        report(args, f"wrote {args.output}")
    if args.gallery:
        report(args, f"wrote {args.gallery}")
    return 0


def register(sub):
    from .cli import add_model_option, add_runtime_options

    p = sub.add_parser("demo", help="annotate the packaged Hubble Deep Field crop",
                       description="Run annotate on the packaged demo input (a crop of the "
                                   "Hubble eXtreme Deep Field picture with a nominal WCS, and "
                                   "the sources detected in it) and write the table.")
    add_model_option(p, "an optical galaxy model: name or path (default: morphology)",
                     default="morphology")
    p.add_argument("-o", "--output", default="astromorph_demo.ecsv",
                   help="output table (default: astromorph_demo.ecsv)")
    p.add_argument("--gallery",
                   help="also write a gallery of labelled thumbnails (.png, .pdf, .svg...)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (default: refuse before any work)")
    add_runtime_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
