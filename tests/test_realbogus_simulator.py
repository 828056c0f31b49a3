"""Physics of the real-bogus training simulator (``_simulate_transients``), beyond
``test_realbogus_model.py``: PSFs keep their flux, centre and axes; both subtractions
leave noise only where nothing changed and keep a source's flux and sign; detection_snr
is N(0, 1) on noise that includes the source's Poisson term; the simulated triplets put
a positive candidate at the centre with about the requested S/N, and record what the
images show.

Each test guards what a user of the training sets would lose if the simulator drifted:
these sets (and the shipped model) depend on every one of these conventions.
"""
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
R = np.hypot(*(np.mgrid[:63, :63] - 31.0))
YY, XX = np.mgrid[:63, :63].astype(float)


def _sim():
    """The training simulator (numpy/scipy only), from the training/ subproject."""
    try:
        from astromorph_training import _simulate_transients as sim
    except ImportError:
        sys.path.insert(0, str(REPO / "training"))
        from astromorph_training import _simulate_transients as sim
    return sim


def _moments(img):
    """Flux, centroid (y, x) and second central moments (y, x) of an image."""
    f = img.sum()
    cy, cx = (img * YY).sum() / f, (img * XX).sum() / f
    return f, cy, cx, (img * (YY - cy) ** 2).sum() / f, (img * (XX - cx) ** 2).sum() / f


def _stars(rng, fwhm, n=10, sky=150.0):
    sim = _sim()
    img = np.full((63, 63), sky)
    for _ in range(n):
        yx = rng.uniform(5, 58, 2)
        if np.hypot(*(yx - 31)) > 9:
            img += sim.psf_image(fwhm, tuple(yx), flux=rng.uniform(3e3, 3e4))
    return img


def _sky_bank(seed=0, n=4, sig_sci=12.0, sig_ref=6.0, stars=False):
    sim = _sim()
    rng = np.random.default_rng(seed)
    X = np.empty((n, 3, 63, 63), np.float32)
    for i in range(n):
        base = _stars(rng, 2.2) if stars else np.full((63, 63), 150.0)
        X[i] = [base + rng.normal(0, sig_sci, base.shape), base + rng.normal(0, sig_ref, base.shape),
                rng.normal(0, sig_sci, base.shape)]
    return sim.SkyBank(X, np.arange(n))


# ---------------------------------------------------------------- PSFs and convolution
def test_psf_image_keeps_flux_centre_and_elongation_axis():
    """psf_image: flux ``flux`` at ``yx = (y, x)``, sigma = FWHM / 2.3548, ``ellip`` 1 - b/a
    along ``ellip_axis`` (0 = y elongated), ``wing`` moves flux out without losing it."""
    sim = _sim()
    f, cy, cx, vy, vx = _moments(sim.psf_image(2.4, (29.3, 33.6), flux=500.0))
    assert f == pytest.approx(500.0, rel=1e-4)
    assert (cy, cx) == (pytest.approx(29.3, abs=1e-3), pytest.approx(33.6, abs=1e-3))
    s2 = (2.4 / 2.3548) ** 2 + 1 / 12  # the pixel's own variance
    assert vy == pytest.approx(s2, rel=0.01) and vx == pytest.approx(s2, rel=0.01)
    for axis in (0, 1):
        _, _, _, vy, vx = _moments(sim.psf_image(2.4, ellip=0.36, ellip_axis=axis))
        big, small = ((vy, vx) if axis == 0 else (vx, vy))
        # b/a = 0.64: the variances are s^2 / 0.8 and s^2 * 0.8 around a common s
        assert np.sqrt((small - 1 / 12) / (big - 1 / 12)) == pytest.approx(0.64, rel=0.01)
    winged = sim.psf_image(2.4, flux=500.0, wing=0.3)
    f, *_ = _moments(winged)
    assert f == pytest.approx(500.0, rel=1e-3)
    assert winged.max() < 0.75 * sim.psf_image(2.4, flux=500.0).max()


