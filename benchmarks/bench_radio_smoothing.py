"""Benchmark: radio stamps of a beam finer than FIRST's on pixels finer than 1.8".

Such stamps are smoothed to FIRST's beam on their own pixels, then sampled on FIRST's
1.8" grid by cubic convolution (``_native_to_first_grid``, ``_sample_on_first_grid`` of
`astromorph.preprocessing._radio`). This script times, in one run and on the same data,
the current code and the previous one (kept below: `scipy.signal.fftconvolve` in float64
of every image and of its validity mask, then the 16 gathers of the cubic convolution one
image at a time), alternated (best of ``--repeats``), for:

* `astromorph.annotate` of ``--n`` sources (2.5" beam; doubles of 7 to 25 sigma per lobe
  in Gaussian noise) on a SIN map of 1" and 0.5" pixels (stamps 577 and 1141 px across);
* `astromorph.predict_files` on ``--n`` cutouts of 601^2 (1") and 1201^2 (0.5") pixels;

and prints ms per stamp, the ratio, and the largest difference of the radio-morphology
model's probabilities between the two (they must agree within 1e-4). It asserts nothing
about speed.

Usage::

    python benchmarks/bench_radio_smoothing.py [--n 64] [--repeats 3] [--threads 2]
"""
import argparse
import contextlib
import os
import tempfile
import time

import numpy as np

import astromorph
from astromorph.preprocessing import _radio as rad


