"""Group-equivariant convolutions for the dihedral group D4 (p4m).

D4 has eight elements: the four 90-degree rotations of the square, each with
or without a mirror flip. A D4 convolution (Cohen & Welling 2016) shares each
filter between all eight orientations, so a network built from them sees a
rotated or mirrored radio galaxy exactly as it sees the original, and pooling
over the group at the end makes its output invariant. Scaife & Porter (2021,
MNRAS 503, 2369) found such networks better than plain CNNs on FIRST radio
galaxies.

Feature maps keep the group as a channel axis of length 8 next to the ordinary
channels (``channel * 8 + element``), so every layer is an ordinary
``conv2d`` with an expanded weight: `GroupNet.to_plain` folds the network into
plain ``Conv2d``/``ReLU``/``MaxPool2d`` modules, which is what is exported to
ONNX (astromorph sees an ordinary CNN). Exact equivariance needs even image
sizes at every pooling, same-padding and stride-1 convolutions.
"""

import itertools

import numpy as np
import torch
from torch import nn

__all__ = ["N_ELEMENTS", "transform", "GroupNet"]

#: number of elements of D4
N_ELEMENTS = 8


def transform(x, g):
    """Apply D4 element ``g`` (0-7) to the last two axes of ``x``.

    ``g = 4 * m + r``: a mirror flip of the last axis if ``m``, then ``r``
    counter-clockwise quarter turns.
    """
    m, r = divmod(int(g), 4)
    if m:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, r, dims=(-2, -1))


def _tables():
    """Multiplication table ``prod[a, b]`` (a after b) and inverses, found numerically."""
    probe = torch.arange(9.0).reshape(3, 3)  # no symmetry: every element acts differently
    images = [transform(probe, g) for g in range(N_ELEMENTS)]
    prod = np.zeros((N_ELEMENTS, N_ELEMENTS), dtype=int)
    for a, b in itertools.product(range(N_ELEMENTS), repeat=2):
        ab = transform(transform(probe, b), a)
        prod[a, b] = next(c for c, im in enumerate(images) if torch.equal(im, ab))
    inverse = np.array([int(np.flatnonzero(prod[g] == 0)[0]) for g in range(N_ELEMENTS)])
    return prod, inverse


_PROD, _INVERSE = _tables()
# _PERM[g, h] = g^-1 h: which input orientation feeds orientation h of the filter for output g
_PERM = np.array([[_PROD[_INVERSE[g], h] for h in range(N_ELEMENTS)] for g in range(N_ELEMENTS)])


