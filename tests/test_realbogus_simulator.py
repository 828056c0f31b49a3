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
        X[i] = [base + rng.normal(0, sig_sci, base.shape),
                base + rng.normal(0, sig_ref, base.shape), rng.normal(0, sig_sci, base.shape)]
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
        assert vy - v0 == pytest.approx(s * s, rel=0.05)
        assert vx - v0 == pytest.approx(s * s, rel=0.05)
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
    sci = (sim._convolve(scene + sim.psf_image(1.8, flux=flux), ks) + 40.0
           + rng.normal(0, 3, scene.shape))
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


# ---------------------------------------------------------------- simulated triplets
@pytest.mark.parametrize("kind", ["hostless", "negative", "variable"])
def test_simulated_reals_are_positive_at_the_centre_with_about_the_requested_snr(kind):
    """Every real kind is a positive point source at the centre of the stored difference
    (faded ones flipped, ``isdiffpos = 'f'``, the source brighter in the reference), with
    the PSF-photometry S/N that was asked for: median measured / requested 1.0-1.45 (about
    1.15 here: the scene's own noise, common to both epochs, partly cancels)."""
    sim = _sim()
    sky, gals = _sky_bank(), sim.GalaxyBank([])
    rng = np.random.default_rng(11)
    ratios = []
    for _ in range(30):
        t, info = sim.simulate_one(rng, sky, gals, label=1, kind=kind)
        sci, ref, d = (np.nan_to_num(a.astype(float)) for a in t)
        assert d[R < 2.5].sum() > 0
        if info["snr"] > 25 and kind != "variable":  # the epoch with the new flux
            # (a variable's constant part, scaled by the photometric ratio, can outweigh it)
            dif = sci - ref
            change = dif[R < 10].sum() - np.median(dif[R > 14]) * (R < 10).sum()
            assert (change > 0) == (info["isdiffpos"] == "t")
        fwhm = info["fwhm_sci"] if info["subtraction"] == "zogy" else max(info["fwhm_sci"],
                                                                           info["fwhm_ref"])
        ratios.append(sim.detection_snr(t[2], fwhm) / info["snr"])
    assert 1.0 < np.median(ratios) < 1.45
    if kind == "negative":
        assert info["isdiffpos"] == "f"


@pytest.mark.parametrize("kind", ["cosmic_ray", "hot_pixel", "noise_peak", "psf_mismatch_star",
                                  "dipole"])
def test_simulated_bogus_candidates_are_the_positive_peak_at_the_centre(kind):
    """A bogus candidate is what the pipeline triggered on, stored positive: an artefact in
    the reference or a negative noise peak or residual core is flipped (``isdiffpos``
    'f'): the central 5x5 px peak more positive than negative (a noise peak: the matched
    filter positive at the centre)."""
    sim = _sim()
    sky, gals = _sky_bank(stars=True), sim.GalaxyBank([])
    rng = np.random.default_rng(12)
    flips = 0
    for _ in range(25):
        t, info = sim.simulate_one(rng, sky, gals, label=0, kind=kind)
        d = np.nan_to_num(t[2].astype(float))
        if kind == "noise_peak":
            assert sim.ndimage.gaussian_filter(d, info["fwhm_sci"] / 2.3548)[31, 31] > 0
        else:
            core = d[29:34, 29:34]
            assert core.max() >= -core.min()
        flips += info["isdiffpos"] == "f"
    assert flips >= 1


def test_off_centre_artefacts_keep_the_orientation_of_the_difference():
    """Cosmic rays and hot pixels away from the candidate are in the difference with the
    sign of science - reference (reference - science for ``isdiffpos = 'f'``)."""
    sim = _sim()
    sky, gals = _sky_bank(), sim.GalaxyBank([])
    rng = np.random.default_rng(13)
    seen = 0
    for _ in range(60):
        t, info = sim.simulate_one(rng, sky, gals, label=1, kind="hostless")
        sci, ref, d = (a.astype(float) for a in t)
        delta = (sci - ref) * (1 if info["isdiffpos"] == "t" else -1)
        spikes = (R > 9) & (np.abs(sci - ref) > 150)  # 12-count noise: only artefacts
        seen += spikes.sum()
        assert (np.sign(d[spikes]) == np.sign(delta[spikes])).all()
    assert seen >= 5


