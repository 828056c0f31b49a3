"""Benchmark: the radio-morphology preprocessing of a stack of FIRST-like stamps.

Compares, in one run and on the same ``(N, 300, 300)`` float32 stack (default N = 200:
beam-sized sources of S/N 3 to 3,000 in Gaussian noise, some NaN holes):

* the per-stamp loop the radio path ran before: `sigma_clipped_rms` of each stamp's
  300 x 300 window (sort, then up to ten clipping passes that compact the pixels),
  then `first_cutout_to_uint8` of that stamp alone;
* the stack path: ``_sigma_clipped_rms_stack`` of all the windows (one sort per
  stamp, the clipped set a run of the sorted pixels) and one `first_cutout_to_uint8`
  call on the stack (what `astromorph.annotate` and `Model.predict` do now);
* the whole flux-unit input of the radio family (``_radio_input`` of the adapters: the
  noise, `peak_significance`, `background_significance` and the network input), and
  `background_significance` alone with the rms given;
* the network on the same stamps, batches of 256, for scale.

Both paths are warmed up first and then alternated (best of ``--repeats``); their rms
values and 8-bit images are checked to be identical. The script prints times and
ratios and asserts nothing about speed.

Usage::

    python benchmarks/bench_radio_preprocessing.py [--n 200] [--repeats 3]
"""
import argparse
import os
import time

import numpy as np

import astromorph
from astromorph.preprocessing import _radio as rad


def stamps(n, size=300, seed=1):
    """``(n, size, size)`` float32 Jy/beam: noise 0.15 mJy/beam, one to three Gaussian
    sources of S/N 3 to 3,000 near the centre, NaN holes in every fifth stamp."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = rng.normal(0, rad.FIRST_TYPICAL_RMS_JY, (n, size, size))
    for k, snr in enumerate(np.geomspace(3, 3000, n)):
        for _ in range(1 + k % 3):
            x0, y0 = rng.uniform(size * 0.35, size * 0.65, 2)
            width = rng.uniform(1.3, 6)
            out[k] += snr * rad.FIRST_TYPICAL_RMS_JY * np.exp(
                -((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * width ** 2))
        if k % 5 == 0:
            out[k][rng.random((size, size)) < 0.02] = np.nan
    return out.astype(np.float32)


def per_stamp(images):
    """The per-stamp loop: noise estimate and 8-bit image one stamp at a time."""
    rms = np.array([rad.sigma_clipped_rms(rad._centre_window(im, rad.DATASET_IMAGE_PIXELS,
                                                              np.nan)) for im in images])
    grey = np.stack([rad.first_cutout_to_uint8(im, rms=r) for im, r in zip(images, rms)])
    return rms, grey


def stacked(images):
    """The stack path: one noise call and one scaling call for the whole stack."""
    rms = rad._sigma_clipped_rms_stack(rad._centre_window(images, rad.DATASET_IMAGE_PIXELS,
                                                          np.nan))
    return rms, rad.first_cutout_to_uint8(images, rms=rms)


def best(func, *args, repeats, **kwargs):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = func(*args, **kwargs)
        times.append(time.perf_counter() - t)
    return min(times), out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    images = stamps(args.n)
    print(f"{args.n} float32 stamps of 300 x 300, {os.cpu_count()} CPU cores")
    per_stamp(images[:4]), stacked(images[:4])  # warm-up: imports, first allocations
    loop_t, stack_t = [], []
    for _ in range(args.repeats):  # alternated, so that both see the same machine load
        t, (loop_rms, loop_grey) = best(per_stamp, images, repeats=1)
        loop_t.append(t)
        t, (stack_rms, stack_grey) = best(stacked, images, repeats=1)
        stack_t.append(t)
    same = (loop_rms.tolist() == stack_rms.tolist()
            and np.array_equal(loop_grey, stack_grey))
    noise_loop, _ = best(lambda: [rad.sigma_clipped_rms(im) for im in images],
                         repeats=args.repeats)
    noise_stack, _ = best(rad._sigma_clipped_rms_stack, images, repeats=args.repeats)
    n = args.n
    print(f"per-stamp loop: {min(loop_t) / n * 1e3:.2f} ms/stamp "
          f"(runs: {', '.join(f'{t:.2f}' for t in loop_t)} s)")
    print(f"stack path:     {min(stack_t) / n * 1e3:.2f} ms/stamp "
          f"(runs: {', '.join(f'{t:.2f}' for t in stack_t)} s); identical rms and uint8: "
          f"{same}")
    print(f"  noise alone: {noise_loop / n * 1e3:.2f} ms/stamp per stamp, "
          f"{noise_stack / n * 1e3:.2f} ms/stamp on the stack")
    from astromorph._adapters import RawStamps, _radio_input

    raw = RawStamps("bands", images[:, None])
    flux_t, _ = best(_radio_input, raw, {"input": {}}, repeats=args.repeats)
    background_t, _ = best(rad.background_significance, images, rms=stack_rms,
                           repeats=args.repeats)
    print(f"flux-unit input (noise, peak and background checks, network input): "
          f"{flux_t / n * 1e3:.2f} ms/stamp")
    print(f"  background_significance alone (rms given): {background_t / n * 1e3:.2f} "
          f"ms/stamp")
    try:
        model = astromorph.load_model("radio-morphology", providers="cpu")
    except Exception as exc:  # a checkout without the exported model
        print(f"network not timed: {exc}")
    else:
        x = rad.preprocess_dataset_image(stack_grey)
        model.predict(x[:8], progress=False)
        t, _ = best(lambda: model.predict(x, batch_size=256, progress=False),
                    repeats=args.repeats)
        print(f"network (batches of 256): {t / n * 1e3:.2f} ms/stamp")
    print(f"RATIO radio preprocessing, per-stamp loop / stack path: "
          f"{min(loop_t) / min(stack_t):.1f}x")
    print(f"RATIO noise estimate, per-stamp loop / stack path: {noise_loop / noise_stack:.1f}x")


if __name__ == "__main__":
    main()
