"""Benchmark and check every execution provider on every shipped model.

For each shipped model (and precision variant) and each execution provider
asked for (default: CPU, CUDA and TensorRT), in one run:

* the session is created through `astromorph.load_model` exactly as users get
  it, and the providers it really runs on are printed; a provider that is not
  in this ONNX Runtime build, or fails to initialise, is reported as a
  fallback (with astromorph's `ProviderFallbackWarning` text) and not timed
  as if it were that provider;
* the model scores the same random network-ready batch as on the CPU
  provider, and the largest absolute difference of the outputs is printed
  (GPU kernels and TensorRT's float32 tactics round differently from the CPU
  provider);
* throughput is timed on ``--n`` stamps in batches of ``--batch`` after a
  warm-up call per batch shape (TensorRT builds an engine for each shape
  there), and printed with its ratio to the CPU provider in the same run.

Every session gets ``--threads`` ONNX Runtime intra-op threads (default 2, as the
model cards' ``performance`` figures; 0: ONNX Runtime's own choice, one per core), printed
in the header.

On a machine without a GPU this prints the CPU numbers and the fallbacks
only. No numbers are asserted.

Usage::

    python benchmarks/bench_providers.py [--providers cpu cuda tensorrt] [--models ...]
                                         [--n 4096] [--batch 256] [--threads 2]

GPU providers need ``onnxruntime-gpu`` (``pip install 'astromorph[gpu]'``)
instead of ``onnxruntime``, and a CUDA runtime that matches it.
"""
import argparse
import os
import time
import warnings

import numpy as np

import astromorph
from astromorph._session import available_providers
from astromorph.exceptions import ProviderFallbackWarning


def _load(name, provider, precision, threads):
    """The model on ``provider``, and the fallback warnings its loading gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ProviderFallbackWarning)
        model = astromorph.load_model(name, providers=provider, precision=precision,
                                      threads=threads)
        model.predict(np.zeros((2, *model.input_shape), np.float32), progress=False)
    fallbacks = [str(w.message) for w in caught if issubclass(w.category, ProviderFallbackWarning)]
    return model, fallbacks


def _rate(model, x, batch):
    # warm-up on every batch shape the timed pass uses: TensorRT builds an engine, and the
    # CUDA provider searches its convolution algorithms, on the first call of each shape
    model.predict(x[:batch], batch_size=batch, progress=False)
    if len(x) % batch:
        model.predict(x[-(len(x) % batch):], batch_size=batch, progress=False)
    t = time.perf_counter()
    model.predict(x, batch_size=batch, progress=False)
    return len(x) / (time.perf_counter() - t)


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64))))
               for k in a.keys())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--providers", nargs="+", default=["cpu", "cuda", "tensorrt"])
    parser.add_argument("--models", nargs="+", default=None,
                        help="model names (default: every shipped model)")
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2,
                        help="ONNX Runtime intra-op threads of every session (default 2, as the "
                             "model cards; 0: ONNX Runtime's own choice)")
    args = parser.parse_args(argv)
    if args.threads < 0:
        parser.error(f"--threads must be >= 0 (0: ONNX Runtime's own choice), got {args.threads}")
    import onnxruntime as ort

    threads = (f"{args.threads} ONNX Runtime thread(s)" if args.threads
               else "ONNX Runtime's own thread count")
    print(f"ONNX Runtime {ort.__version__}; available providers {available_providers()}; "
          f"{os.cpu_count()} CPU cores; {threads} (--threads {args.threads})")
    rng = np.random.default_rng(0)
    for name in args.models or astromorph.list_models():
        card = astromorph.model_card(name)
        for precision in ["float32", *(card.get("variants") or {})]:
            reference, _ = _load(name, "cpu", precision, args.threads)
            x = rng.random((args.n, *reference.input_shape), dtype=np.float32)
            expected = reference.predict(x[:args.batch], batch_size=args.batch, progress=False)
            cpu_rate = None
            print(f"\n== {name} v{card['version']} [{precision}], input {reference.input_shape}")
            for provider in args.providers:
                model, fallbacks = _load(name, provider, precision, args.threads)
                runs_on = model.providers[0]
                label = f"{provider:>9s} -> {runs_on}"
                if fallbacks and provider != "cpu":
                    print(f"  {label}: FALLBACK, not timed as {provider} "
                          f"({fallbacks[0][:160]})")
                    continue
                rate = _rate(model, x, args.batch)
                if provider == "cpu":
                    cpu_rate = rate
                    print(f"  {label}: {rate:,.0f} stamps/s (batches of {args.batch})")
                    continue
                diff = _max_diff(model.predict(x[:args.batch], batch_size=args.batch,
                                               progress=False), expected)
                ratio = f", {rate / cpu_rate:.1f}x the CPU provider" if cpu_rate else ""
                print(f"  {label}: {rate:,.0f} stamps/s (batches of {args.batch}){ratio}; "
                      f"max |output - CPU output| {diff:.1e}")


if __name__ == "__main__":
    main()
