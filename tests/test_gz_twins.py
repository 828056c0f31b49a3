"""``training/gz_twins.py`` finds the same synthetic galaxy field in both Galaxy Zoo
conventions (different cutout widths and Petrosian radii) and nothing else."""
import importlib.util

import numpy as np
import pytest

from conftest import REPO

SCRIPT = REPO / "training" / "gz_twins.py"
pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason="needs the training/ subproject")


def _module():
    pytest.importorskip("scipy")
    pytest.importorskip("PIL")
    spec = importlib.util.spec_from_file_location("gz_twins", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _sky(seed):
    """A central elliptical galaxy and 40 stars, positions in petroR90 units."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-6, 6, (40, 2)), rng.uniform(20, 120, 40), rng.uniform(0, np.pi)


def _render(sky, across, *, n=212):
    """Grey image of ``sky`` ``across`` petroR90 wide (the cutout's own radius unit)."""
    stars, flux, angle = sky
    x = (np.arange(n) + 0.5) / n * across - across / 2
    yy, xx = np.meshgrid(x, x, indexing="ij")
    psf = 0.06 * across / 8.48  # a fixed angular PSF, in this image's radius units
    img = np.zeros((n, n))
    for (sy, sx), f in zip(stars, flux):
        img += f * np.exp(-((yy - sy) ** 2 + (xx - sx) ** 2) / (2 * psf ** 2))
    u = np.cos(angle) * xx + np.sin(angle) * yy
    v = -np.sin(angle) * xx + np.cos(angle) * yy
    img += 200 * np.exp(-np.hypot(u / 0.5, v / 0.25))
    return np.clip(img + 5, 0, 255).astype(np.float32)


def test_twins_found_across_radius_mismatch():
    mod = _module()
    skies = [_sky(s) for s in range(4)]
    # GZ1 cutouts are 10.152 petroR90 wide; the GZ2 catalogue's petroR90 of the same
    # galaxy is 1.25 and 0.8 times GZ1's, so the field is 8.48 * 1.25 and 8.48 * 0.8 GZ1
    # radii wide; the third GZ2 field is a sky absent from GZ1.
    grey1 = [_render(s, mod.GZ1_ACROSS) for s in skies]
    grey2 = [_render(skies[2], mod.GZ2_ACROSS * 1.25), _render(skies[0], mod.GZ2_ACROSS * 0.8),
             _render(_sky(99), mod.GZ2_ACROSS)]
    twins = mod.find_twins(grey1, grey2)
    assert [(a, b) for a, b, _, _ in twins] == [(2, 0), (0, 1)]
    assert all(f > 0.9 for _, _, f, _ in twins)
