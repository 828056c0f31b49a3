"""Simulated difference-imaging triplets for training the ``real-bogus`` model.

The training set is built like autoScan (Goldstein et al. 2015) and braai
(Duev et al. 2019): fake transients and realistic artefacts on **real sky**.

Recipe (one triplet, all numpy/scipy):

1. *Scene*. A real ZTF alert stamp (the reference cutout, 85 %, or the
   science cutout, 15 %) from ``ztf_alerts/ztf_triplets.npz``, NaNs filled by
   the median, randomly flipped / rotated by multiples of 90 degrees and
   (60 %) shifted by up to 12 px (reflecting borders); the alert's NaN mask
   follows the sky. Its own PSF is assumed Gaussian with FWHM ``F0`` ~
   U(2.0, 2.8) px (Gaussian fits to stars in the real reference cutouts:
   2.1-2.8 px, 5-95 %). Optionally a host galaxy from
   the Galaxy Zoo cutouts (SDSS r-like green channel, JPEG asinh stretch
   inverted, sky-subtracted, rebinned so the galaxy spans ~5-30 px,
   random rotation, convolved with the scene PSF) is added, with a peak of
   1-150 times the science noise.
2. *Two epochs*. Reference = scene convolved with a Gaussian; science = scene
   convolved with another kernel (Gaussian, optionally elliptical and with
   extended wings, i.e. a Moffat-like profile), so that
   FWHM_sci / FWHM_ref ~ U(0.75, 1.75) (real alerts: 0.76-1.68); sub-pixel registration error
   (|dx| < 0.15 px) and photometric scale (x U(0.92, 1.08)) applied to the
   science epoch; noise: Gaussian sky noise with the level of the alert's
   own science cutout (x U(0.8, 1.25)) plus a source Poisson term; the
   reference gets a little extra noise; both saturate at 25k-45k counts.
3. *Subtraction* (Alard & Lupton 1998-like). The sharper image is convolved
   with a kernel fitted by ridge-regularised least squares on a basis of
   Gaussians (the analytic matching Gaussian plus a delta and 4 Gaussians,
   sigma 0.7-3.2 px) and a constant background, on pixels outside the central
   5 px and not saturated/masked. diff = science - matched reference (or
   matched science - reference); sign flipped for negative candidates
   (``isdiffpos = 'f'``: ZTF stores reference - science).
4. *Masks*. NaN masks shared by the three stamps: the alert's own mask
   (follows the sky), plus real ZTF masks, CCD-edge bands and rectangles
   (14 % of reals, 5 % of bogus + the 'edge_mask' kind), never on the centre.

Real class (label 1): a point source injected at the centre (+- 0.5 px),
S/N log-uniform between 3 and 1000 (half) or 3 and 80 (half) (S/N = flux / (sigma_diff * sqrt(4 pi
sigma_psf^2)), i.e. PSF-photometry S/N in the difference image):
hostless, on a host galaxy (offset 0-3 effective radii; nuclear included),
negative (faded: the source is in the reference), variable star (star in
both epochs, flux change).

Bogus class (label 0), from what goes wrong in real pipelines: PSF-mismatch
residuals around stars and galaxy cores (kernel width error, elliptical /
winged science PSF not captured by the circular kernel basis: rings and
quadrupoles, never a pure flux-scale error, which would be a PSF-shaped
residual indistinguishable from a variable star), misalignment dipoles
(global registration error or a local offset), cosmic rays (single pixels,
blobs, tracks, not convolved with the PSF), hot pixels, bad columns/rows,
saturated stars with bleed trails, CCD edges / masked regions with edge
artefacts, optical ghosts / halos (rings or blobs much broader than the
PSF) and pure noise peaks (stamp re-centred on the highest matched-filter
peak of a difference without any injection).
Both classes also get off-centre distractors (cosmic rays, hot pixels).

Recipe ``"v5"`` (``simulate_one(..., recipe="v5")``, used for training sets
only) changes three things that measurements of the real ZTF alerts showed
the v3 simulations get wrong (``docs/training.md``):

* *Masks near reals.* 9 % of reals also get a mask whose edge comes 2-6 px
  from the centre, like the bogus 'edge_mask' kind (9 % of bogus) but without
  its edge glow. In v3 a mask that close occurs only in bogus triplets, a
  shortcut that real alerts contradict: 3 of the 187 real ZTF alerts that
  braai calls real have masked pixels within 5 px of the centre.
* *ZOGY subtraction* (:func:`subtract_zogy`) for half of the triplets. ZTF
  subtracts with ZOGY: on the real alerts the candidate's FWHM in the
  difference follows the science PSF (median ratio 1.01) and is below 0.85 of
  the broader of the two epochs' PSFs in a fifth of them, which an
  Alard-Lupton difference (PSF = the broader one) never is. The other half
  keeps the Alard-Lupton step (DES-like pipelines, and the v3 validation and
  test sets).
* *PSF widths of the real alerts.* Reference FWHM F0 ~ U(2.0, 2.6) px and
  science / reference ratio log-normal (median 1.16, sigma 0.22, clipped to
  0.7-1.9), extra broadening U(0, 0.3) px: Gaussian fits to stars in the
  real cutouts give reference 2.05-2.59 px and science 1.78-3.74 px (5-95 %),
  ratio 0.77-1.68 (median 1.16), where v3 drew broader science PSFs (ratio
  U(0.75, 1.75), F0 ~ U(2.0, 2.8)).

Recipe ``"v6"`` is v5 without ZOGY: the near-centre masks and the PSF widths,
every triplet subtracted with the Alard-Lupton step (as in v3).

(The name "v4" belonged to the detected-candidates data set of the rejected
candidate 1.2.)

Every triplet records ``snr_det``, the detection significance a survey pipeline
would measure at its centre (:func:`detection_snr`: PSF matched filter on the
difference, sky noise measured on the stamp with the correlations from PSF
matching, plus the source Poisson variance). Evaluation also reports the
*candidates*, the triplets of either class with ``snr_det >= 5``: only those
would reach a real/bogus classifier in a survey.
"""

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = [
    "SkyBank",
    "GalaxyBank",
    "REAL_KINDS",
    "BOGUS_KINDS",
    "simulate_one",
    "simulate_batch",
    "subtract_images",
    "subtract_zogy",
    "psf_image",
    "detection_snr",
    "load_ztf_triplets",
    "split_alerts",
    "RECIPES",
]