def previous_convolve(images, rows, kernel, area, *, cache=None):
    """The smoothing as it was (float64 `~scipy.signal.fftconvolve` of the images and of
    their masks: one mask for all where no image has an invalid pixel); ``cache`` (the
    current code's kernel transform, kept between calls) is not used."""
    from scipy.signal import fftconvolve

    block = images[rows]
    good = np.isfinite(block)
    total = fftconvolve(np.where(good, block, 0.0), kernel[None], mode="same", axes=(1, 2))
    if good.all():
        weight = fftconvolve(good[0].astype(float), kernel, mode="same")[None]
    else:
        weight = fftconvolve(good.astype(float), kernel[None], mode="same", axes=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        images[rows] = np.where(good, area * total / weight, np.nan)


def previous_sample_one(image, pixel_scale, *, size=rad.DATASET_IMAGE_PIXELS, offset=None):
    """The cubic convolution as it was: one 2-D image, 16 gathers of ``size`` x ``size``
    (``offset``, the grid's shift on the image that the current code takes, applied as
    there: the same points, so that only the sampling's speed differs)."""
    image = np.asarray(image, dtype=np.float64)
    ny, nx = image.shape
    scale_y, scale_x = rad.axis_scales(pixel_scale)
    axes = []
    shift = (0.0, 0.0) if offset is None else (float(v) for v in offset)
    for n, scale, d in zip((ny, nx), (scale_y, scale_x), shift):
        p = (n - 1) / 2 + d + (np.arange(size) - (size - 1) / 2) \
            * rad.FIRST_PIXEL_SCALE_ARCSEC / scale
        base = np.floor(p).astype(int)
        taps = np.clip(base[:, None] + np.arange(-1, 3), 0, n - 1)
        axes.append((taps, rad._keys_weights(p - base), (p >= 0) & (p <= n - 1)))
    (ty, wy, iny), (tx, wx, inx) = axes
    out = np.zeros((size, size))
    for i in range(4):
        for j in range(4):
            out += wy[:, i, None] * wx[None, :, j] * image[ty[:, i, None], tx[None, :, j]]
    out[~(iny[:, None] & inx[None, :])] = np.nan
    return out


def previous_sample(image, pixel_scale, *, size=rad.DATASET_IMAGE_PIXELS, offset=None):
    image = np.asarray(image)
    if image.ndim == 2:
        return previous_sample_one(image, pixel_scale, size=size, offset=offset)
    return np.stack([previous_sample_one(im, pixel_scale, size=size, offset=offset)
                     for im in image])


@contextlib.contextmanager
def previous_code():
    """The previous smoothing and sampling in place of the current ones."""
    saved = rad._convolve_normalised, rad._sample_on_first_grid
    rad._convolve_normalised, rad._sample_on_first_grid = previous_convolve, previous_sample
    try:
        yield
    finally:
        rad._convolve_normalised, rad._sample_on_first_grid = saved


def beam_map(path, scale, n, *, spacing=240.0, beam=2.5, seed=1):
    """A SIN map of ``scale`` arcsec pixels (float32 Jy/beam, noise 0.15 mJy/beam) with
    ``n`` doubles (lobes 25" either side of the centre, of 5 and 4 mJy/beam: 33 and 27
    sigma, seen through a ``beam`` arcsec circular beam) on a grid ``spacing`` arcsec apart.
    Returns a table of their positions and the map's WCS."""
    from astropy.io import fits
    from astropy.table import QTable
    from astropy.wcs import WCS
    import astropy.units as u

    side = int(np.ceil(np.sqrt(n)))
    # room for the outermost sources' 601" cutouts (`cutouts`), with 30" to spare
    npix = int(round((spacing * (side - 1) + 2 * 330) / scale)) | 1
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    w.wcs.crval, w.wcs.crpix = [150.0, 20.0], [(npix + 1) / 2] * 2
    w.wcs.cdelt = [-scale / 3600, scale / 3600]
    rng = np.random.default_rng(seed)
    img = rng.normal(0, rad.FIRST_TYPICAL_RMS_JY, (npix, npix)).astype(np.float32)
    sigma = beam / 2.3548 / scale
    r = int(np.ceil((25 + 4 * beam) / scale))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    offs = (np.arange(side) - (side - 1) / 2) * spacing / scale
    centres = [(oy, ox) for oy in offs for ox in offs][:n]
    for k, (oy, ox) in enumerate(centres):
        cy, cx = int((npix - 1) / 2 + oy), int((npix - 1) / 2 + ox)
        t = np.radians(20 * k)
        for d, flux in ((25, 0.005), (-25, 0.004)):
            dx, dy = d / scale * np.cos(t), d / scale * np.sin(t)
            img[cy - r:cy + r + 1, cx - r:cx + r + 1] += (flux * np.exp(
                -0.5 * ((xx - dx) ** 2 + (yy - dy) ** 2) / sigma ** 2)).astype(np.float32)
    h = w.to_header()
    h["BUNIT"] = "JY/BEAM"
    h["BMAJ"] = h["BMIN"] = beam / 3600
    h["BPA"] = 0.0
    fits.PrimaryHDU(img, header=h).writeto(path, overwrite=True)
    ys = np.array([int((npix - 1) / 2 + oy) for oy, _ in centres])
    xs = np.array([int((npix - 1) / 2 + ox) for _, ox in centres])
    ra, dec = w.all_pix2world(xs, ys, 0)
    return QTable({"ra": ra * u.deg, "dec": dec * u.deg}), (img, h, xs, ys)


def cutouts(folder, map_parts, half):
    """FITS cutouts of ``2 * half + 1`` pixels centred on each source of the map."""
    from astropy.io import fits

    img, header, xs, ys = map_parts
    paths = []
    for k, (x, y) in enumerate(zip(xs, ys)):
        h = header.copy()
        h["CRPIX1"], h["CRPIX2"] = h["CRPIX1"] - (x - half), h["CRPIX2"] - (y - half)
        path = os.path.join(folder, f"cut{k}.fits")
        fits.PrimaryHDU(img[y - half:y + half + 1, x - half:x + half + 1],
                        header=h).writeto(path, overwrite=True)
        paths.append(path)
    return paths


def alternated(func, repeats):
    """Best times of ``func`` with the current and the previous code, alternated, and the
    outputs of each."""
    times = {"current": [], "previous": []}
    out = {}
    for _ in range(repeats):
        for which in ("previous", "current"):
            with previous_code() if which == "previous" else contextlib.nullcontext():
                t = time.perf_counter()
                out[which] = func()
                times[which].append(time.perf_counter() - t)
    return min(times["previous"]), min(times["current"]), out


def max_dp(a, b):
    """Largest difference of the probabilities of ``a`` and ``b``, every row of both scored
    and smoothed (a benchmark of rows that were not would time something else)."""
    for t in (a, b):
        assert not np.any(t["radio_flags"] & int(astromorph.Flag.unusable())), \
            [r for r in t["reason"] if r][:3] if "reason" in t.colnames else t["radio_flags"]
        assert np.all(t["radio_smoothed"])
    cols = [c for c in a.colnames if c.startswith("radio_p_")]
    return max(float(np.max(np.abs(np.asarray(a[c], float) - np.asarray(b[c], float))))
               for c in cols)


def compare(label, n, repeats, func):
    """Time ``func`` (``n`` stamps) with the previous and the current code, both warmed up
    first (the model, imports such as scipy.signal's), print the line of ``label``, and
    return the largest probability difference."""
    alternated(func, 1)
    old, new, out = alternated(func, repeats)
    dp = max_dp(out["previous"], out["current"])
    print(f"{label} previous {old / n * 1e3:6.1f} ms/stamp, current {new / n * 1e3:6.1f} "
          f"ms/stamp ({old / new:.1f}x); max |dp| {dp:.2e}")
    return dp


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5])
    args = parser.parse_args(argv)
    n = args.n
    print(f"{n} sources, 2.5\" beam, threads={args.threads}, {os.cpu_count()} CPU cores")
    worst = 0.0
    with tempfile.TemporaryDirectory() as folder:
        for scale in args.scales:
            path = os.path.join(folder, "map.fits")
            table, parts = beam_map(path, scale, n)

            worst = max(worst, compare(
                f"annotate, {scale:g}\" map:     ", n, args.repeats,
                lambda: astromorph.annotate(table, path, model="radio-morphology",
                                            progress=False, threads=args.threads)))
            half = int(round(300 / scale))
            paths = cutouts(folder, parts, half)
            worst = max(worst, compare(
                f"predict_files, {2 * half + 1}^2 cutouts:", n, args.repeats,
                lambda: astromorph.predict_files("radio-morphology", paths, progress=False,
                                                 threads=args.threads)))
            for p in paths:
                os.remove(p)
    print(f"largest probability difference, current vs previous: {worst:.2e}")


if __name__ == "__main__":
    main()
