"""Galaxies present in both Galaxy Zoo sets (GZ1 objid and GZ2 Kaggle GalaxyID).

Neither set carries coordinates (GZ1 files are named by SDSS DR7 objid, GZ2
files by the anonymised Kaggle GalaxyID), so twins are found from the pixels:
both sets are SDSS gri composites centred on the galaxy and scaled to its
Petrosian radius (GZ1 10.152 petroR90_r across, GZ2 8.48), but the two
catalogues' radii differ by up to a factor of ~1.6 for the same galaxy.

1. coarse: the high-passed grey field around the galaxy (centre masked,
   ``COARSE_FIELD`` petroR90 across, 48 px) of every GZ2 cutout, over a
   log-spaced range of relative scales, against every GZ1 cutout; the
   ``k`` best GZ1 candidates of each GZ2 cutout are kept;
2. fine: the whole high-passed grey field (``FINE_FIELD`` across, 96 px,
   galaxy included) of each candidate pair, maximised over a finer scale
   step and sub-pixel shifts. A pair is a twin where this correlation is at
   least ``threshold``.

Usage (about 15 minutes on 2 CPU cores)::

    python training/gz_twins.py [DATA_DIR] [--out twins.csv]

It prints the number of twins and, for every shipped model's split, how many
held-out galaxies have a twin in that model's training data.
"""
import argparse
import csv
import sys
from pathlib import Path

import numpy as np

__all__ = ["field_vector", "crop_resample", "coarse_candidates", "fine_score", "find_twins"]

GZ1_ACROSS = 10.152   # petroR90_r across a GZ1 cutout (0.024 petroR90_r per pixel, 423 px)
GZ2_ACROSS = 8.48     # petroR90_r across a Kaggle GZ2 cutout (0.02 per pixel, 424 px)
COARSE_FIELD = 5.0
FINE_FIELD = 4.0
SCALES = np.exp(np.arange(np.log(0.6), np.log(1.62), 0.04))
THRESHOLD = 0.7
COARSE_FLOOR = 0.55


def crop_resample(grey, fraction, size, *, shift=(0.0, 0.0)):
    """Central ``fraction`` of a square grey image resampled to ``size`` pixels."""
    from PIL import Image

    n = grey.shape[0]
    h = fraction * n / 2
    cy, cx = n / 2 + shift[0], n / 2 + shift[1]
    return np.asarray(Image.fromarray(np.asarray(grey, np.float32)).resize(
        (size, size), Image.BILINEAR, box=(cx - h, cy - h, cx + h, cy + h)), np.float32)


def field_vector(stamp, *, mask_radius=0):
    """Unit vector of a high-passed stamp (5-pixel box removed), centre masked."""
    from scipy.ndimage import uniform_filter

    n = stamp.shape[0]
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    v = ((stamp - uniform_filter(stamp, 5)) * (np.hypot(yy, xx) > mask_radius)).ravel()
    v = v - v.mean()
    return v / max(float(np.linalg.norm(v)), 1e-6)


def coarse_candidates(grey1, grey2, *, across1=GZ1_ACROSS, across2=GZ2_ACROSS,
                      scales=SCALES, k=5):
    """``k`` best (j in grey1, correlation, scale) for each image of grey2."""
    a1 = np.stack([field_vector(crop_resample(g, COARSE_FIELD / across1, 48), mask_radius=6)
                   for g in grey1])
    cand, score, scale = [], [], []
    for s in scales:
        fr = s * COARSE_FIELD / across2
        if fr > 1:
            break
        a2 = np.stack([field_vector(crop_resample(g, fr, 48), mask_radius=6) for g in grey2])
        sim = a2 @ a1.T
        kk = min(k, len(grey1))
        top = np.argpartition(-sim, kk - 1, 1)[:, :kk]
        cand.append(top)
        score.append(np.take_along_axis(sim, top, 1))
        scale.append(np.full(top.shape, s))
    cand, score, scale = (np.hstack(x) for x in (cand, score, scale))
    out = []
    for i in range(len(grey2)):
        best = {}
        for j, c, s in zip(cand[i], score[i], scale[i]):
            if c > best.get(j, (-2.0, 0))[0]:
                best[j] = (c, s)
        out.append(sorted(((j, c, s) for j, (c, s) in best.items()), key=lambda t: -t[1])[:k])
    return out


def fine_score(g1, g2, scale, *, across1=GZ1_ACROSS, across2=GZ2_ACROSS):
    """Best whole-field correlation of a GZ1 and a GZ2 grey image near relative ``scale``."""
    b = field_vector(crop_resample(g1, FINE_FIELD / across1, 96))
    best = -1.0
    for ds in np.exp(np.arange(-0.03, 0.031, 0.015)):
        fr = scale * ds * FINE_FIELD / across2
        if fr > 1:
            continue
        for dy in (-1.5, 0.0, 1.5):
            for dx in (-1.5, 0.0, 1.5):
                v = field_vector(crop_resample(g2, fr, 96, shift=(dy, dx)))
                best = max(best, float(v @ b))
    return best