#: Simulation recipes: "v3" (the shipped models' training sets and every validation and
#: test set), "v5" (near-centre masks on reals, ZOGY subtraction, PSF widths of the
#: real alerts; see the module docstring) and "v6" (v5 without ZOGY).
RECIPES = ("v3", "v5", "v6")
#: What each recipe changes from v3.
_RECIPE_CHANGES = {"v3": frozenset(), "v5": frozenset({"near_masks", "zogy", "real_psf"}),
                   "v6": frozenset({"near_masks", "real_psf"})}
#: Fraction of triplets subtracted with ZOGY instead of Alard-Lupton in recipe "v5".
ZOGY_FRACTION = 0.5
#: Fraction of reals with a mask 2-6 px from the centre in recipe "v5" (the rate of the
#: bogus 'edge_mask' kind, so that such a mask says nothing about the class).
NEAR_MASK_REAL = 0.09

SIZE = 63
C = SIZE // 2
_YY, _XX = np.mgrid[:SIZE, :SIZE].astype(np.float64)
_R = np.hypot(_YY - C, _XX - C)
_FIT_MASK_CENTRE = _R > 5.0
_F2S = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))  # FWHM -> sigma

REAL_KINDS = {"hostless": 0.24, "host": 0.26, "negative": 0.2, "variable": 0.3}
BOGUS_KINDS = {
    "psf_mismatch_star": 0.14,
    "psf_mismatch_galaxy": 0.09,
    "dipole": 0.13,
    "cosmic_ray": 0.12,
    "hot_pixel": 0.09,
    "bad_column": 0.07,
    "bleed_saturation": 0.09,
    "edge_mask": 0.09,
    "noise_peak": 0.12,
    "ghost_halo": 0.05,
}


# ----------------------------------------------------------------------------
# data banks
# ----------------------------------------------------------------------------
def load_ztf_triplets(data_dir):
    """Load the real ZTF alert triplets.

    Returns
    -------
    X : ndarray (N, 3, 63, 63) float32 with NaNs
    meta : list of dict
    """
    path = Path(data_dir) / "ztf_alerts" / "ztf_triplets.npz"
    d = np.load(path, allow_pickle=True)
    missing = [k for k in ("X", "meta") if k not in d.files]
    if missing:
        raise SystemExit(f"{path}: no array {', '.join(map(repr, missing))} (it has "
                         f"{d.files}): the alert triplets are X (N, 3, 63, 63) and meta")
    X = np.asarray(d["X"], dtype=np.float32)
    meta = [json.loads(m) if isinstance(m, (str, bytes)) else dict(m) for m in d["meta"]]
    return X, meta


def split_alerts(meta, seed=0, fractions=(0.7, 0.1, 0.2)):
    """Split alert indices into train/val/test, grouped by ZTF objectId.

    Returns a dict ``{"train": idx, "val": idx, "test": idx}`` of sorted int arrays.
    """
    objs = sorted({m["objectId"] for m in meta})
    rng = np.random.default_rng(1000 + seed)
    rng.shuffle(objs)
    n = len(objs)
    n_tr = int(round(fractions[0] * n))
    n_va = int(round(fractions[1] * n))
    groups = {"train": set(objs[:n_tr]), "val": set(objs[n_tr:n_tr + n_va]), "test": set(objs[n_tr + n_va:])}
    return {k: np.array(sorted(i for i, m in enumerate(meta) if m["objectId"] in g)) for k, g in groups.items()}


def _robust(x):
    m = np.nanmedian(x)
    s = 1.4826 * np.nanmedian(np.abs(x - m))
    if not np.isfinite(s) or s <= 0:
        s = np.nanstd(x) if np.isfinite(np.nanstd(x)) and np.nanstd(x) > 0 else 1.0
    return float(m), float(s)


class SkyBank:
    """Real-sky backgrounds from ZTF alert cutouts (science and reference stamps).

    Parameters
    ----------
    X : ndarray (N, 3, 63, 63)
        Real triplets (science, reference, difference), NaNs allowed.
    indices : array of int
        Alerts allowed as backgrounds (one split).
    """

    def __init__(self, X, indices):
        self.indices = np.asarray(indices, dtype=int)
        self.sci, self.ref, self.masks = [], [], []
        self.sci_sigma, self.ref_sigma, self.median = [], [], []
        for i in self.indices:
            s, r = X[i, 0].astype(np.float64), X[i, 1].astype(np.float64)
            with np.errstate(invalid="ignore"):
                ok = np.abs(X[i]) < 1e30  # NaN and masking sentinels (-3.4e38) are invalid
            s[~ok[0]] = np.nan
            r[~ok[1]] = np.nan
            mask = ~ok.all(axis=0)
            ms, ss = _robust(s)
            mr, sr = _robust(r)
            self.sci.append(np.where(np.isfinite(s), s, ms))
            self.ref.append(np.where(np.isfinite(r), r, mr))  # masked pixels: median (NaN again at the end)
            self.masks.append(mask)
            self.sci_sigma.append(ss)
            self.ref_sigma.append(sr)
            self.median.append(mr)
        self.real_masks = [m for m in self.masks if 0 < m.mean() < 0.6]

    def __len__(self):
        return len(self.indices)


