"""Benchmark: annotate 10,000 sources on a 4096 x 4096 float32 FITS image with a TAN WCS.

Compares, in one run and on the same machine:

* ``astromorph.annotate`` (vectorised WCS stamps from the memory-mapped file,
  one preprocessing call per chunk, batched model calls), timed end to end,
  and its stages timed separately (cutout+resample, preprocessing, model);
* the naive way: for each source, astropy ``Cutout2D`` + one
  ``reproject_interp`` call onto the model grid + the same preprocessing +
  one model call. It is timed on ``--naive`` sources (default 300, at most
  ``--n``) and its per-source time is scaled to the full catalogue.

annotate shares the cutting and preprocessing among threads (one per core)
while the model scores the parts already done; the stages are timed the
same way. Every precision of the model runs in turn (float32, and the int8
variant where the card lists one), each against the naive way with the same
model file.

Usage::

    python benchmarks/bench_annotate.py [--model morphology] [--precision float32 int8]
                                        [--n 10000] [--naive 300] [--off-image 200000]

Also times a survey catalogue on the image: the ``--n`` sources plus ``--off-image``
(default 200,000) spread over the whole sky, flagged OFF_IMAGE without a stamp.

Also times the positions of the catalogue written as sexagesimal text columns (as a CSV
gives them) against astropy's ``Angle`` on the same strings.

Prints the speed-up of annotate over the naive way and the fraction of
annotate's time spent cutting and resampling, and splits the speed-up into
the model-free stages and the model itself (which bounds the end-to-end
ratio: annotate cannot be faster than one batched pass of the network). No
numbers are asserted.
"""
import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from astropy import units as u
from astropy.coordinates import Angle, SkyCoord
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.table import Table
from astropy.wcs import WCS

import astromorph
from astromorph._adapters import RawStamps, fixed_field, model_family, prepare
from astromorph._annotate import (_cut_band, _grid, _plan_reads, _positions,
                                  _processing_order, _sky_positions, _workers)
from astromorph._cutouts import STAMP_CHUNK
from astromorph._images import parse_sky_images

PIXEL_SCALE = 0.396  # arcsec/pixel, SDSS-like


def make_image(path, n=4096, n_gal=3000, seed=1):
    """Sky with noise and elliptical exponential galaxies; TAN WCS, rotated 12 degrees."""
    rng = np.random.default_rng(seed)
    img = rng.normal(0, 0.01, (n, n)).astype(np.float32)
    r = 15
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    for x, y in rng.uniform(r, n - r - 1, (n_gal, 2)).astype(int):
        q, pa, h = rng.uniform(0.3, 1), rng.uniform(0, np.pi), rng.uniform(1.5, 5)
        xr = xx * np.cos(pa) + yy * np.sin(pa)
        yr = (-xx * np.sin(pa) + yy * np.cos(pa)) / q
        img[y - r:y + r + 1, x - r:x + r + 1] += rng.uniform(0.2, 3) * np.exp(-np.hypot(xr, yr) / h)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [185.0, 15.0]
    w.wcs.crpix = [n / 2, n / 2]
    t = np.radians(12.0)
    s = PIXEL_SCALE / 3600
    w.wcs.cd = [[-s * np.cos(t), s * np.sin(t)], [s * np.sin(t), s * np.cos(t)]]
    fits.writeto(path, img, w.to_header(), overwrite=True)
    return w


def catalogue(w, n_src, n_pix, seed=2):
    rng = np.random.default_rng(seed)
    c = w.pixel_to_world(rng.uniform(40, n_pix - 40, n_src), rng.uniform(40, n_pix - 40, n_src))
    # Petrosian R90 of SDSS galaxies: a few arcsec
    return Table({"ra": c.ra.deg, "dec": c.dec.deg,
                  "petroR90_r": rng.uniform(3, 12, n_src) * u.arcsec})