def find_twins(grey1, grey2, *, threshold=THRESHOLD, k=3, floor=COARSE_FLOOR, log=None, **kw):
    """(i1, i2, fine score, scale) of every twin: the best-scoring GZ1 image of each GZ2
    image whose fine score reaches ``threshold`` (only coarse candidates scoring at least
    ``floor`` are scored finely)."""
    twins = []
    for i2, cands in enumerate(coarse_candidates(grey1, grey2, k=k, **kw)):
        scored = [(fine_score(grey1[j], grey2[i2], s, **kw), j, s) for j, c, s in cands
                  if c >= floor]
        if log is not None:
            log.extend((j, i2, f, s) for f, j, s in scored)
        if not scored:
            continue
        f, j, s = max(scored)
        if f >= threshold:
            twins.append((int(j), i2, f, float(s)))
    return twins


def _load_grey(path, n=212):
    from PIL import Image

    with Image.open(path) as im:
        im.draft("L", (n, n))
        return np.asarray(im.convert("L"), np.float32)


def shipped_overlap(data_dir, pairs):
    """Held-out items of each shipped model that have a twin in its training data."""
    sys.path.insert(0, str(Path(__file__).parent))
    from astromorph_training import gz2, morphology, realbogus

    data_dir = Path(data_dir)
    g1_of = {}
    for a, b in pairs:
        g1_of.setdefault(b, a)
    g2_of = {}
    for a, b in pairs:
        g2_of.setdefault(a, set()).add(b)
    ids1, labels = morphology.read_labels(data_dir)
    s1 = morphology.stratified_split(labels)
    part1 = {str(ids1[i]): name for name, idx in zip(("train", "val", "test"), s1) for i in idx}
    ids2, _ = gz2.read_votes(data_dir)
    s2 = gz2.split_indices(len(ids2))
    part2 = {str(ids2[i]): name for name, idx in zip(("train", "val", "test"), s2) for i in idx}
    out = {"twins": len(pairs), "gz1_with_twin": len(g2_of), "gz2_with_twin": len(g1_of)}
    # morphology-gz2: GZ2 test galaxies whose GZ1 twin trained its initialisation (morphology)
    for name in ("val", "test"):
        out[f"morphology-gz2 {name} galaxies with a GZ1 twin in morphology train"] = sum(
            part2.get(b) == name and part1.get(a) == "train" for a, b in pairs)
        out[f"morphology-gz2 {name} galaxies with a GZ1 twin in morphology train+val"] = sum(
            part2.get(b) == name and part1.get(a) in ("train", "val") for a, b in pairs)
    out["morphology-gz2 test size"] = len(s2[2])
    # embedding: held-out GZ1 galaxies (val + test) with a GZ2 twin (GZ2 all trained on,
    # minus the duplicates `embedding.find_duplicates` dropped)
    for name in ("val", "test"):
        out[f"embedding GZ1 {name} galaxies with a GZ2 twin"] = sum(
            part1.get(a) == name for a in g2_of)
    # real-bogus: host galaxies (seed 0) of the test simulations with a twin among training hosts
    hosts = realbogus._galaxy_split(data_dir, 0)
    key = {}
    for p in hosts["train"] + hosts["val"] + hosts["test"]:
        key[p] = (p.parent.parent.name, p.stem)
    train = {key[p] for p in hosts["train"]}
    twin = {("gz1", a): ("gz2", b) for a, b in pairs} | {("gz2", b): ("gz1", a) for a, b in pairs}
    for name in ("val", "test"):
        out[f"real-bogus {name} hosts with a twin among training hosts"] = sum(
            twin.get(key[p]) in train for p in hosts[name])
        out[f"real-bogus {name} hosts"] = len(hosts[name])
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", nargs="?", default=str(Path(__file__).parents[1] / ".."
                                                         / "shared" / "data"))
    parser.add_argument("--out", default=None, help="CSV of twins (gz1 objid, gz2 id, score)")
    parser.add_argument("--pairs", default=None, help="read twins from this CSV instead")
    args = parser.parse_args(argv)
    d = Path(args.data_dir)
    if args.pairs:
        with open(args.pairs) as f:
            pairs = [(r["gz1_objid"], r["gz2_id"]) for r in csv.DictReader(f)]
    else:
        p1 = sorted((d / "gz1" / "images").glob("*.jpeg"))
        p2 = sorted((d / "gz2" / "images").glob("*.jpg"))
        scored = []
        twins = find_twins([_load_grey(p) for p in p1], [_load_grey(p) for p in p2],
                           log=scored)
        if args.out:
            np.savetxt(Path(args.out).with_suffix(".scored.txt"), np.array(scored, float),
                       fmt="%.4f", header="i_gz1 i_gz2 fine scale")
        pairs = [(p1[a].stem, p2[b].stem) for a, b, _, _ in twins]
        if args.out:
            with open(args.out, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["gz1_objid", "gz2_id", "score", "scale"])
                for a, b, s, sc in twins:
                    w.writerow([p1[a].stem, p2[b].stem, f"{s:.4f}", f"{sc:.3f}"])
    for k, v in shipped_overlap(d, pairs).items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