def _load_gz_image(path, down=4, q=4.0):
    from PIL import Image

    with Image.open(path) as im:
        g = np.asarray(im, dtype=np.float32)[..., 1] / 255.0  # green ~ SDSS r
    g = np.sinh(q * g) / np.sinh(q)  # undo the asinh-like display stretch (approx.)
    h = (g.shape[0] // down) * down
    g = g[:h, :h].reshape(h // down, down, h // down, down).mean(axis=(1, 3))
    border = np.concatenate([g[:6].ravel(), g[-6:].ravel(), g[:, :6].ravel(), g[:, -6:].ravel()])
    g = g - np.median(border)
    c = g.shape[0] // 2
    peak = ndimage.gaussian_filter(g, 1.0)[c - 6:c + 7, c - 6:c + 7].max()
    if not np.isfinite(peak) or peak <= 0:
        return None
    return (g / peak).astype(np.float32)


class GalaxyBank:
    """Host galaxies from Galaxy Zoo (SDSS) JPEG cutouts.

    Parameters
    ----------
    paths : list of Path
        JPEG files (one split).
    """

    def __init__(self, paths):
        imgs = []
        for p in paths:
            g = _load_gz_image(p)
            if g is not None:
                imgs.append(g)
        self.images = imgs

    def __len__(self):
        return len(self.images)

    @staticmethod
    def list_paths(data_dir):
        data_dir = Path(data_dir)
        return sorted((data_dir / "gz1" / "images").glob("*.jp*g")) + sorted(
            (data_dir / "gz2" / "images").glob("*.jp*g")
        )

    def render(self, rng, centre_yx, size_px, angle):
        """Render a random galaxy with its centre at ``centre_yx`` (pixels).

        ``size_px``: size on the ZTF grid of the 106 px GZ frame's central
        galaxy (the GZ frame spans ~2.5-3 galaxy diameters).
        """
        g = self.images[rng.integers(len(self.images))]
        n = g.shape[0]
        zoom = size_px / n * 2.7  # output px per input px (GZ frame ~ 2.7 galaxy diameters)
        zoom = float(np.clip(zoom, 0.05, 1.0))
        src = ndimage.gaussian_filter(g, 0.45 / zoom) if zoom < 0.9 else g
        ca, sa = np.cos(angle), np.sin(angle)
        dy = (_YY - centre_yx[0]) / zoom
        dx = (_XX - centre_yx[1]) / zoom
        iy = ca * dy - sa * dx + n / 2 - 0.5
        ix = sa * dy + ca * dx + n / 2 - 0.5
        if rng.random() < 0.5:  # mirror (handedness)
            src = src[:, ::-1]
        return ndimage.map_coordinates(src, [iy, ix], order=1, mode="constant", cval=0.0)


# ----------------------------------------------------------------------------
# image helpers
# ----------------------------------------------------------------------------
def psf_image(fwhm, yx=(C, C), *, flux=1.0, ellip=0.0, ellip_axis=0, wing=0.0, wing_scale=2.8, oversample=3):
    """Point-source image on the 63x63 grid (Gaussian core + optional Gaussian wing).

    ``ellip``: 1 - b/a along axis ``ellip_axis`` (0 = y elongated, 1 = x).
    ``wing``: flux fraction in a wider Gaussian (Moffat-like extended wings).
    The returned image sums to ``flux`` (minus what falls off the stamp).
    """
    s = fwhm * _F2S
    sy = sx = s
    if ellip > 0:
        if ellip_axis == 0:
            sx = s * np.sqrt(1 - ellip)
            sy = s / np.sqrt(1 - ellip)
        else:
            sy = s * np.sqrt(1 - ellip)
            sx = s / np.sqrt(1 - ellip)
    o = oversample
    offs = (np.arange(o) + 0.5) / o - 0.5
    img = np.zeros((SIZE, SIZE))
    for comp, frac, fy, fx in ((0, 1.0 - wing, sy, sx), (1, wing, sy * wing_scale, sx * wing_scale)):
        if frac <= 0:
            continue
        gy = np.zeros(SIZE)
        gx = np.zeros(SIZE)
        for oy in offs:
            gy += np.exp(-0.5 * ((np.arange(SIZE) + oy - yx[0]) / fy) ** 2)
        for ox in offs:
            gx += np.exp(-0.5 * ((np.arange(SIZE) + ox - yx[1]) / fx) ** 2)
        gy /= o * np.sqrt(2 * np.pi) * fy
        gx /= o * np.sqrt(2 * np.pi) * fx
        img += frac * np.outer(gy, gx)
    return flux * img


def _convolve(img, sigma_y, sigma_x=None, wing=0.0, wing_scale=2.8):
    if sigma_x is None:
        sigma_x = sigma_y
    out = ndimage.gaussian_filter(img, (sigma_y, sigma_x), mode="reflect", truncate=4.0) if max(sigma_y, sigma_x) > 0.05 else img.copy()
    if wing > 0:
        ws_y = np.sqrt(sigma_y**2 * wing_scale**2 + 1.0)
        ws_x = np.sqrt(sigma_x**2 * wing_scale**2 + 1.0)
        out = (1 - wing) * out + wing * ndimage.gaussian_filter(img, (ws_y, ws_x), mode="reflect", truncate=4.0)
    return out


_BASIS_SIGMAS = (0.7, 1.2, 2.0, 3.2)


def subtract_images(sci, ref, *, sigma_k, convolve_ref=True, phot=1.0, fit_mask=None, ridge=0.02,
                    fit=True, width_error=0.0, scale_error=0.0):
    """PSF-match and subtract (Alard-Lupton-like, constant kernel).

    The image to convolve (``ref`` if ``convolve_ref`` else ``sci``) is
    convolved with a kernel ``K = sum_j c_j B_j`` (B_0: analytic matching
    Gaussian of width ``sigma_k``; then a delta and Gaussians of sigma
    0.7, 1.2, 2.0, 3.2 px) plus a constant; the coefficients are fitted by
    least squares on ``fit_mask`` pixels, with a ridge penalty pulling them
    to the analytic solution (``c_0 = phot``, others 0) so that empty fields
    stay well behaved.

    Parameters
    ----------
    sci, ref : ndarray (63, 63), finite
    sigma_k : float
        Sigma (px) of the analytic matching Gaussian.
    convolve_ref : bool
        Convolve the reference (science PSF broader) or the science.
    phot : float
        Prior photometric ratio (other / convolved image).
    fit_mask : bool ndarray or None
    ridge : float
        Ridge strength relative to the mean diagonal of the normal matrix.
    fit : bool
        If False, use the analytic kernel only (no fit).
    width_error, scale_error : float
        Deliberate errors for the 'bad subtraction' bogus class: the analytic
        kernel variance is changed by ``width_error`` px^2 and its
        normalisation by a factor (1 + ``scale_error``); implies ``fit=False``.

    Returns
    -------
    diff : ndarray (63, 63), science - matched reference orientation.
    """
    A = ref if convolve_ref else sci
    B = sci if convolve_ref else ref
    if fit_mask is None:
        fit_mask = _FIT_MASK_CENTRE
    if width_error != 0.0 or scale_error != 0.0:
        fit = False
    var = sigma_k**2 + width_error
    if var >= 0:
        k0 = _convolve(A, np.sqrt(var))
        Bm = B
    else:  # the error asks for a narrower kernel than a delta: blur B instead
        k0 = A
        Bm = _convolve(B, np.sqrt(-var))
    if not fit:
        model = phot * (1 + scale_error) * k0
        bg = np.median((Bm - model)[fit_mask])
        model = model + bg
    else:
        cols = [k0, A] + [_convolve(A, s) for s in _BASIS_SIGMAS]
        M = np.stack([c[fit_mask] for c in cols] + [np.ones(fit_mask.sum())], axis=1)
        b = Bm[fit_mask]
        # centre columns for the ridge (the constant takes the mean)
        MtM = M.T @ M
        Mtb = M.T @ b
        c0 = np.zeros(M.shape[1])
        c0[0] = phot
        c0[-1] = np.median(b - phot * M[:, 0])
        lam = ridge * np.mean(np.diag(MtM)[:-1])
        D = np.ones(M.shape[1])
        D[-1] = 0.0
        try:
            coef = np.linalg.solve(MtM + lam * np.diag(D), Mtb + lam * D * c0)
        except np.linalg.LinAlgError:
            coef = c0
        model = sum(c * col for c, col in zip(coef[:-1], cols)) + coef[-1]
    if convolve_ref:
        return Bm - model
    return model - Bm


def _gaussian_otf(fwhm, shape):
    """Fourier transform of a unit-sum circular Gaussian PSF centred on pixel (0, 0)."""
    s = fwhm * _F2S
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.rfftfreq(shape[1])[None, :]
    return np.exp(-2.0 * (np.pi * s) ** 2 * (ky**2 + kx**2))


def subtract_zogy(sci, ref, *, fwhm_sci, fwhm_ref, phot=1.0, width_error=0.0, pad=24):
    """ZOGY proper difference image (Zackay, Ofek & Gal-Yam 2016), as ZTF's pipeline makes it.

    ``D_hat = (F_r P_r_hat N_hat - F_n P_n_hat R_hat) / sqrt(s_n^2 F_r^2 |P_r_hat|^2 +
    s_r^2 F_n^2 |P_n_hat|^2)`` with circular Gaussian PSF models of FWHM ``fwhm_sci`` and
    ``fwhm_ref`` (what a pipeline believes: an elliptical or winged true PSF leaves
    residuals), ``F_r = 1``, ``F_n = phot``, and sky noises ``s_n``, ``s_r`` measured
    robustly on each image outside the centre. Unlike the Alard-Lupton difference, whose
    PSF is the broader of the two and whose noise is correlated by the convolution, ``D``
    has nearly white noise and a PSF no broader than the science PSF.

    Parameters
    ----------
    sci, ref : ndarray (63, 63), finite
    fwhm_sci, fwhm_ref : float
        PSF FWHM (px) the subtraction assumes.
    phot : float
        Flux scale of the science image relative to the reference.
    width_error : float
        Deliberate error (px^2, added to the variance of the science PSF model) for the
        'bad subtraction' bogus kinds.
    pad : int
        Reflection padding (px) against the wrap-around of the FFT.

    Returns
    -------
    diff : ndarray (63, 63)
        ``D`` scaled to science-image flux units (a source of science flux ``f`` keeps
        flux ``f``), science - reference orientation.
    """
    m_n, s_n = _robust(sci[_FIT_MASK_CENTRE])
    m_r, s_r = _robust(ref[_FIT_MASK_CENTRE])
    n = np.pad(sci - m_n, pad, mode="reflect")
    r = np.pad(ref - m_r, pad, mode="reflect")
    var_n = max((fwhm_sci * _F2S) ** 2 + width_error, 0.01)
    pn = _gaussian_otf(np.sqrt(var_n) / _F2S, n.shape)
    pr = _gaussian_otf(fwhm_ref, n.shape)
    f_n, f_r = float(phot), 1.0
    denom = np.sqrt(s_n**2 * f_r**2 * pr**2 + s_r**2 * f_n**2 * pn**2) + 1e-30
    d_hat = (f_r * pr * np.fft.rfft2(n) - f_n * pn * np.fft.rfft2(r)) / denom
    d = np.fft.irfft2(d_hat, s=n.shape)[pad:pad + SIZE, pad:pad + SIZE]
    f_d = f_n * f_r / np.sqrt(s_n**2 * f_r**2 + s_r**2 * f_n**2)
    return d * (f_n / f_d)


def _dihedral(img, k, flip):
    out = np.rot90(img, k)
    return out[:, ::-1] if flip else out


def _shift_reflect(img, dy, dx):
    if dy == 0 and dx == 0:
        return img
    p = max(abs(dy), abs(dx))
    big = np.pad(img, p, mode="reflect")
    return big[p + dy:p + dy + SIZE, p + dx:p + dx + SIZE]


def _synthetic_mask(rng, min_dist=6.0, edge_dist=None):
    """NaN mask not touching the central ``min_dist`` px (band at a CCD edge or a box)."""
    m = np.zeros((SIZE, SIZE), bool)
    if edge_dist is not None or rng.random() < 0.65:
        d = edge_dist if edge_dist is not None else rng.uniform(min_dist, 30)
        side = rng.integers(4)
        b = int(np.ceil(C + d))
        if side == 0:
            m[b:, :] = True
        elif side == 1:
            m[:SIZE - b, :] = True
        elif side == 2:
            m[:, b:] = True
        else:
            m[:, :SIZE - b] = True
        if rng.random() < 0.3:  # jagged edge (masked bright stars along the edge)
            for _ in range(rng.integers(1, 4)):
                y0, x0 = rng.integers(0, SIZE, 2)
                h, w = rng.integers(3, 9, 2)
                m[y0:y0 + h, x0:x0 + w] |= True
    elif rng.random() < 0.4:  # several boxes, as around masked bright stars in ZTF cutouts
        for _ in range(rng.integers(2, 7)):
            h, w = rng.integers(2, 14, 2)
            y0, x0 = rng.integers(0, SIZE - 2, 2)
            m[y0:y0 + h, x0:x0 + w] = True
        if rng.random() < 0.5:  # plus a band at a CCD edge
            d = rng.uniform(min_dist, 30)
            m[int(np.ceil(C + d)):, :] = True
            m = np.rot90(m, int(rng.integers(4))).copy()
    else:
        h, w = rng.integers(3, 16, 2)
        for _ in range(50):
            y0, x0 = rng.integers(0, SIZE - 3, 2)
            box = np.zeros_like(m)
            box[y0:y0 + h, x0:x0 + w] = True
            if not (box & (_R < min_dist)).any():
                m |= box
                break
    m[_R < min_dist] = False
    return m


def _loguniform(rng, lo, hi):
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


# ----------------------------------------------------------------------------
# one simulation
# ----------------------------------------------------------------------------
def simulate_one(rng, sky, gals, label=None, kind=None, recipe="v3"):
    """Simulate one triplet.

    Parameters
    ----------
    rng : numpy.random.Generator
    sky : SkyBank
    gals : GalaxyBank
    label : int or None
        1 real, 0 bogus, None random (50/50).
    kind : str or None
        Sub-type (see ``REAL_KINDS`` / ``BOGUS_KINDS``); random if None.
    recipe : {"v3", "v5", "v6"}
        Simulation recipe (see the module docstring). ``"v3"`` draws the same random
        numbers as before ``recipe`` existed, so its data sets are unchanged.

    Returns
    -------
    triplet : ndarray (3, 63, 63) float32 (science, reference, difference)
    info : dict (label, kind, snr, alert, isdiffpos, ...)
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    changes = _RECIPE_CHANGES[recipe]
    if label is None:
        label = int(rng.random() < 0.5)
    kinds = REAL_KINDS if label == 1 else BOGUS_KINDS
    if kind is None:
        kind = rng.choice(list(kinds), p=np.array(list(kinds.values())) / sum(kinds.values()))
    info = {"label": int(label), "kind": str(kind), "snr": np.nan}

    # ---- scene from real sky (the alert's own NaN mask follows the sky) ----
    for _ in range(20):
        j = rng.integers(len(sky))
        k_rot, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
        dy = dx = 0
        if rng.random() < 0.6:
            dy, dx = int(rng.integers(-12, 13)), int(rng.integers(-12, 13))
        scene_mask = _shift_reflect(_dihedral(sky.masks[j], k_rot, flip), dy, dx)
        if not (scene_mask & (_R < 6)).any():
            break
    info["alert"] = int(sky.indices[j])
    use_sci = rng.random() < 0.15
    scene = _shift_reflect(_dihedral((sky.sci[j] if use_sci else sky.ref[j]), k_rot, flip), dy, dx).copy()
    bkg = float(np.median(scene))
    sig0 = sky.sci_sigma[j] if use_sci else sky.ref_sigma[j]
    sig_sci = sky.sci_sigma[j] * rng.uniform(0.8, 1.25)
    sig_add = np.sqrt(max(sig_sci**2 - sig0**2, (0.3 * sig_sci) ** 2))
    sat_sci = rng.uniform(25000, 45000) + max(bkg, 0)
    sat_ref = rng.uniform(30000, 60000) + max(bkg, 0)

    # ---- PSFs ----
    # measured on the real alerts (Gaussian fits to stars): reference FWHM 2.1-2.8 px,
    # science / reference FWHM ratio 0.76-1.68 (5-95 %)
    if "real_psf" in changes:  # the widths measured on stars of the real alert cutouts
        F0 = rng.uniform(2.0, 2.6)
        ratio = float(np.clip(np.exp(rng.normal(np.log(1.16), 0.22)), 0.7, 1.9))
        extra = rng.uniform(0.0, 0.3)
    else:
        F0 = rng.uniform(2.0, 2.8)
        ratio = rng.uniform(0.75, 1.75)
        extra = rng.uniform(0.0, 0.5)  # px sigma of extra broadening of the broader-side-not epoch
    if ratio >= 1:
        s_ref = extra
        F_ref = np.hypot(F0, s_ref / _F2S)
        F_sci = ratio * F_ref
        s_sci = np.sqrt(max((F_sci * _F2S) ** 2 - (F0 * _F2S) ** 2, 0.0))
    else:
        s_sci = extra
        F_sci = np.hypot(F0, s_sci / _F2S)
        F_ref = F_sci / ratio
        s_ref = np.sqrt(max((F_ref * _F2S) ** 2 - (F0 * _F2S) ** 2, 0.0))
    bad_sub = kind in ("psf_mismatch_star", "psf_mismatch_galaxy")
    ellip = rng.uniform(0, 0.08)
    wing = rng.uniform(0, 0.06)
    if bad_sub and rng.random() < 0.5:
        if rng.random() < 0.5:
            ellip = rng.uniform(0.15, 0.4)
        else:
            wing = rng.uniform(0.12, 0.3)
    e_axis = int(rng.integers(2))
    sy_sci = s_sci
    sx_sci = s_sci
    if ellip > 0:
        # elongate the science kernel so that the total PSF gets ellipticity ~ellip
        sF = F_sci * _F2S
        big = sF / np.sqrt(1 - ellip)
        small = sF * np.sqrt(1 - ellip)
        s_big = np.sqrt(max(big**2 - (F0 * _F2S) ** 2, 0))
        s_small = np.sqrt(max(small**2 - (F0 * _F2S) ** 2, 0))
        sy_sci, sx_sci = (s_big, s_small) if e_axis == 0 else (s_small, s_big)
    info.update(fwhm_sci=float(F_sci), fwhm_ref=float(F_ref))

    # ---- host galaxy ----
    gal_centre = None
    r_e = 0.0
    want_gal = kind in ("host", "psf_mismatch_galaxy") or (kind == "negative" and rng.random() < 0.4) or (
        kind in ("dipole", "ghost_halo") and rng.random() < 0.35) or (kind in ("cosmic_ray", "hot_pixel", "noise_peak") and rng.random() < 0.25)
    if want_gal and len(gals):
        size = _loguniform(rng, 5, 30)
        r_e = size / 4
        if kind == "host":
            if rng.random() < 0.15:
                off = rng.uniform(0, 0.8)
            else:
                off = rng.uniform(0.3, 3.0) * r_e + rng.uniform(0, 2)
        elif kind in ("psf_mismatch_galaxy", "dipole", "ghost_halo"):
            off = rng.uniform(0, 0.7)
        else:
            off = rng.uniform(0, 2.5) * r_e
        ang = rng.uniform(0, 2 * np.pi)
        gal_centre = (C + off * np.sin(ang) + rng.uniform(-0.5, 0.5), C + off * np.cos(ang) + rng.uniform(-0.5, 0.5))
        galimg = gals.render(rng, gal_centre, size, rng.uniform(0, 2 * np.pi))
        galimg = _convolve(galimg, F0 * _F2S)
        pk = galimg.max()
        if pk > 0:
            amp = _loguniform(rng, 1.5, 150) * sig_sci
            if kind == "psf_mismatch_galaxy":
                amp = _loguniform(rng, 15, 400) * sig_sci
            scene = scene + galimg / pk * amp

    # ---- sources that differ between epochs ----
    cen = (C + rng.uniform(-0.5, 0.5), C + rng.uniform(-0.5, 0.5))
    psf_area = 4 * np.pi * (F_sci * _F2S) ** 2  # effective area of the science PSF
    add_sci = np.zeros((SIZE, SIZE))  # in scene (F0 PSF) units, convolved later
    add_ref = np.zeros((SIZE, SIZE))
    sig_diff = np.sqrt(sig_sci**2 + (0.5 * sig0) ** 2)
    isdiffpos = "t"
    if label == 1:
        # half log-uniform 3-1000, half log-uniform 3-80 (the faint end, where most alerts are)
        snr = _loguniform(rng, 3, 1000) if rng.random() < 0.5 else _loguniform(rng, 3, 80)
        flux = snr * sig_diff * np.sqrt(psf_area)
        info["snr"] = float(snr)
        if kind == "negative":
            add_ref += psf_image(F0, cen, flux=flux)
            isdiffpos = "f"
        elif kind == "variable":
            info["base_ratio"] = _loguniform(rng, 0.1, 20)  # constant flux / flux change
            base = flux * info["base_ratio"]
            add_ref += psf_image(F0, cen, flux=base)
            if rng.random() < 0.5:  # fading variable: ref brighter
                add_sci += psf_image(F0, cen, flux=base)
                add_ref += psf_image(F0, cen, flux=flux)
                isdiffpos = "f"
            else:
                add_sci += psf_image(F0, cen, flux=base + flux)
        else:
            add_sci += psf_image(F0, cen, flux=flux)
    else:
        if kind in ("psf_mismatch_star", "dipole", "ghost_halo", "bleed_saturation") and not (
                kind != "psf_mismatch_star" and gal_centre is not None):
            # a constant star at the centre
            if kind == "bleed_saturation":
                peak_target = rng.uniform(1.1, 6.0) * sat_sci
                flux = peak_target * 2 * np.pi * (F_sci * _F2S) ** 2
                off_y = rng.uniform(-12, 12)
                scen = (C + off_y, C + rng.uniform(-0.5, 0.5))
            else:
                flux = _loguniform(rng, 30, 5000) * sig_diff * np.sqrt(psf_area)
                scen = cen
            star = psf_image(F0, scen, flux=flux)
            scene = scene + star
            info["star_flux"] = float(flux)

    # ---- two epochs ----
    reg = rng.normal(0, 0.06, 2)
    if kind == "dipole" and rng.random() < 0.6:  # global registration error
        amp = rng.uniform(0.25, 1.5)
        ang = rng.uniform(0, 2 * np.pi)
        reg = np.array([amp * np.sin(ang), amp * np.cos(ang)])
    sci_scene = ndimage.shift(scene, reg, order=3, mode="reflect") if np.any(np.abs(reg) > 1e-3) else scene.copy()
    ref_scene = scene.copy()
    if kind == "dipole" and np.all(np.abs(reg) < 0.25):  # local offset (moving / DCR / astrometric error)
        amp = rng.uniform(0.4, 1.8)
        ang = rng.uniform(0, 2 * np.pi)
        f = _loguniform(rng, 20, 1500) * sig_diff * np.sqrt(psf_area)
        ref_scene += psf_image(F0, cen, flux=f)
        sci_scene += psf_image(F0, (cen[0] + amp * np.sin(ang), cen[1] + amp * np.cos(ang)), flux=f * rng.uniform(0.85, 1.15))
    sci_scene += add_sci
    ref_scene += add_ref
    phot = rng.uniform(0.92, 1.08)
    sci_true = _convolve(sci_scene, sy_sci, sx_sci, wing=wing)
    sci_true = bkg + phot * (sci_true - bkg) + rng.normal(0, 0.5) * sig_sci
    ref_true = _convolve(ref_scene, s_ref)
    # noise
    pois_sci = np.clip(sci_true - bkg, 0, None) * rng.uniform(0.5, 2.0) * 1.3
    sci = sci_true + rng.normal(size=(SIZE, SIZE)) * np.sqrt(sig_add**2 + pois_sci)
    ref = ref_true + rng.normal(size=(SIZE, SIZE)) * (sig0 * rng.uniform(0.0, 0.4))

    # ---- pixel-level artefacts (science, or reference -> negative candidate) ----
    art_in_ref = False
    def _cr(img, yx, amp_sig, sig):
        y, x = yx
        shape = rng.random()
        pix = []
        if shape < 0.35:
            pix = [(y, x)]
        elif shape < 0.65:  # small blob
            for _ in range(rng.integers(2, 6)):
                pix.append((y + rng.integers(-1, 2), x + rng.integers(-1, 2)))
        else:  # track
            L = rng.integers(3, 16)
            a = rng.uniform(0, np.pi)
            t = np.arange(L) - rng.integers(0, L)
            pix = [(int(round(y + ti * np.sin(a))), int(round(x + ti * np.cos(a)))) for ti in t]
        for (py, px) in pix:
            if 0 <= py < SIZE and 0 <= px < SIZE:
                img[py, px] += amp_sig * sig * rng.uniform(0.3, 1.0)

    if kind == "cosmic_ray":
        art_in_ref = rng.random() < 0.25
        img = ref if art_in_ref else sci
        _cr(img, (C + int(rng.integers(-1, 2)), C + int(rng.integers(-1, 2))), _loguniform(rng, 8, 400), sig_sci)
    elif kind == "hot_pixel":
        art_in_ref = rng.random() < 0.2
        img = ref if art_in_ref else sci
        y, x = C + int(rng.integers(-1, 2)), C + int(rng.integers(-1, 2))
        a = _loguniform(rng, 10, 1500) * sig_sci
        img[y, x] += a
        if rng.random() < 0.3:  # charge spill to a neighbour
            img[y + int(rng.integers(-1, 2)), x + int(rng.integers(-1, 2))] += a * rng.uniform(0.1, 0.5)
    elif kind == "bad_column":
        art_in_ref = rng.random() < 0.15
        img = ref if art_in_ref else sci
        col = C + int(rng.integers(-1, 2))
        lo = int(rng.integers(0, C)) if rng.random() < 0.5 else 0
        hi = int(rng.integers(C + 1, SIZE)) if rng.random() < 0.5 else SIZE
        a = _loguniform(rng, 2, 60) * sig_sci
        prof = a * (1 + 0.3 * rng.normal(size=hi - lo))
        width = 1 if rng.random() < 0.7 else 2
        if rng.random() < 0.35:  # bad row
            img[col:col + width, lo:hi] += prof[None, :]
        else:
            img[lo:hi, col:col + width] += prof[:, None]

    elif kind == "ghost_halo":
        # optical ghost / scattered-light halo: a broad blob or ring (much wider than the PSF)
        # in the science image only, at the centre (with or without a star there)
        rad = rng.uniform(2.5, 9.0) if rng.random() < 0.5 else 0.0
        wid = rng.uniform(1.2, 2.5) * F_sci * _F2S if rad > 0 else rng.uniform(3.0, 5.5) * F_sci * _F2S
        gy, gx = cen[0] + rng.normal(0, 1.0), cen[1] + rng.normal(0, 1.0)
        rr = np.hypot(_YY - gy, _XX - gx)
        prof = np.exp(-0.5 * ((rr - rad) / wid) ** 2)
        s_n = _loguniform(rng, 5, 80)  # matched-filter S/N of the structure
        prof *= s_n * sig_sci / np.sqrt((prof ** 2).sum())
        sci += prof

    # ---- saturation and bleed trails ----
    if kind == "bleed_saturation":
        for img, sat, bleed in ((sci, sat_sci, True), (ref, sat_ref, rng.random() < 0.3)):
            over = img > sat
            if over.any() and bleed:
                excess = (img[over] - sat).sum()
                cols = np.unique(np.nonzero(over)[1])
                for cx in cols:
                    rows = np.nonzero(over[:, cx])[0]
                    L = int(np.clip(excess / sat / max(len(cols), 1) * rng.uniform(0.5, 2.0), 1, 40))
                    y0, y1 = max(rows.min() - L, 0), min(rows.max() + L + 1, SIZE)
                    img[y0:y1, cx] = sat * rng.uniform(0.97, 1.0)
    np.minimum(sci, sat_sci, out=sci)
    np.minimum(ref, sat_ref, out=ref)

    # ---- subtraction ----
    convolve_ref = F_sci >= F_ref
    sigma_k = np.sqrt(abs((F_sci * _F2S) ** 2 - (F_ref * _F2S) ** 2))
    fit_mask = _FIT_MASK_CENTRE & (sci < 0.9 * sat_sci) & (ref < 0.9 * sat_ref)
    if fit_mask.sum() < 200:
        fit_mask = _FIT_MASK_CENTRE
    sub_kw = {}
    if bad_sub or (kind == "bleed_saturation" and rng.random() < 0.3):
        if ellip < 0.15 and wing < 0.12:  # pure kernel width / scale error
            sub_kw = dict(width_error=float(rng.choice([-1, 1]) * rng.uniform(0.15, 0.6) * (F_sci * _F2S) ** 2))
        else:
            sub_kw = dict(fit=rng.random() < 0.5, ridge=10.0)
    zogy = "zogy" in changes and rng.random() < ZOGY_FRACTION
    if zogy:  # the pipeline's PSF models are circular Gaussians of the nominal widths
        diff = subtract_zogy(sci, ref, fwhm_sci=F_sci, fwhm_ref=F_ref, phot=phot,
                             width_error=sub_kw.get("width_error", 0.0))
    else:
        phot_prior = phot if convolve_ref else 1.0 / phot
        diff = subtract_images(sci, ref, sigma_k=sigma_k, convolve_ref=convolve_ref,
                               phot=phot_prior, fit_mask=fit_mask, **sub_kw)
    info["subtraction"] = "zogy" if zogy else "al"

    # ---- re-centre on a noise peak (bogus 'noise_peak') ----
    if kind == "noise_peak":
        mf = ndimage.gaussian_filter(diff, F_sci * _F2S)
        box = np.abs(_YY - C) <= 12
        box &= np.abs(_XX - C) <= 12
        sgn = 1 if rng.random() < 0.7 else -1
        idx = np.argmax(np.where(box, sgn * mf, -np.inf))
        py, px = np.unravel_index(idx, mf.shape)
        dy, dx = int(py - C), int(px - C)
        sci, ref, diff, pois_sci = (_shift_reflect(a, dy, dx) for a in (sci, ref, diff, pois_sci))
        if sgn < 0:
            isdiffpos = "f"

    # ---- candidate polarity for bogus: ZTF triggers on the positive or negative peak ----
    if label == 0 and kind not in ("noise_peak",):
        if art_in_ref:
            isdiffpos = "f"
        elif kind in ("psf_mismatch_star", "psf_mismatch_galaxy", "dipole", "ghost_halo", "bleed_saturation", "edge_mask"):
            core = diff[C - 2:C + 3, C - 2:C + 3]
            if -core.min() > core.max():
                isdiffpos = "f"
    if isdiffpos == "f":
        diff = -diff
    info["isdiffpos"] = isdiffpos

    # ---- masks (NaN, shared by the three stamps) ----
    mask = scene_mask.copy() if scene_mask.any() else None
    if kind == "edge_mask":
        d = rng.uniform(1.0, 6.0)
        mask = _synthetic_mask(rng, min_dist=min(d, 2.0), edge_dist=d) | scene_mask
        # edge artefact along the mask boundary: glow / interpolation residual
        edge = ndimage.binary_dilation(mask, iterations=int(rng.integers(1, 4))) & ~mask
        dist = ndimage.distance_transform_edt(~mask)
        a = _loguniform(rng, 4, 80) * sig_sci
        glow = a * np.exp(-dist / rng.uniform(0.7, 2.5)) * (1 + 0.3 * rng.normal(size=(SIZE, SIZE)))
        glow[mask] = 0
        if rng.random() < 0.5:
            glow *= edge | (dist < 3)
        # in the science image (or in the reference for a negative candidate)
        if isdiffpos == "t":
            sci = sci + glow
        else:
            ref = ref + glow
        diff = diff + glow
    elif "near_masks" in changes and label == 1 and rng.random() < NEAR_MASK_REAL:
        # a mask edge as close to a real candidate as the 'edge_mask' bogus get, no glow
        mask = _synthetic_mask(rng, min_dist=2.0, edge_dist=rng.uniform(2.0, 6.0)) | scene_mask
    elif rng.random() < (0.14 if label == 1 else 0.05):  # balances the bogus 'edge_mask' kind
        extra_mask = None
        if sky.real_masks and rng.random() < 0.5:
            m = sky.real_masks[rng.integers(len(sky.real_masks))]
            m = _dihedral(m, int(rng.integers(4)), rng.random() < 0.5).copy()
            if not (m & (_R < 6)).any():
                extra_mask = m
        if extra_mask is None:
            extra_mask = _synthetic_mask(rng, min_dist=6.0)
        mask = extra_mask if mask is None else (mask | extra_mask)

    # ---- off-centre distractors (both classes) ----
    for _ in range(rng.poisson(0.4)):
        y, x = rng.integers(0, SIZE, 2)
        if _R[y, x] < 8:
            continue
        a = _loguniform(rng, 5, 300)
        tgt_ref = rng.random() < 0.2
        img = ref if tgt_ref else sci
        before = img.copy()
        if rng.random() < 0.6:
            _cr(img, (int(y), int(x)), a, sig_sci)
        else:
            img[y, x] += a * sig_sci
        delta = img - before
        # science artefact: +delta in (sci - ref), reference artefact: -delta; flipped if isdiffpos 'f'
        diff = diff + (delta if (tgt_ref == (isdiffpos == "f")) else -delta)

    out = np.stack([sci, ref, diff]).astype(np.float32)
    if mask is not None:
        out[:, mask] = np.nan
    info["has_host"] = gal_centre is not None
    # what a survey pipeline would measure: the candidate's detection significance in the
    # difference image (its PSF is the broader of the two epochs' after PSF matching)
    # (ZOGY: about the science PSF; Alard-Lupton: the broader of the two)
    info["snr_det"] = detection_snr(out[2], F_sci if zogy else max(F_sci, F_ref), pois_sci)
    return out, info


def detection_snr(diff, fwhm, poisson_var=None, *, radius=1.5, sky_radius=8.0):
    """Detection significance of the candidate at the centre of a difference stamp.

    The PSF-fit flux of a Gaussian PSF of FWHM ``fwhm`` at every pixel (a matched
    filter), divided by its noise: the robust scatter of the same filter over the
    stamp outside ``sky_radius`` (sky noise, correlations from PSF matching included)
    plus the source Poisson variance ``poisson_var`` under the PSF, if given. The
    largest value within ``radius`` px of the centre is returned, i.e. what a
    pipeline detecting on the difference image at this position would measure.
    Non-finite pixels count as zero. Consumes no random numbers.
    """
    s = fwhm * _F2S
    d = np.where(np.isfinite(diff), diff, 0.0).astype(np.float64)
    area = 4.0 * np.pi * s * s  # 1 / sum(P^2) of a unit-sum Gaussian PSF
    flux = ndimage.gaussian_filter(d, s, mode="constant", truncate=4.0) * area
    sky = (_R > sky_radius) & np.isfinite(diff)
    med = np.median(flux[sky])
    sigma_sky = 1.4826 * np.median(np.abs(flux[sky] - med))
    var = np.full(flux.shape, sigma_sky ** 2)
    if poisson_var is not None:
        var = var + ndimage.gaussian_filter(np.asarray(poisson_var, np.float64), s / np.sqrt(2.0),
                                            mode="constant") * area
    snr = flux / np.sqrt(np.maximum(var, 1e-30))
    return float(snr[_R <= radius].max())


def simulate_batch(n, sky, gals, seed, label=None, kind=None, recipe="v3"):
    """Simulate ``n`` triplets (half real, half bogus unless ``label`` given).

    Returns
    -------
    X : ndarray (n, 3, 63, 63) float32
    info : list of dict
    """
    rng = np.random.default_rng(seed)
    X = np.empty((n, 3, SIZE, SIZE), np.float32)
    infos = []
    for i in range(n):
        lab = label if label is not None else int(i % 2 == 0)
        X[i], inf = simulate_one(rng, sky, gals, label=lab, kind=kind, recipe=recipe)
        infos.append(inf)
    return X, infos