class _LiftConv(nn.Module):
    """Plane image -> D4 feature map: the filter in its eight orientations."""

    def __init__(self, cin, cout, k):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k) * (2.0 / (cin * k * k)) ** 0.5)

    def expanded(self):
        cout, cin, k, _ = self.weight.shape
        w = torch.stack([transform(self.weight, g) for g in range(N_ELEMENTS)], dim=1)
        return w.reshape(cout * N_ELEMENTS, cin, k, k)

    def forward(self, x):
        return nn.functional.conv2d(x, self.expanded(), padding=self.weight.shape[-1] // 2)


class _GroupConv(nn.Module):
    """D4 feature map -> D4 feature map."""

    def __init__(self, cin, cout, k=3):
        super().__init__()
        fan_in = cin * N_ELEMENTS * k * k
        self.weight = nn.Parameter(torch.randn(cout, cin, N_ELEMENTS, k, k) * (2.0 / fan_in) ** 0.5)
        self.register_buffer("perm", torch.as_tensor(_PERM), persistent=False)

    def expanded(self):
        cout, cin, n, k, _ = self.weight.shape
        w = torch.stack([transform(self.weight[:, :, self.perm[g]], g) for g in range(n)], dim=1)
        return w.reshape(cout * n, cin * n, k, k)

    def forward(self, x):
        return nn.functional.conv2d(x, self.expanded(), padding=self.weight.shape[-1] // 2)


class _GroupBatchNorm(nn.BatchNorm3d):
    """Batch normalisation with statistics shared by the eight orientations of a channel."""

    def forward(self, x):
        n, c, h, w = x.shape
        return super().forward(x.reshape(n, c // N_ELEMENTS, N_ELEMENTS, h, w)).reshape(n, c, h, w)


def _block(layer, c):
    return [layer, _GroupBatchNorm(c), nn.ReLU(inplace=True)]


class GroupNet(nn.Module):
    """D4-equivariant CNN for square single-channel stamps, returning invariant logits.

    A 5 x 5 lifting convolution at full resolution and a 4 x 4 max-pool, then
    pairs of 3 x 3 D4 convolutions separated by 2 x 2 max-pools, a mean over
    orientations and pixels, dropout and a linear layer.

    Parameters
    ----------
    n_classes : int
        Number of output logits.
    widths : sequence of int
        Channels per orientation: the lifting layer, then each stage (each
        layer is ``8 * width`` ordinary channels wide); the training default
        is ``radio.DEFAULT_D4_WIDTHS``.
    first_pool : int, optional
        Size of the max-pool after the lifting convolution.
    dropout : float, optional
        Dropout before the linear layer.
    """

    def __init__(self, n_classes, *, widths, first_pool=4, dropout=0.3):
        super().__init__()
        widths = [int(w) for w in widths]
        layers = [*_block(_LiftConv(1, widths[0], 5), widths[0]), nn.MaxPool2d(first_pool)]
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            if i:
                layers.append(nn.MaxPool2d(2))
            layers += [*_block(_GroupConv(cin, cout), cout), *_block(_GroupConv(cout, cout), cout)]
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(widths[-1], n_classes)
        self.arch = {"kind": "d4", "widths": widths, "first_pool": int(first_pool)}

    def _invariant(self, x):
        n, c, h, w = x.shape
        return x.reshape(n, c // N_ELEMENTS, N_ELEMENTS * h * w).mean(-1)

    def forward(self, x):
        return self.fc(self.dropout(self._invariant(self.features(x))))

    @torch.no_grad()
    def to_plain(self):
        """The same function (in eval mode) as plain ``Conv2d``/``ReLU``/``MaxPool2d`` layers.

        Batch normalisation is folded into the expanded convolution weights;
        the group mean and the linear layer become one ``Linear`` after a
        global average pool.
        """
        layers, conv = [], None
        for m in self.features:
            if isinstance(m, (_LiftConv, _GroupConv)):
                conv = m.expanded()
            elif isinstance(m, _GroupBatchNorm):
                scale = m.weight / torch.sqrt(m.running_var + m.eps)
                shift = m.bias - m.running_mean * scale
                scale, shift = scale.repeat_interleave(N_ELEMENTS), shift.repeat_interleave(N_ELEMENTS)
                plain = nn.Conv2d(conv.shape[1], conv.shape[0], conv.shape[-1],
                                  padding=conv.shape[-1] // 2)
                plain.weight.copy_(conv * scale[:, None, None, None])
                plain.bias.copy_(shift)
                layers.append(plain)
            elif isinstance(m, nn.ReLU):
                layers.append(nn.ReLU())
            elif isinstance(m, nn.MaxPool2d):
                layers.append(nn.MaxPool2d(m.kernel_size))
            else:  # pragma: no cover - the constructor only builds the kinds above
                raise TypeError(f"cannot fold {type(m).__name__}")
        fc = nn.Linear(self.fc.in_features * N_ELEMENTS, self.fc.out_features)
        fc.weight.copy_(self.fc.weight.repeat_interleave(N_ELEMENTS, dim=1) / N_ELEMENTS)
        fc.bias.copy_(self.fc.bias)
        plain = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc).eval()
        plain.arch = dict(self.arch)  # what it was folded from (`radio.architecture`)
        return plain
