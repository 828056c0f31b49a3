"""The radio preprocessing of a stack is the per-image preprocessing, to the bit.

``first_cutout_to_uint8`` and the noise estimate behind it (`_sigma_clipped_rms_stack`)
process a stack of stamps with array operations over the stack. The reference below is
the per-image code they replaced (astromorph 75fa585), kept here so that any change of
a clipping decision, of the rms or of a quantised pixel fails these tests.
"""
import numpy as np
import pytest

from astromorph.preprocessing import _radio as radio
from astromorph.preprocessing._checks import invalid_pixels, real_array
from conftest import traced_peak


def reference_rms(image, sigma=3.0, maxiters=10):
    """``sigma_clipped_rms`` as it was: one image, compaction per clipping iteration."""
    values = real_array(image, "image").astype(np.float64).ravel()
    values = values[~invalid_pixels(values)]
    if values.size == 0:
        return 0.0
    ordered = np.sort(values)
    for _ in range(maxiters):
        middle = ordered.size // 2
        centre = np.median(ordered[middle - 1 + ordered.size % 2:middle + 1])
        std = values.std()
        keep = np.abs(values - centre) <= sigma * std
        if keep.all() or keep.sum() < 2:
            break
        values = values[keep]
        run = np.flatnonzero(np.abs(ordered - centre) <= sigma * std)
        ordered = ordered[run[0]:run[-1] + 1]
    return float(values.std())


def reference_uint8(image, rms=None, threshold_sigma=3.0, size=300, quantize=True):
    """``first_cutout_to_uint8`` as it was: a stack is processed image by image."""
    image = real_array(image, "image").astype(np.float64)
    if image.ndim == 3:
        rmss = np.broadcast_to(np.asarray(np.nan if rms is None else rms, dtype=float),
                               (len(image),))
        return np.stack([reference_uint8(im, None if rms is None else r, threshold_sigma,
                                         size, quantize) for im, r in zip(image, rmss)])
    window = radio._centre_window(image, size, np.nan)
    if rms is None:
        rms = reference_rms(window)
    threshold = threshold_sigma * float(np.asarray(rms, dtype=float).reshape(-1)[0])
    window = np.where(invalid_pixels(window), threshold, window)
    clipped = np.maximum(window, threshold)
    peak = clipped.max()
    if peak > threshold:
        scaled = (clipped - threshold) * (255.0 / (peak - threshold))
    else:
        scaled = np.zeros_like(clipped)
    if quantize:
        return np.clip(np.floor(scaled + 1e-6), 0, 255).astype(np.uint8)
    return scaled.astype(np.float32)