def naive(model, path, cat, n_naive):
    """Cutout2D + reproject_interp + preprocessing + one model call, per source."""
    from reproject import reproject_interp

    family = model_family(model.card)
    with fits.open(path, memmap=True) as hdul:
        data, w = hdul[0].data, WCS(hdul[0].header)
        npix, scale, crop, _ = _grid(model, family, len(cat), np.asarray(cat["petroR90_r"]), None)
        start, in_model = time.perf_counter(), 0.0
        for k in range(n_naive):
            pos = SkyCoord(cat["ra"][k], cat["dec"][k], unit="deg")
            side = npix * scale[k] * 1.5 * u.arcsec
            cut = Cutout2D(data, pos, (side, side), wcs=w, mode="partial", fill_value=np.nan)
            out = WCS(naxis=2)
            out.wcs.ctype = ["RA---TAN", "DEC--TAN"]
            out.wcs.crval = [cat["ra"][k], cat["dec"][k]]
            out.wcs.crpix = [(npix + 1) / 2] * 2
            out.wcs.cdelt = [-scale[k] / 3600, scale[k] / 3600]
            stamp, _ = reproject_interp((cut.data, cut.wcs), out, shape_out=(npix, npix))
            raw = RawStamps("bands", stamp[None, None].astype(np.float32), bands=("r",),
                            pixel_scale=scale[k:k + 1])  # as annotate passes it
            x, _ = prepare(model, raw, crop_fraction=crop)
            t = time.perf_counter()
            model.predict(x, batch_size=1)
            in_model += time.perf_counter() - t
        return (time.perf_counter() - start) / n_naive, in_model / n_naive


def staged(model, path, cat, workers):
    """annotate's stages timed one by one (same code paths and threads as annotate)."""
    family = model_family(model.card)
    images = parse_sky_images(path)
    n = len(cat)
    coords = SkyCoord(cat["ra"], cat["dec"], unit="deg")
    npix, scale, crop, _ = _grid(model, family, n, np.asarray(cat["petroR90_r"]), None)
    with ThreadPoolExecutor(workers) as pool:
        t0 = time.perf_counter()
        sky = _sky_positions(images, coords)
        _plan_reads(images, sky, np.full(n, npix))  # one stamp side per source
        order = _processing_order(sky)  # annotate's order: by image row
        parts = [order[s:s + STAMP_CHUNK] for s in range(0, n, STAMP_CHUNK)]
        cut = list(pool.map(lambda rows: (rows, *_cut_band(images, sky, npix, scale, rows)),
                            parts))
        t1 = time.perf_counter()
        # with the pixel scales, as annotate passes them (radio stamps are resampled by them)
        xs = list(pool.map(lambda c: prepare(model, RawStamps("bands", c[1][:, None], bands=("r",),
                                                               pixel_scale=scale[c[0]],
                                                               flags=c[2]), crop_fraction=crop)[0],
                           cut))
        t2 = time.perf_counter()
        for x in xs:
            model.predict(x, batch_size=256, progress=False)
        t3 = time.perf_counter()
    return {"cutout+resample": t1 - t0, "preprocess": t2 - t1, "model": t3 - t2}


def run(model, path, cat, n_naive, repeats):
    """Print annotate's end-to-end time, its stages and the naive way for one model."""
    # warm the sessions (a single band is scored by the card's single-band graph, whose
    # session is made on first use) and the imports, outside the timed calls
    # galaxy models scale their stamps by the size column; others fix the field (and refuse it)
    size_col = None if fixed_field(model.card) else "petroR90_r"
    astromorph.annotate(cat[:8], path, model=model, size_col=size_col, progress=False)
    n = len(cat)
    totals = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = astromorph.annotate(cat, path, model=model, size_col=size_col, progress=False)
        totals.append(time.perf_counter() - t)
    fast_total = min(totals)
    stages = staged(model, path, cat, _workers(None))
    n_naive = min(n_naive, n)  # a small catalogue: the naive way is timed on all of it
    per_naive, per_naive_model = naive(model, path, cat, n_naive)

    staged_total = sum(stages.values())
    flag_col = f"{model.card.get('column_prefix', model.name)}_flags"
    n_flagged = int(np.count_nonzero(np.asarray(out[flag_col])))
    naive_total = per_naive * n
    print(f"\n== {model.name} v{model.version}, precision {model.precision}")
    print(f"annotate, {n} sources end to end: {fast_total:.2f} s ({n / fast_total:.0f} sources/s; "
          f"best of {repeats}: {', '.join(f'{t:.2f}' for t in totals)} s); flagged rows: "
          f"{n_flagged}")
    print(f"stages (timed separately, same code, {_workers(None)} worker threads):")
    for k, v in stages.items():
        print(f"  {k:16s} {v:7.2f} s  {v / staged_total:6.1%}")
    print(f"naive (Cutout2D + reproject_interp + 1 model call per source), timed on "
          f"{n_naive} sources: {per_naive * 1e3:.1f} ms/source -> {naive_total:.0f} s for {n}")
    print(f"  of which the model call: {per_naive_model * 1e3:.2f} ms/source")
    tag = f"[{model.precision}]"
    print(f"RATIO {tag} naive / annotate (end to end): {naive_total / fast_total:.1f}x")
    other_naive = (per_naive - per_naive_model) * n
    other_fast = stages["cutout+resample"] + stages["preprocess"]
    print(f"RATIO {tag} naive / annotate without the model (cutout, resample, preprocessing): "
          f"{other_naive / other_fast:.1f}x")
    print(f"RATIO {tag} model alone, one call per source / batches of 256: "
          f"{per_naive_model * n / stages['model']:.1f}x")
    print(f"FRACTION {tag} of annotate time in cutout+resample: "
          f"{stages['cutout+resample'] / staged_total:.1%}")