def test_convolve_adds_the_kernel_variance_and_keeps_flux():
    """_convolve: a Gaussian of sigma s adds s^2 to a source's variance and keeps its flux;
    its wing keeps the flux too. Kernels below ~0.5 px are convolved as well, though a
    sampled Gaussian that narrow adds less than s^2 (0.145 instead of 0.2025 px^2 at 0.45 px:
    scipy samples it on whole pixels)."""
    sim = _sim()
    psf = sim.psf_image(2.2, flux=1000.0)
    _, _, _, v0, _ = _moments(psf)
    for s in (0.6, 1.0, 1.7):
        f, _, _, vy, vx = _moments(sim._convolve(psf, s))
        assert f == pytest.approx(1000.0, rel=1e-6)
        assert vy - v0 == pytest.approx(s * s, rel=0.05) and vx - v0 == pytest.approx(s * s, rel=0.05)
    _, _, _, vy, vx = _moments(sim._convolve(psf, 0.45))
    assert 0.6 * 0.45 ** 2 < vy - v0 < 0.45 ** 2 and 0.6 * 0.45 ** 2 < vx - v0 < 0.45 ** 2
    f, *_ = _moments(sim._convolve(psf, 0.8, wing=0.3))
    assert f == pytest.approx(1000.0, rel=1e-4)


# ---------------------------------------------------------------- Alard-Lupton subtraction
def test_alard_lupton_difference_is_science_minus_reference_with_any_background():
    """Both orientations give science - reference: a source in the science only is positive
    in the difference with its flux, and a background step between epochs is fitted away
    (with the kernel fit and with the analytic kernel alone)."""
    sim = _sim()
    rng = np.random.default_rng(3)
    fs, fr, flux = 2.2, 2.8, 5000.0
    scene = _stars(rng, 1.8)
    ks = np.sqrt((fs / 2.3548) ** 2 - (1.8 / 2.3548) ** 2)
    kr = np.sqrt((fr / 2.3548) ** 2 - (1.8 / 2.3548) ** 2)
    sci = sim._convolve(scene + sim.psf_image(1.8, flux=flux), ks) + 40.0 + rng.normal(0, 3, scene.shape)
    ref = sim._convolve(scene, kr) + rng.normal(0, 1, scene.shape)
    sk = np.sqrt(kr ** 2 - ks ** 2)
    for fit in (True, False):
        diff = sim.subtract_images(sci, ref, sigma_k=sk, convolve_ref=False, fit=fit)
        assert abs(np.median(diff[R > 10])) < 1.0  # the +40 background step is gone
        got = diff[R < 8].sum() - np.median(diff[R > 10]) * (R < 8).sum()
        assert got == pytest.approx(flux, rel=0.05)


def test_alard_lupton_deliberate_errors_leave_their_documented_residual():
    """width_error > 0 widens the matching kernel (a positive core, the matched image too
    broad), < 0 narrows it (a negative core, through blurring the other image); scale_error
    scales the flux; the errors switch the kernel fit off (else it would repair them)."""
    sim = _sim()
    star = 100 + sim.psf_image(2.4, flux=20000.0)
    core = R < 1.5

    def residual(**kw):
        return sim.subtract_images(star, star, sigma_k=0.0, convolve_ref=True, **kw)

    assert np.abs(residual()).max() < 1e-6 * 20000
    wide, narrow = residual(width_error=0.8), residual(width_error=-0.8)
    assert wide[core].mean() > 50 and narrow[core].mean() < -50
    scaled = residual(scale_error=0.1)  # matched reference 10 % too bright
    assert (scaled - np.median(scaled))[R < 10].sum() == pytest.approx(-2000, rel=0.02)