def corpus(n=60, size=300, seed=3):
    """FIRST-like stamps: noise with Gaussian sources of S/N 0.5 to 10^4, negative
    sidelobes, NaN holes, sentinels, an offset, a constant and an all-NaN stamp."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = rng.normal(0, 1.5e-4, (n, size, size))
    for k, snr in enumerate(np.geomspace(0.5, 1e4, n)):
        for _ in range(1 + k % 3):
            x0, y0 = rng.uniform(size * 0.3, size * 0.7, 2)
            width = rng.uniform(1, 8)
            blob = np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * width ** 2))
            out[k] += snr * 1.5e-4 * blob * rng.choice([1, 1, 1, -0.3])
        if k % 4 == 1:
            out[k][rng.random((size, size)) < 0.05] = np.nan
        if k % 5 == 2:
            out[k, :40] = np.nan  # the edge of a survey
        if k % 6 == 3:
            out[k][rng.random((size, size)) < 0.01] = -3.4e38
        if k % 7 == 4:
            out[k][rng.random((size, size)) < 0.01] = np.inf
        if k % 9 == 5:
            out[k] += 7.0  # an offset far above the noise
    out[-1] = 2.5e-3
    out[-2] = np.nan
    out[-3, :, :] = np.nan
    out[-3, 150, 150] = 1e-3  # a single valid pixel
    return out


def check_same(images, **options):
    got = radio.first_cutout_to_uint8(images, **options)
    want = reference_uint8(images, **options)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_stack_rms_is_the_per_image_rms(dtype):
    images = corpus().astype(dtype)
    got = radio._sigma_clipped_rms_stack(images)
    want = [reference_rms(im) for im in images]
    assert got.tolist() == want  # the same floats, not merely close
    for sigma, maxiters in ((2.0, 3), (5.0, 0), (1.0, 30)):
        got = radio._sigma_clipped_rms_stack(images[::5], sigma=sigma, maxiters=maxiters)
        assert got.tolist() == [reference_rms(im, sigma, maxiters) for im in images[::5]]


@pytest.mark.parametrize("dtype", [np.float64, np.float32, ">f8"])
@pytest.mark.parametrize("quantize", [True, False])
def test_stack_uint8_is_the_per_image_uint8(dtype, quantize):
    check_same(corpus().astype(dtype), quantize=quantize)


def test_stack_uint8_other_inputs():
    rng = np.random.default_rng(8)
    images = corpus(n=12, seed=9)
    check_same(images, rms=1.5e-4)
    check_same(images, rms=np.geomspace(1e-5, 1e-2, 12), threshold_sigma=2.0)
    check_same(images, threshold_sigma=0.0)
    # integers (ties everywhere), tiny stamps inside the window, a larger window
    check_same(rng.integers(-20, 400, (8, 300, 300)))
    check_same(rng.integers(-3, 4, (8, 300, 300)).astype(np.int16))
    check_same(images[:, 140:160, 145:152])
    check_same(images[:, 100:200, 100:200], size=128, quantize=False)
    check_same(images[:5], size=301)
    # a masked array: masked pixels count as missing, whatever they hide
    masked = np.ma.masked_array(images, mask=rng.random(images.shape) < 0.2)
    masked.data[masked.mask] = 1e3
    check_same(masked)
    np.testing.assert_array_equal(radio.first_cutout_to_uint8(masked[:2].astype(np.float32)),
                                  reference_uint8(masked[:2].astype(np.float32)))
    # one image is the stack of one
    np.testing.assert_array_equal(radio.first_cutout_to_uint8(images[3]),
                                  reference_uint8(images[3]))


def test_network_input_is_unchanged():
    images = corpus(n=24, seed=11)
    want = radio.preprocess_dataset_image(reference_uint8(images))
    np.testing.assert_array_equal(radio.preprocess_first_cutout(images), want)
    want = radio.preprocess_dataset_image(reference_uint8(images, quantize=False))
    np.testing.assert_array_equal(radio.preprocess_first_cutout(images, quantize=False), want)


def test_stack_rms_falls_back_only_where_a_pixel_sits_on_the_threshold(monkeypatch):
    """Gaussian noise is clipped on the prefix sums alone; a pixel exactly at
    3 sigma (nine -1, nine +1, -9 and +9: std 3) is left to ``sigma_clipped_rms``."""
    calls = []
    exact = radio.sigma_clipped_rms
    monkeypatch.setattr(radio, "sigma_clipped_rms",
                        lambda *a, **k: calls.append(1) or exact(*a, **k))
    images = corpus(n=30, seed=4).astype(np.float32)
    assert radio._sigma_clipped_rms_stack(images).tolist() == [reference_rms(im)
                                                               for im in images]
    assert not calls
    edge = np.array([[-1.0] * 9 + [1.0] * 9 + [-9.0, 9.0]] * 2)
    edge[1, :4] = np.nan
    assert reference_rms(edge[0]) == 3.0
    assert radio._sigma_clipped_rms_stack(edge).tolist() == [reference_rms(e) for e in edge]
    assert calls


def test_small_rows_ties_and_zeros_match_the_reference():
    """Short rows of few distinct values (ties, +-0, an even median between two values)
    exercise the bisection at every edge."""
    rng = np.random.default_rng(5)
    rows = []
    for k in range(400):
        n = 40
        x = rng.normal(0, 1, n) if k % 2 else rng.integers(-3, 4, n).astype(float)
        x[rng.random(n) < 0.1] = rng.uniform(5, 1e3)
        x[rng.random(n) < 0.05] = -0.0
        x[rng.random(n) < 0.1] = np.nan
        x[0] = -1e30 if k % 3 == 0 else x[0]
        rows.append(x)
    rows = np.array(rows)
    for sigma, maxiters in ((3.0, 10), (0.7, 20), (1.5, 2)):
        got = radio._sigma_clipped_rms_stack(rows, sigma=sigma, maxiters=maxiters)
        assert got.tolist() == [reference_rms(r, sigma, maxiters) for r in rows]


def test_radio_adapter_measures_the_stack_as_before(monkeypatch):
    """annotate's radio path (float32 stamps, invalid pixels NaN) measures the noise of
    the whole stack in one call, the per-image values; the network input and the
    NO_SOURCE flags are those of the per-image code."""
    import astromorph
    from astromorph import Flag
    from astromorph._adapters import RawStamps, _radio_input, prepare

    try:
        model = astromorph.load_model("radio-morphology", providers="cpu")
    except Exception as exc:  # pragma: no cover - a checkout without the exported model
        pytest.skip(f"radio-morphology not loadable: {exc}")
    # (no constant or empty stamp: their rms of 0 would have the scaling measure again)
    images = corpus(n=24, seed=12)[:-3].astype(np.float32)
    measured = []
    stack_rms = radio._sigma_clipped_rms_stack
    monkeypatch.setattr(radio, "_sigma_clipped_rms_stack",
                        lambda *a, **k: measured.append(stack_rms(*a, **k)) or measured[-1])
    x, flags = prepare(model, RawStamps("bands", images[:, None]))
    clean = np.where(invalid_pixels(images), np.float32(np.nan), images)
    rms = np.array([reference_rms(radio._centre_window(im, 300, np.nan)) for im in clean])
    # one call for the windows, which also reads both backgrounds off its sorted pixels
    # (and one for the strips along their edges, `radio._edge_levels`)
    assert len(measured) == 2 and measured[0][0].tolist() == rms.tolist()
    options = dict(model.card["input"].get("preprocessing_options") or {})
    want = radio.preprocess_dataset_image(
        reference_uint8(clean, rms=rms if np.all(rms > 0) else None), **options)
    np.testing.assert_array_equal(x, want)
    faint = ~(radio.peak_significance(clean, rms=rms) >= radio.DETECTION_SIGMA)
    assert 0 < faint.sum() < len(faint)
    np.testing.assert_array_equal(flags & int(Flag.NO_SOURCE) != 0, faint)
    np.testing.assert_array_equal(reference_peak(clean, rms=rms),
                                  radio.peak_significance(clean, rms=rms))
    # the background flag: OUT_OF_DISTRIBUTION from the clipped median alone (a pedestal
    # of 0, 1, 2, -1 and -2 sigma on three copies of the noise-only stamps; no source is
    # needed), and from the rings about the centre below zero (`radio._ring_levels`)
    noise = np.random.default_rng(13).normal(0, 1.5e-4, (3, 300, 300)).astype(np.float32)
    raw = np.concatenate([noise + np.float32(p * 1.5e-4) for p in (0, 1, 2, -1, -2)])
    stamps = RawStamps("bands", raw[:, None])
    _, _, levels, _, rings = _radio_input(stamps, model.card)
    level = reference_background(raw)
    np.testing.assert_array_equal(levels, level)
    want = (level > radio.MAX_BACKGROUND_SIGMA) | (level < radio.MIN_BACKGROUND_SIGMA)
    assert want.tolist() == [False] * 3 + [True] * 6 + [False] * 3 + [True] * 3
    bowl = rings[:, 0] < radio.MIN_RING_SIGMA
    assert bowl.tolist() == [False] * 9 + [True] * 6
    _, flags = prepare(model, stamps)
    np.testing.assert_array_equal(flags & int(Flag.OUT_OF_DISTRIBUTION) != 0, want | bowl)
    np.testing.assert_array_equal(stamps.radio.background, level)


def reference_windows(image, rms):
    """What both reference functions start from: whether ``image`` is one image, the
    float64 stack, its central 300-pixel windows and the rms of each (measured by
    `reference_rms` where not given)."""
    image = real_array(image, "image").astype(np.float64)
    single = image.ndim == 2
    stack = image[None] if single else image
    window = radio._centre_window(stack, 300, np.nan)
    if rms is None:
        rms = np.array([reference_rms(w) for w in window])
    return single, stack, window, np.broadcast_to(np.asarray(rms, dtype=float), (len(stack),))


def reference_background(image, rms=None):
    """``background_significance`` as it was (5984ca5): six np.nanmedian calls over the
    stack, the clipping at 3 rms about the median applied to every valid pixel each time."""
    single, stack, window, rms = reference_windows(image, rms)
    values = window.reshape(len(stack), 300 ** 2)
    valid = ~invalid_pixels(values)
    some = valid.any(axis=1)
    values = np.where(valid & some[:, None], values, np.nan)
    values[~some] = 0.0
    centre = np.nanmedian(values, axis=1)
    for _ in range(5):
        near = np.abs(values - centre[:, None]) <= 3.0 * rms[:, None]
        centre = np.nanmedian(np.where(near | ~near.any(axis=1)[:, None], values, np.nan),
                              axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(some & (rms > 0), centre / np.where(rms > 0, rms, 1.0), np.nan)
    return float(out[0]) if single else out


def reference_peak(image, rms=None):
    """``peak_significance`` as it was (5984ca5): the background a np.nanmedian."""
    single, stack, window, rms = reference_windows(image, rms)
    field = radio._centre_window(stack, 128, np.nan).reshape(len(stack), 128 ** 2)
    finite = ~invalid_pixels(field)
    peak = np.where(finite, field, -np.inf).max(axis=1, initial=-np.inf)
    values = window.reshape(len(window), 300 ** 2)
    valid = ~invalid_pixels(values)
    values = np.where(valid, values, np.nan)
    values[~valid.any(axis=1)] = 0.0
    peak = peak - np.maximum(np.nanmedian(values, axis=1), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(finite.any(axis=1) & (rms > 0), peak / np.where(rms > 0, rms, 1.0),
                       np.nan)
    return float(out[0]) if single else out


def check_background(images, **options):
    """background_significance and peak_significance (whose background is the plain
    median, read off the same sorted pixels) against the nanmedian code."""
    for new, old in ((radio.background_significance, reference_background),
                     (radio.peak_significance, reference_peak)):
        got, want = new(images, **options), old(images, **options)
        # the same floats (NaN where the reference has NaN): not merely close
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        assert np.shape(got) == np.shape(want)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, ">f8"])
def test_background_significance_is_the_nanmedian_loop(dtype):
    """NaN, inf, sentinels, an offset, a constant (rms 0), an all-NaN image, a single
    valid pixel, sources of S/N up to 10^4; pedestals of 0.5 to 3 sigma."""
    images = corpus().astype(dtype)
    check_background(images)
    check_background(images[::3] + np.asarray(1.5e-4 * np.array([0.5, 1, 2, 3] * 5),
                                              dtype=dtype)[:, None, None])
    check_background(images[7])  # one image


def test_background_significance_other_inputs():
    rng = np.random.default_rng(21)
    images = corpus(n=16, seed=22)
    # a given rms: one for all, one per image (zeros among them), far too small (the
    # clipping keeps no pixel: the median of all), far too large (keeps every pixel)
    check_background(images, rms=1.5e-4)
    check_background(images, rms=np.r_[0.0, np.geomspace(1e-7, 1e-2, 14), 0.0])
    check_background(images, rms=1e-300)
    check_background(images, rms=1e3)
    check_background(images.astype(np.float32), rms=np.float32(1.5e-4))
    # integers (ties everywhere: the runs end inside groups of equal values)
    check_background(rng.integers(-20, 400, (6, 300, 300)))
    ints = rng.integers(-3, 4, (6, 300, 300)).astype(np.int16)
    for rms in (0.2, 1 / 3, 0.5, 1.0):
        check_background(ints, rms=rms)
    # even and odd counts of valid pixels (stamps smaller than the window, NaN holes)
    small = images[:, 140:160, 145:152].copy()
    small[::2, 0, 0] = np.nan
    check_background(small)
    check_background(small, rms=2e-5)
    # a masked array: masked pixels count as missing, whatever they hide
    masked = np.ma.masked_array(images, mask=rng.random(images.shape) < 0.3)
    masked.data[masked.mask] = 1e3
    check_background(masked)
    check_background(masked.astype(np.float32), rms=1e-4)
    # every pixel invalid: NaN, +-inf, sentinels of both signs
    bad = np.full((4, 300, 300), np.nan)
    bad[1], bad[2, ::2], bad[3] = -3.4e38, np.inf, 1e30
    check_background(bad)
    check_background(bad, rms=1.0)


def test_centre_window_of_a_window_sized_stack_is_no_copy():
    """A stack already of the window's size is its own window (no padding, no cropping):
    the array itself, C-ordered, not a copy of the batch (annotate's radio stamps are cut
    at the data-set size); others are padded or cropped as before."""
    rng = np.random.default_rng(5)
    stack = rng.normal(size=(3, 300, 300)).astype(np.float32)
    window = radio._centre_window(stack, 300, np.nan)
    assert np.shares_memory(window, stack) and window.flags.c_contiguous
    np.testing.assert_array_equal(window, stack)
    # a strided stack of that size: a C-ordered copy of the same values
    strided = np.asfortranarray(stack)
    window = radio._centre_window(strided, 300, np.nan)
    assert window.flags.c_contiguous and not np.shares_memory(window, strided)
    np.testing.assert_array_equal(window, stack)
    padded = radio._centre_window(stack[:, :299, 1:], 300, np.nan)
    # (299 pixels: centre pixel 149 on 150, one NaN row and column before)
    assert np.isnan(padded[:, 0]).all() and np.isnan(padded[:, :, 0]).all()
    np.testing.assert_array_equal(padded[:, 1:, 1:], stack[:, :299, 1:])
    np.testing.assert_array_equal(radio._centre_window(stack, 128, np.nan),
                                  stack[:, 86:214, 86:214])


def test_radio_input_keeps_the_callers_array():
    """The radio adapter sets the invalid pixels of its own copy to NaN: the caller's
    stamps (sentinels, inf and NaN in them) are left as they were."""
    from astromorph._adapters import RawStamps, _radio_input

    card = {"name": "radio-test", "input": {}}
    images = corpus(n=6, seed=3).astype(np.float32)
    images[0, :5] = -3.4e38
    images[1, 10, 10:20] = np.inf
    images[2, 150:160] = np.nan
    data = images[:, None]
    kept = data.copy()
    x, flags, _, _, _ = _radio_input(RawStamps("bands", data), card)
    np.testing.assert_array_equal(data, kept)
    clean = np.where(invalid_pixels(images), np.float32(np.nan), images)
    x2, flags2, _, _, _ = _radio_input(RawStamps("bands", clean[:, None]), card)
    np.testing.assert_array_equal(x, x2)


def test_dataset_image_widens_only_the_window_kept():
    """`preprocess_dataset_image` takes the central window of the 8-bit images before it
    widens them to float32 (a float32 copy of a whole batch of 300-pixel images was the
    largest array of annotate's radio path); the same network input."""
    grey = np.random.default_rng(8).integers(0, 256, (40, 300, 300), dtype=np.uint8)
    want = radio.preprocess_dataset_image(grey.astype(np.float32))
    got, peak = traced_peak(lambda: radio.preprocess_dataset_image(grey))
    np.testing.assert_array_equal(got, want)
    assert peak < grey.size * 4 / 2  # (the float32 windows kept: 18 % of that size)


def test_radio_input_writes_into_scratch_stamps_only():
    """Stamps marked scratch (annotate's, not read again) get their invalid pixels set to
    NaN in place: no copy of the batch (peak traced memory lower by at least its size);
    the same network input, flags and levels as from a copy."""
    from astromorph._adapters import RawStamps, _radio_input

    card = {"name": "radio-test", "input": {}}
    images = np.random.default_rng(4).normal(0, 1.5e-4, (48, 300, 300)).astype(np.float32)
    images[::3, :20] = np.nan  # the edge of a survey
    images[1, 5, 5] = -3.4e38
    peaks, outs = [], []
    for scratch in (False, True):
        data = images[:, None].copy()
        out, peak = traced_peak(
            lambda: _radio_input(RawStamps("bands", data, scratch=scratch), card))
        outs.append(out)
        peaks.append(peak)
        if scratch:
            np.testing.assert_array_equal(data[:, 0], np.where(invalid_pixels(images),
                                                               np.float32(np.nan), images))
        else:
            np.testing.assert_array_equal(data[:, 0], images)
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
    assert peaks[1] <= peaks[0] - 0.9 * images.nbytes