def text_positions(cat):
    """Positions from sexagesimal text columns (as a CSV gives them): annotate's parser
    against astropy's `Angle` on the same strings, as annotate read them before."""
    ra = Angle(cat["ra"], u.deg).to_string(u.hourangle, sep=":", precision=3)
    dec = Angle(cat["dec"], u.deg).to_string(u.deg, sep=":", precision=2, alwayssign=True)
    text = Table({"ra": ra, "dec": dec})
    # warm both sides, untimed: imports, and astropy's angle parser built on first use
    _positions(text[:2], None, None, None)
    Angle(ra[:2], unit=u.hourangle), Angle(dec[:2], unit=u.deg)
    t = time.perf_counter()
    coords, bad = _positions(text, None, None, None)
    fast = time.perf_counter() - t
    t = time.perf_counter()
    ref_ra, ref_dec = Angle(ra, unit=u.hourangle).deg, Angle(dec, unit=u.deg).deg
    slow = time.perf_counter() - t
    same = (not bad.any() and np.array_equal(coords.ra.deg, ref_ra)
            and np.array_equal(coords.dec.deg, ref_dec))
    print(f"\nsexagesimal text RA/Dec, {len(cat)} rows ({len(set(ra))} distinct RAs): "
          f"annotate's positions "
          f"{fast:.3f} s, astropy Angle alone {slow:.3f} s, identical degrees: {same}")
    print(f"RATIO text positions astropy Angle / annotate: {slow / fast:.1f}x")


def off_image(model, path, cat, n_off, repeats):
    """annotate on the catalogue plus ``n_off`` sources spread over the whole sky (a survey
    catalogue on one small image: nearly every row off it); prints the cost of an
    off-image row, which annotate flags OFF_IMAGE without cutting a stamp."""
    rng = np.random.default_rng(2)
    ra = np.concatenate([cat["ra"], rng.uniform(0, 360, n_off)])
    dec = np.concatenate([cat["dec"], np.degrees(np.arcsin(rng.uniform(-1, 1, n_off)))])
    size = np.concatenate([cat["petroR90_r"], np.full(n_off, 2.0)])
    survey = Table({"ra": ra, "dec": dec, "petroR90_r": size})
    size_col = None if fixed_field(model.card) else "petroR90_r"
    totals = []
    for _ in range(repeats):
        t = time.perf_counter()
        astromorph.annotate(survey, path, model=model, size_col=size_col, progress=False)
        totals.append(time.perf_counter() - t)
    print(f"\nannotate, {len(cat)} sources on the image + {n_off} off it: {min(totals):.2f} s "
          f"(best of {repeats})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="morphology")
    parser.add_argument("--precision", nargs="+", default=None,
                        help="model precisions to run (default: float32 and every variant "
                             "the card lists, e.g. int8)")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--naive", type=int, default=300)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--off-image", type=int, default=200_000,
                        help="sources off the image added for the survey-catalogue case")
    parser.add_argument("--repeats", type=int, default=2, help="annotate runs (best is kept)")
    args = parser.parse_args(argv)
    if args.model not in astromorph.list_models() and not os.path.exists(args.model):
        raise SystemExit(f"model {args.model!r} is not shipped (have {astromorph.list_models()})")
    card = astromorph.model_card(args.model)
    if model_family(card) == "triplet":
        raise SystemExit(f"model {args.model!r} scores (science, reference, difference) "
                         "triplets, which one image does not give: see bench_alerts.py and "
                         "bench_stamp_table.py")
    precisions = args.precision or ["float32", *(card.get("variants") or {})]
    models = [astromorph.load_model(args.model, providers="cpu", precision=p) for p in precisions]
    print(f"model {card['name']} v{card['version']} ({', '.join(precisions)}), input "
          f"{models[0].input_shape}, providers {models[0].providers}, {os.cpu_count()} CPU cores")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "image.fits")
        t = time.perf_counter()
        w = make_image(path, args.size)
        print(f"made {args.size}x{args.size} float32 image in {time.perf_counter() - t:.1f} s")
        cat = catalogue(w, args.n, args.size)
        text_positions(cat)
        for model in models:
            run(model, path, cat, args.naive, args.repeats)
        off_image(models[0], path, cat, args.off_image, args.repeats)


if __name__ == "__main__":
    main()
