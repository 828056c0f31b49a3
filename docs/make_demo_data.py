"""Make astromorph's packaged demo input from scikit-image's Hubble Deep Field picture.

The picture (``skimage/data/hubble_deep_field.jpg``, the Hubble eXtreme Deep
Field colour composite; NASA, public domain) is an 8-bit display image with
no astrometry. This script:

1. crops 400 x 400 pixels;
2. turns each colour plane into a sky-subtracted, flux-like band: display
   value minus the sky median, scaled so that the sky noise is 0.05, the noise
   level (a tenth of the asinh ``stretch``) for which the ``morphology`` model's
   colour stretch was set (SDSS nanomaggies); red/green/blue are named i/r/g;
3. writes them as three image HDUs (BITPIX 16 with BSCALE/BZERO, BAND keyword)
   with a *nominal* TAN WCS: the XDF centre (RA 03h32m38.5s, Dec -27d47m00s)
   and 0.14 arcsec/pixel (the XDF's ~2.3 arcmin over 1000 pixels), north up;
4. detects sources (Gaussian-smoothed sum of the bands above 5 sigma, at
   least 25 pixels), grows each to its 2-sigma isophote, and writes their
   positions and the radius containing 90% of the flux inside that isophote,
   a stand-in for the Petrosian R90 the morphology model is scaled by.

The WCS and the fluxes are nominal: good for showing the machinery, not for
science. Run::

    python docs/make_demo_data.py path/to/hubble_deep_field.jpg
"""
import sys
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from PIL import Image
from scipy import ndimage

OUT = Path(__file__).resolve().parents[1] / "astromorph" / "data"
PIXEL_SCALE = 0.14  # arcsec/pixel, nominal
SKY_NOISE = 0.05  # flux units: the morphology model's LUPTON_STRETCH / 10
CROP = (slice(60, 460), slice(20, 420))  # rows, columns of the 872 x 1000 picture


def main(jpeg):
    rgb = np.asarray(Image.open(jpeg), dtype=np.float32)[::-1]  # FITS: row 0 at the bottom
    rgb = rgb[CROP]
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [53.160417, -27.783333]
    w.wcs.crpix = [(rgb.shape[1] + 1) / 2, (rgb.shape[0] + 1) / 2]
    w.wcs.cdelt = [-PIXEL_SCALE / 3600, PIXEL_SCALE / 3600]
    hdus = [fits.PrimaryHDU()]
    bands = {}
    for plane, band in zip(range(3), "irg"):
        sky = rgb[..., plane] - np.median(rgb[..., plane])
        noise = 1.4826 * np.median(np.abs(sky))
        flux = sky * (SKY_NOISE / noise)
        bands[band] = flux
        hdu = fits.ImageHDU(flux.astype(np.float64), header=w.to_header(), name=band.upper())
        hdu.header["BAND"] = (band, "nominal: colour plane of the HDF picture")
        hdu.header["BUNIT"] = ("nominal", f"display value - sky, sky noise = {SKY_NOISE}")
        hdu.scale("int16", bscale=0.0002, bzero=0.0)
        hdus.append(hdu)
    hdus[0].header["ORIGIN"] = "scikit-image hubble_deep_field.jpg (NASA, public domain)"
    hdus[0].header["COMMENT"] = "Crop of the Hubble eXtreme Deep Field picture; nominal WCS/fluxes"
    OUT.mkdir(parents=True, exist_ok=True)
    fits.HDUList(hdus).writeto(OUT / "hdf_crop.fits", overwrite=True)

    total = ndimage.gaussian_filter(sum(bands.values()), 1.5)
    sky = np.median(total)
    sigma = 1.4826 * np.median(np.abs(total - sky))
    seeds, n = ndimage.label(total > sky + 5 * sigma)
    index = np.arange(1, n + 1)
    area = ndimage.sum_labels(np.ones_like(total), seeds, index)
    keep = index[area >= 25]
    yx = np.array(ndimage.center_of_mass(np.clip(total, 0, None), seeds, keep))
    # grow to the 2-sigma isophote (each pixel joins the nearest 5-sigma seed)
    grown, _ = ndimage.label(total > sky + 2 * sigma)
    flux = np.clip(total - sky, 0, None)
    yy, xx = np.indices(total.shape)
    radius = []
    for (y, x), k in zip(yx, keep):
        member = grown == grown[seeds == k][0]
        r = np.hypot(yy[member] - y, xx[member] - x)
        order = np.argsort(r)
        cum = np.cumsum(flux[member][order])
        radius.append(r[order][np.searchsorted(cum, 0.9 * cum[-1])] * PIXEL_SCALE)
    radius = np.asarray(radius)
    sky_pos = w.pixel_to_world(yx[:, 1], yx[:, 0])
    cat = Table({"id": np.arange(1, len(keep) + 1),
                 "ra": sky_pos.ra.deg * u.deg, "dec": sky_pos.dec.deg * u.deg,
                 "r90": np.round(radius, 3) * u.arcsec})
    cat["ra"].info.format = cat["dec"].info.format = ".6f"
    cat["r90"].description = "90% flux radius in the 2-sigma isophote (stand-in for Petrosian R90)"
    cat.meta["comments"] = ["Sources detected in astromorph/data/hdf_crop.fits "
                            "(docs/make_demo_data.py); nominal positions"]
    cat.write(OUT / "hdf_sources.ecsv", overwrite=True)
    print(f"wrote {OUT / 'hdf_crop.fits'} and {len(cat)} sources to {OUT / 'hdf_sources.ecsv'}")


if __name__ == "__main__":
    main(sys.argv[1])