# ---------------------------------------------------------------- ZOGY
def test_zogy_same_scene_under_two_psfs_subtracts_to_noise_and_keeps_science_flux():
    """ZOGY with the right PSF models and photometric scale: one scene seen by two PSFs
    (science 1.3 times brighter) leaves noise only, a new source keeps its science flux
    with unequal noises, and width_error > 0 (a too-broad science PSF model) leaves a
    positive core on a star that did not change."""
    sim = _sim()
    rng = np.random.default_rng(5)
    fs, fr, phot, flux = 2.2, 2.9, 1.3, 8000.0
    f2s = 1 / 2.3548
    scene = _stars(rng, 1.5) - 150.0
    ks = np.sqrt((fs * f2s) ** 2 - (1.5 * f2s) ** 2)
    kr = np.sqrt((fr * f2s) ** 2 - (1.5 * f2s) ** 2)
    sig_n, sig_r = 4.0, 1.5
    ref = 100 + sim._convolve(scene, kr) + rng.normal(0, sig_r, scene.shape)
    sci_sky = 120 + phot * sim._convolve(scene, ks) + rng.normal(0, sig_n, scene.shape)
    diff = sim.subtract_zogy(sci_sky, ref, fwhm_sci=fs, fwhm_ref=fr, phot=phot)
    noise = 1.4826 * np.median(np.abs(diff - np.median(diff)))
    inner = diff[6:-6, 6:-6]
    assert np.std(inner) < 1.3 * noise  # no residuals at the stars
    assert np.abs(sim.ndimage.uniform_filter(inner, 5)).max() < 5 * noise / 5 * 1.5
    sci = sci_sky + phot * sim.psf_image(fs, flux=flux)
    d = sim.subtract_zogy(sci, ref, fwhm_sci=fs, fwhm_ref=fr, phot=phot)
    got = d[R < 8].sum() - np.median(d[R > 12]) * (R < 8).sum()
    assert got == pytest.approx(phot * flux, rel=0.05)
    star = 100 + sim.psf_image(2.4, flux=20000)
    wide = sim.subtract_zogy(star, star, fwhm_sci=2.4, fwhm_ref=2.4, width_error=0.8)
    narrow = sim.subtract_zogy(star, star, fwhm_sci=2.4, fwhm_ref=2.4, width_error=-0.8)
    assert wide[R < 1.5].mean() > 0 > narrow[R < 1.5].mean()


# ---------------------------------------------------------------- detection_snr
def test_detection_snr_is_unit_normal_with_the_source_poisson_noise():
    """Noise made of sky plus a source's Poisson term (variance 8 times the sky's at the
    peak) is N(0, 1) at the centre once ``poisson_var`` is given: the Poisson term under the
    PSF is neither under- nor over-weighted."""
    sim = _sim()
    rng = np.random.default_rng(6)
    fwhm, sig = 2.4, 5.0
    pois = 8 * sig ** 2 * sim.psf_image(fwhm) / sim.psf_image(fwhm).max()
    z = [sim.detection_snr(rng.normal(0, 1, (63, 63)) * np.sqrt(sig ** 2 + pois), fwhm,
                           poisson_var=pois, radius=0.0) for _ in range(300)]
    assert abs(np.mean(z)) < 0.2 and np.std(z) == pytest.approx(1.0, rel=0.12)


def test_detection_snr_ignores_masked_pixels_in_its_sky_noise():
    """A stamp 40 % masked (NaN) gives the S/N of the same stamp unmasked: the masked
    pixels, counted as zero in the filter, are not taken as sky."""
    sim = _sim()
    rng = np.random.default_rng(7)
    fwhm, sig = 2.4, 5.0
    d = sim.psf_image(fwhm, flux=15 * sig * np.sqrt(4 * np.pi) * fwhm / 2.3548)
    ratios = []
    for _ in range(20):
        img = d + rng.normal(0, sig, d.shape)
        masked = img.copy()
        masked[:25] = np.nan
        ratios.append(sim.detection_snr(masked, fwhm) / sim.detection_snr(img, fwhm))
    assert np.median(ratios) == pytest.approx(1.0, abs=0.12)
