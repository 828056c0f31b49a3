"""Throughput of untrained morphology networks of several shapes through ONNX Runtime.

Used to choose network widths before training (the speed of a shape does not
depend on its weights): each `MorphologyNet` is exported to ONNX and timed
on random stamps with the settings of the shipped models' cards (ONNX Runtime,
CPU, 2 intra-op threads), in batches of ``--batch`` stamps, ``--repeats``
passes each. Prints stamps per second per pass, the parameter count and the
multiply-adds per stamp. No numbers are asserted.

Usage::

    python training/benchmarks/network_shapes.py [--widths 32,48,64,128 32,48,64,96 ...]
                                                 [--stem STEM] [--size PX]
                                                 [--n 4096] [--batch 64] [--repeats 3]
"""
import argparse
import os
import tempfile
import time

import numpy as np
import onnxruntime as ort
import torch

from astromorph_training.morphology import DEFAULT_STEM, DEFAULT_WIDTHS, MorphologyNet

CANDIDATES = ("32,48,64,128", "32,48,64,96", "32,48,48,128", "32,48,48,96", "32,40,56,112")


def multiply_adds(net, size=64):
    """Multiply-adds of the convolutions and the linear layer for one stamp."""
    total, hooks = 0, []

    def count(module, _inputs, output):
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += output.numel() * k
        elif isinstance(module, torch.nn.Linear):
            total += module.in_features * module.out_features

    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            hooks.append(m.register_forward_hook(count))
    with torch.no_grad():
        net(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    return total


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", nargs="+", default=list(CANDIDATES),
                        help="comma-separated widths of the four stages, one shape per argument")
    parser.add_argument("--stem", default=DEFAULT_STEM)
    parser.add_argument("--size", type=int, default=64, help="input side in pixels")
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    x = np.random.default_rng(0).random((args.n, 3, args.size, args.size), dtype=np.float32)
    print(f"{args.n} random stamps, batches of {args.batch}, ONNX Runtime {ort.__version__} CPU, "
          f"{args.threads} threads, {os.cpu_count()} CPU cores; stem {args.stem}, {args.size} px; "
          f"shipped widths {DEFAULT_WIDTHS}")
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.widths:
            widths = tuple(int(w) for w in spec.split(","))
            torch.manual_seed(0)
            net = MorphologyNet(widths=widths, stem=args.stem).eval()
            path = os.path.join(tmp, "net.onnx")
            torch.onnx.export(net, (torch.zeros(1, 3, args.size, args.size),), path, input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": {0: "batch"}},
                              opset_version=17, dynamo=False)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            opts.inter_op_num_threads = 1
            session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            session.run(None, {"input": x[:args.batch]})
            rates = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                for s in range(0, args.n, args.batch):
                    session.run(None, {"input": x[s:s + args.batch]})
                rates.append(args.n / (time.perf_counter() - t))
            n_params = sum(p.numel() for p in net.parameters())
            print(f"widths {'/'.join(map(str, widths)):>14s}: "
                  f"{' / '.join(f'{r:,.0f}' for r in rates)} stamps/s; "
                  f"{n_params / 1e6:.2f} M parameters, {multiply_adds(net, args.size) / 1e6:.0f} M multiply-adds")


if __name__ == "__main__":
    main()