def test_recorded_psf_widths_are_the_widths_in_the_images():
    """``fwhm_sci`` and ``fwhm_ref`` are the FWHM of the science and reference images' PSF
    (within 6 %: small broadening kernels are sampled on whole pixels), the widths the
    subtraction and ``snr_det`` use: a bright hostless real in the science image and a
    bright faded one in the reference."""
    sim = _sim()
    sky, gals = _sky_bank(sig_sci=2.0, sig_ref=1.0), sim.GalaxyBank([])
    rng = np.random.default_rng(14)
    n = 0
    for kind, stamp, key in (("hostless", 0, "fwhm_sci"), ("negative", 1, "fwhm_ref")):
        for _ in range(30):
            t, info = sim.simulate_one(rng, sky, gals, label=1, kind=kind)
            img = t[stamp].astype(float)
            if info["snr"] < 200 or not np.isfinite(img).all():
                continue
            img = (img - np.median(img[R > 12])) * (R < 9)
            _, _, _, vy, vx = _moments(img)
            fwhm = 2.3548 * np.sqrt((vy + vx) / 2 - 1 / 12)
            assert fwhm == pytest.approx(info[key], rel=0.06)
            n += 1
    assert n >= 6


def test_snr_det_uses_the_difference_psf_and_the_source_poisson_variance(monkeypatch):
    """``snr_det`` is measured with the difference's PSF (the science PSF after ZOGY, the
    broader of the two after Alard-Lupton) and the science source's Poisson variance."""
    sim = _sim()
    sky, gals = _sky_bank(), sim.GalaxyBank([])
    calls = []
    real = sim.detection_snr

    def spy(diff, fwhm, poisson_var=None, **kw):
        calls.append((fwhm, poisson_var))
        return real(diff, fwhm, poisson_var, **kw)

    monkeypatch.setattr(sim, "detection_snr", spy)
    _, infos = sim.simulate_batch(40, sky, gals, seed=15, label=1, kind="hostless", recipe="v5")
    kinds = set()
    for (fwhm, pois), info in zip(calls, infos):
        want = info["fwhm_sci"] if info["subtraction"] == "zogy" else max(info["fwhm_sci"],
                                                                          info["fwhm_ref"])
        assert fwhm == pytest.approx(want)
        assert pois is not None and pois[R < 1.5].mean() > pois[R > 12].mean()
        kinds.add((info["subtraction"], info["fwhm_sci"] > info["fwhm_ref"]))
    assert {("al", False), ("al", True), ("zogy", False)} <= kinds


def test_synthetic_masks_and_v5_near_masks_keep_off_the_candidate():
    """Synthetic masks never come within ``min_dist`` of the centre, and recipe v5's near-
    centre masks are for reals only: a bogus triplet other than 'edge_mask' has none
    within 6 px (else a close mask would again say 'bogus' or 'real')."""
    sim = _sim()
    rng = np.random.default_rng(16)
    for d in (2.0, 6.0):
        for _ in range(300):
            assert not (sim._synthetic_mask(rng, min_dist=d) & (R < d)).any()
    sky, gals = _sky_bank(), sim.GalaxyBank([])
    X, infos = sim.simulate_batch(150, sky, gals, seed=16, label=0, recipe="v5")
    for t, info in zip(X, infos):
        if info["kind"] != "edge_mask":
            assert np.isfinite(t[:, R < 6]).all(), info["kind"]


def test_saturated_stars_are_flat_topped_in_both_epochs():
    """'bleed_saturation' bogus: no pixel exceeds the saturation level, which the
    brightest pixels share (a flat top, a bleed column)."""
    sim = _sim()
    sky, gals = _sky_bank(), sim.GalaxyBank([])
    rng = np.random.default_rng(17)
    for _ in range(12):
        t, _ = sim.simulate_one(rng, sky, gals, label=0, kind="bleed_saturation")
        sci = t[0][np.isfinite(t[0])]
        assert (sci >= sci.max() - 1e-3 * sci.max()).sum() >= 3


def test_sky_bank_noise_masks_and_alert_split():
    """SkyBank: the noise of each stamp is its robust sigma (not the MAD), a pixel invalid in
    any of the three stamps is masked; split_alerts: disjoint splits covering every alert,
    never one object in two splits."""
    sim = _sim()
    rng = np.random.default_rng(18)
    X = np.stack([np.stack([150 + rng.normal(0, 12, (63, 63)), 150 + rng.normal(0, 3, (63, 63)),
                            rng.normal(0, 12, (63, 63))]) for _ in range(2)]).astype(np.float32)
    X[0, 0, :4] = np.nan
    X[0, 2, -3:] = -3.4e38
    sky = sim.SkyBank(X, [0, 1])
    assert sky.sci_sigma == pytest.approx([12, 12], rel=0.06)
    assert sky.ref_sigma == pytest.approx([3, 3], rel=0.06)
    assert sky.masks[0][:4].all() and sky.masks[0][-3:].all() and not sky.masks[0][4:-3].any()
    meta = [{"objectId": f"ZTF{i // 3}"} for i in range(90)]
    parts = sim.split_alerts(meta, seed=1)
    idx = np.concatenate(list(parts.values()))
    assert sorted(idx) == list(range(90))
    objs = [{meta[i]["objectId"] for i in p} for p in parts.values()]
    assert not (objs[0] & objs[1] or objs[0] & objs[2] or objs[1] & objs[2])
