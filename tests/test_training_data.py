"""How the training code reads its data folder: malformed files stop in one line naming the
file and the offending value, never a traceback deep in training or NaNs in the loss.

Synthetic data folders under tmp_path; needs torch and the training/ subproject, not the
real data.
"""
import importlib.util

import numpy as np
import pytest

pytestmark = [
    pytest.mark.training,
    pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch"),
    pytest.mark.skipif(importlib.util.find_spec("astromorph_training") is None,
                       reason="needs the training/ subproject installed"),
]


def _labels(tmp_path, text, encoding="utf-8"):
    (tmp_path / "gz1").mkdir(exist_ok=True)
    (tmp_path / "gz1" / "labels.csv").write_text(text, encoding=encoding)
    return tmp_path


def test_gz1_labels_with_bom_and_extra_columns(tmp_path):
    from astromorph_training import morphology

    _labels(tmp_path, "objid,class_id,class_name,ra\n11,0,elliptical,1.5\n12,3,edge,2\n",
            encoding="utf-8-sig")  # a byte-order mark, as spreadsheet exports write
    ids, labels = morphology.read_labels(tmp_path)
    assert ids.tolist() == ["11", "12"]
    assert labels.tolist() == [morphology.GZ1_TO_CLASS[0], morphology.GZ1_TO_CLASS[3]]


@pytest.mark.parametrize("text, value", [
    ("objid,class_id\n11,0\n12,7\n", "'7'"),
    ("objid,class_id\n11,0\n12,spiral\n", "'spiral'"),
    ("objid,class_id\n11,0\n12\n", "fewer fields"),
    ("objid,label\n11,0\n", "'class_id'"),
])
def test_gz1_labels_bad_rows_are_one_line(tmp_path, text, value):
    from astromorph_training import morphology

    _labels(tmp_path, text)
    with pytest.raises(SystemExit) as info:
        morphology.read_labels(tmp_path)
    message = str(info.value)
    assert value in message and str(tmp_path / "gz1" / "labels.csv") in message
    assert "\n" not in message


def test_unreadable_image_names_the_file(tmp_path):
    from PIL import Image

    from astromorph_training import morphology

    good = tmp_path / "good.jpeg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    truncated = tmp_path / "truncated.jpeg"
    truncated.write_bytes(good.read_bytes()[:300])
    garbage = tmp_path / "garbage.jpeg"
    garbage.write_bytes(b"not an image")
    assert morphology.load_jpegs([good]).shape == (1, 64, 64, 3)
    for bad in (truncated, garbage):
        with pytest.raises(SystemExit, match="unreadable image") as info:
            morphology.load_jpegs([good, bad])
        assert str(bad) in str(info.value)
    with pytest.raises(FileNotFoundError):  # the command line's one-line "missing file" message
        morphology.load_jpegs([tmp_path / "missing.jpeg"])


def test_gz2_votes_not_fractions_are_one_line(tmp_path):
    from astromorph_training import gz2

    (tmp_path / "gz2").mkdir()
    path = tmp_path / "gz2" / "votes.csv"
    header = "GalaxyID," + ",".join(gz2.LABELS)
    good = ",".join(["0.5"] * len(gz2.LABELS))
    path.write_text(f"\ufeff{header}\n100,{good}\n", encoding="utf-8")
    ids, fractions = gz2.read_votes(tmp_path)
    assert ids.tolist() == ["100"] and fractions.shape == (1, len(gz2.LABELS))
    for value in ("nan", "", "1.5", "-0.1"):
        bad = ",".join(["0.5"] * 3 + [value] + ["0.5"] * (len(gz2.LABELS) - 4))
        path.write_text(f"{header}\n100,{good}\n101,{bad}\n")
        with pytest.raises(SystemExit) as info:
            gz2.read_votes(tmp_path)
        message = str(info.value)
        assert "'101'" in message and gz2.LABELS[3] in message and f"{value!r}" in message


def test_ztf_triplets_without_meta_are_one_line(tmp_path):
    from astromorph_training import _simulate_transients

    (tmp_path / "ztf_alerts").mkdir()
    np.savez(tmp_path / "ztf_alerts" / "ztf_triplets.npz", X=np.zeros((1, 3, 63, 63), np.float32))
    with pytest.raises(SystemExit, match="'meta'") as info:
        _simulate_transients.load_ztf_triplets(tmp_path)
    assert "ztf_triplets.npz" in str(info.value)


def _gz1_folder(root, rows):
    from PIL import Image

    (root / "gz1" / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for objid, _ in rows:
        Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(
            root / "gz1" / "images" / f"{objid}.jpeg")
    (root / "gz1" / "labels.csv").write_text(
        "objid,class_id\n" + "".join(f"{i},{c}\n" for i, c in rows))
    return root


def test_split_cannot_change_silently_when_the_labels_change(tmp_path):
    """The seeded split depends on the rows of labels.csv and their order: one galaxy
    more moves others between training and test, so other rows are refused unless the
    run asks for a new split."""
    import argparse

    from astromorph_training import morphology

    rows = [(1000 + i, i % 6) for i in range(36)]
    data = _gz1_folder(tmp_path / "data", rows)
    args = argparse.Namespace(data_dir=data, out_dir=tmp_path / "out", smoke=False,
                              stamp_size=None, new_split=False)
    with pytest.raises(SystemExit, match="--new-split") as info:
        morphology.load_dataset(args)
    assert str(data / "gz1" / "labels.csv") in str(info.value) and "36 rows" in str(info.value)
    args.new_split = True
    split = morphology.load_dataset(args)["split"]
    assert sum(map(len, split)) == len(rows)


def test_split_fingerprint_sees_rows_added_reordered_or_relabelled():
    from astromorph_training import _common

    ids, labels = np.array(["1", "2", "3"]), np.array([0, 1, 0])
    base = _common.split_fingerprint(ids, labels)
    assert _common.split_fingerprint(ids.copy(), labels.copy()) == base
    assert _common.split_fingerprint(ids[::-1], labels[::-1]) != base
    assert _common.split_fingerprint(np.append(ids, "4"), np.append(labels, 1)) != base
    assert _common.split_fingerprint(ids, np.array([0, 1, 1])) != base


def test_real_data_is_the_shipped_split_source():
    """The data folder the shipped models were trained on passes the split check unchanged
    (the default commands draw exactly the shipped split)."""
    import argparse

    from conftest import DATA_DIR as data

    from astromorph_training import _common, gz2, morphology, realbogus

    if not all((data / f).exists() for f in ("gz1/labels.csv", "gz2/votes.csv",
                                             "ztf_alerts/ztf_triplets.npz")):
        pytest.skip("needs the real data (../shared/data or $ASTROMORPH_DATA)")
    ids, labels = morphology.read_labels(data)
    assert _common.split_fingerprint(ids, labels) == morphology.SPLIT_SOURCE_SHA256
    gz2_ids, _ = gz2.read_votes(data)
    assert _common.split_fingerprint(gz2_ids) == gz2.SPLIT_SOURCE_SHA256
    # real-bogus: the alerts (sky) and GZ images (hosts) its simulation splits are drawn from
    realbogus._check_split_sources(argparse.Namespace(data_dir=data, new_split=False))


def test_real_bogus_split_sources_cannot_change_silently(tmp_path, monkeypatch):
    """real-bogus permutes the alerts' objectIds and the GZ image list: another alert or one
    more image moves sky and hosts between training and held-out simulations, so other
    sources are refused unless the run asks for a new split."""
    import argparse
    import json

    from astromorph_training import realbogus

    data = tmp_path / "data"
    (data / "ztf_alerts").mkdir(parents=True)
    meta = [json.dumps({"objectId": f"ZTF{i}", "drb": 0.5, "rb": 0.5}) for i in range(4)]
    np.savez(data / "ztf_alerts" / "ztf_triplets.npz",
             X=np.zeros((4, 3, 63, 63), np.float32), meta=np.array(meta))
    args = argparse.Namespace(data_dir=data, new_split=False)
    with pytest.raises(SystemExit, match="ztf_triplets.npz.*--new-split"):
        realbogus._check_split_sources(args)
    args.new_split = True
    realbogus._check_split_sources(args)  # warns and goes on


def _fake_simulator(monkeypatch):
    """Stand in for real-bogus's simulator: each split it is asked for is recorded in the
    list returned and cached as two stamps of ones with their info."""
    from astromorph_training import realbogus

    simulated = []

    def simulate(split, n, data_dir, seed, out, **kwargs):
        simulated.append(split)
        np.savez(out / f"{split}_info.npz", snr_det=np.ones(2))
        np.save(out / f"{split}_x.npy", np.ones((2, 3, 4, 4), np.float16))

    monkeypatch.setattr(realbogus, "_simulate_split", simulate)
    return simulated


def test_real_bogus_cache_cut_off_before_its_info_is_simulated_again(tmp_path, monkeypatch):
    """A run killed after the simulated stamps were cached but before their info was left
    ``val_x.npy`` without ``val_info.npz``: every later run failed on the missing file (and
    blamed --data-dir) instead of simulating the split again."""
    import argparse
    import json

    from astromorph_training import realbogus

    cache = tmp_path / "cache"
    cache.mkdir()
    args = argparse.Namespace(smoke=False, seed=0, data_dir=tmp_path, n_train=None,
                              n_val=None, n_test=None, recipe="v3", regenerate=False)
    (cache / "params.json").write_text(json.dumps(
        {"n_train": realbogus.DEFAULT_N_TRAIN, "n_val": 8000, "n_test": 12000, "seed": 0}))
    np.save(cache / "val_x.npy", np.zeros((2, 3, 4, 4), np.float16))  # the cut-off run's stamps
    simulated = _fake_simulator(monkeypatch)
    monkeypatch.setattr(realbogus, "_check_split_sources",  # no real data: as if shipped
                        lambda args: (realbogus.ALERTS_SOURCE_SHA256,
                                      realbogus.GALAXIES_SOURCE_SHA256))
    x, info = realbogus._load_split(args, "val", {"cache": cache})
    assert simulated == ["val"] and x.sum() == x.size and info["snr_det"].tolist() == [1, 1]



def _legacy_cache(cache, **params):
    """A cache folder written before each split recorded its own parameters: one shared
    ``params.json`` and the three cached sets (stamps of zeros)."""
    import json

    from astromorph_training import realbogus

    cache.mkdir()
    (cache / "params.json").write_text(json.dumps(
        {"n_train": realbogus.DEFAULT_N_TRAIN, "n_val": 8000, "n_test": 12000, "seed": 0,
         **params}))
    for split in ("train", "val", "test"):
        np.save(cache / f"{split}_x.npy", np.zeros((2, 3, 4, 4), np.float16))
        np.savez(cache / f"{split}_info.npz", snr_det=np.zeros(2))


def test_real_bogus_cache_is_stale_per_split(tmp_path, monkeypatch):
    """The cache folder had one params.json for all three sets: `evaluate` or `calibrate`
    run without the ``--recipe v5`` (or with another ``--n-train``) that `train` was given
    found it stale and deleted every cached set, the 448,000 training triplets (tens of
    minutes to simulate) included, though the validation and test sets depend on neither.
    Each set is now stale only when what it is simulated from changes, and only its own
    files are replaced; an old folder's params.json still serves its sets."""
    import argparse

    from astromorph_training import realbogus

    cache = tmp_path / "cache"
    _legacy_cache(cache, recipe="v5")  # train --recipe v5 with the old code
    simulated = _fake_simulator(monkeypatch)
    monkeypatch.setattr(realbogus, "_check_split_sources",  # no real data: as if shipped
                        lambda args: (realbogus.ALERTS_SOURCE_SHA256,
                                      realbogus.GALAXIES_SOURCE_SHA256))
    dirs = {"cache": cache}

    def load(split, **options):
        args = argparse.Namespace(smoke=False, seed=0, data_dir=tmp_path, n_train=None,
                                  n_val=None, n_test=None, recipe=None, regenerate=False)
        vars(args).update(options)
        x, info = realbogus._load_split(args, split, dirs)
        return float(x.sum())

    assert load("test") == 0 and load("val") == 0  # evaluate, calibrate without --recipe
    assert load("train", recipe="v5") == 0 and simulated == []  # nothing simulated again
    assert load("test", n_test=500) == load("test", n_test=500) == 2 * 3 * 16
    assert simulated == ["test"]  # only the test set, once
    assert load("val", recipe="v3", n_train=1000) == 0 and simulated == ["test"]
    assert load("train", recipe="v5") == 0 and simulated == ["test"]  # still cached
    assert load("train", recipe="v6") == 2 * 3 * 16 and simulated == ["test", "train"]
    assert load("val") == 0 and simulated == ["test", "train"]
    assert load("test", n_test=12000) > 0 and simulated == ["test", "train", "test"]
    assert load("val", seed=1) > 0 and simulated == ["test", "train", "test", "val"]
    assert load("train", recipe="v6") > 0 and load("test") > 0 and len(simulated) == 4


def test_real_bogus_regenerate_keeps_the_sets_it_simulates(tmp_path, monkeypatch):
    """``--regenerate`` deleted every cached set at each load: ``train --regenerate``
    simulated the training set, then deleted it when it simulated the validation set, so
    the next run simulated it again. It re-simulates each set the command loads, once, and
    leaves the others; the data-parallel workers of `train` reuse the sets just simulated."""
    import argparse

    from astromorph_training import realbogus

    cache = tmp_path / "cache"
    _legacy_cache(cache)
    simulated = _fake_simulator(monkeypatch)
    monkeypatch.setattr(realbogus, "_check_split_sources",
                        lambda args: (realbogus.ALERTS_SOURCE_SHA256,
                                      realbogus.GALAXIES_SOURCE_SHA256))
    args = argparse.Namespace(smoke=False, seed=0, data_dir=tmp_path, n_train=None, n_val=None,
                              n_test=None, recipe=None, regenerate=True)
    for split in ("train", "val"):
        realbogus._load_split(args, split, {"cache": cache})
    assert simulated == ["train", "val"]
    assert {p.name for p in cache.glob("*.np*")} == {
        f"{s}_{f}" for s in ("train", "val", "test") for f in ("x.npy", "info.npz")}
    assert float(np.load(cache / "test_x.npy").sum()) == 0  # not loaded: left as it was
    args.regenerate = False
    for split in ("train", "val"):
        assert float(realbogus._load_split(args, split, {"cache": cache})[0].sum()) > 0
    assert simulated == ["train", "val"]

    import torch.multiprocessing as mp

    spawned = []

    def spawn(fn, args, nprocs, join):  # the --processes workers each load both sets again
        spawned.append(args[0])
        raise KeyboardInterrupt

    monkeypatch.setattr(mp, "spawn", spawn)
    monkeypatch.setattr(realbogus, "_load_split", lambda args, split, dirs: (None, None))
    args = argparse.Namespace(smoke=False, seed=0, out_dir=tmp_path / "run", processes=2,
                              regenerate=True, epochs=None, restart=False)
    with pytest.raises(KeyboardInterrupt):
        realbogus.train(args)
    assert args.regenerate and not spawned[0].regenerate and spawned[0].processes == 2


def test_json_reports_and_summaries_are_written_atomically(tmp_path, monkeypatch):
    """history.json, train_summary.json, calibration.json, metrics.json... were written in
    place: a run killed during the write left a truncated file on which the next step
    (e.g. radio's calibration reading train_summary.json) crashed. They now go through
    `_common.write_text`: the previous file stays whole, and no temporary file is left."""
    import os

    from astromorph_training import _common

    path = tmp_path / "train_summary.json"
    _common.write_text(path, '{"best_epoch": 139}\n')

    def killed(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        _common.write_text(path, '{"best_epoch": 140, "truncated')
    assert path.read_text() == '{"best_epoch": 139}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["train_summary.json"]
    monkeypatch.undo()
    source = "".join((_common.repo_root() / "training" / "astromorph_training" / f).read_text()
                     for f in os.listdir(_common.repo_root() / "training" / "astromorph_training")
                     if f.endswith(".py"))
    assert ".write_text(json.dumps" not in source  # every JSON file goes through write_text


def test_temporaries_of_killed_runs_are_removed_on_the_next_write(tmp_path):
    """A run killed outright (SIGKILL) while saving left its temporary file beside
    last.pt, as large as a checkpoint, one more per killed run. The next write of the same
    file removes those of processes that no longer exist, and keeps that of a process still
    alive (another run writing now)."""
    import os
    import subprocess
    import sys

    from astromorph_training import _common

    path = tmp_path / "last.pt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = tmp_path / f".last.pt.{int(dead.stdout)}.tmp"
    live = tmp_path / f".last.pt.{os.getppid()}.tmp"
    other = tmp_path / f".best.pt.{int(dead.stdout)}.tmp"  # another file's: not ours to judge
    for p in (stale, live, other):
        p.write_bytes(b"half a checkpoint")
    _common.write_text(path, "new")
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, other.name, "last.pt"])


def test_corrupt_first_archive_is_one_line(tmp_path):
    """A damaged firstgalaxydata zip (or an HDF5 file of another layout) crashed with a
    BadZipFile/h5py traceback; it now stops in one line naming the file."""
    from astromorph_training import radio

    (tmp_path / "galaxy_data_h5.zip").write_bytes(b"PK\x03\x04 not a zip archive")
    with pytest.raises(SystemExit, match=r"galaxy_data_h5\.zip: cannot extract"):
        radio._open_h5(tmp_path, "galaxy_data_h5", tmp_path)
    (tmp_path / "other.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    with pytest.raises(SystemExit, match=r"other\.h5: not a FIRST data set HDF5 file"):
        radio._read_h5(tmp_path / "other.h5")


def test_real_bogus_cached_sets_of_other_sources_are_not_reused(tmp_path, monkeypatch):
    """The split check ran only when a set was simulated: with the sets of the shipped
    sources cached, a changed ztf_triplets.npz (or GZ image list) went unnoticed, and with
    ``--new-split`` the cached sets of the old split were mixed with sets (e.g. a fresh
    test draw) of the new one. Now every non-smoke load checks the sources, and the sets
    of a new split are cached apart from (replace) those of another."""
    import argparse
    import json

    from astromorph_training import realbogus

    data = tmp_path / "data"
    (data / "ztf_alerts").mkdir(parents=True)
    meta = [json.dumps({"objectId": f"ZTF{i}", "drb": 0.5, "rb": 0.5}) for i in range(4)]
    np.savez(data / "ztf_alerts" / "ztf_triplets.npz",
             X=np.zeros((4, 3, 63, 63), np.float32), meta=np.array(meta))
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "params.json").write_text(json.dumps(  # the shipped sources' cached sets
        {"n_train": realbogus.DEFAULT_N_TRAIN, "n_val": 8000, "n_test": 12000, "seed": 0}))
    np.save(cache / "val_x.npy", np.zeros((2, 3, 4, 4), np.float16))
    np.savez(cache / "val_info.npz", snr_det=np.zeros(2))
    simulated = _fake_simulator(monkeypatch)
    args = argparse.Namespace(smoke=False, seed=0, data_dir=data, n_train=None, n_val=None,
                              n_test=None, recipe="v3", regenerate=False, new_split=False)
    with pytest.raises(SystemExit, match="ztf_triplets.npz.*--new-split"):
        realbogus._load_split(args, "val", {"cache": cache})
    args.new_split = True  # a new split: simulated afresh, not the old split's cached set
    x, info = realbogus._load_split(args, "val", {"cache": cache})
    assert simulated == ["val"] and x.sum() == x.size
    x, info = realbogus._load_split(args, "val", {"cache": cache})  # then cached
    assert simulated == ["val"] and x.sum() == x.size


def test_gz2_overlap_report_follows_new_split(tmp_path):
    """morphology-gz2 evaluate's GZ1 cross-match loads the GZ1 split with a namespace of its
    own, which dropped --new-split: with a changed labels.csv the report said 'GZ1 data
    unavailable: ... pass --new-split' to a run that had passed it."""
    import argparse

    from astromorph_training import gz2

    data = _gz1_folder(tmp_path / "data", [(1000 + i, i % 6) for i in range(36)])
    field = np.random.default_rng(1).uniform(0, 1, (2, 3, 64, 64)).astype(np.float32)
    args = argparse.Namespace(data_dir=data, out_dir=tmp_path / "out", new_split=False)
    # the data are there, the split changed: said so (it read 'GZ1 data unavailable: ...')
    note = gz2._gz1_overlap(args, np.array([1, 2]), field)["note"]
    assert note.startswith("GZ1 cross-match skipped: ") and "--new-split" in note
    assert "unavailable" not in note
    empty = argparse.Namespace(data_dir=tmp_path / "none", out_dir=tmp_path / "out",
                               new_split=False)  # no GZ1 data at all: unavailable
    assert gz2._gz1_overlap(empty, np.array([1, 2]), field)["note"].startswith(
        "GZ1 data unavailable: ")
    args.new_split = True
    report = gz2._gz1_overlap(args, np.array([1, 2]), field)
    assert "note" not in report and report["n_matched"] == 0


@pytest.mark.parametrize("n, bs, world", [(257, 128, 2), (129, 128, 2), (130, 128, 3),
                                          (131, 16, 4), (256, 128, 2), (5, 16, 2), (1, 16, 2),
                                          (259, 128, 2), (134, 128, 4)])
def test_real_bogus_ranks_take_the_same_steps(n, bs, world):
    """With ``--processes N`` every process takes the same number of steps, none of them on
    an empty shard: a final batch smaller than ``world`` (257 triplets, 128 a batch, two
    processes) used to send one process out of the epoch while the other ran a
    DistributedDataParallel step alone, so the collectives no longer matched. Every step,
    each process takes the same number of triplets: DistributedDataParallel averages the
    processes' gradients with equal weight, so a final batch of 3 split 2 + 1 (259
    triplets) weighted the lone triplet twice as much as each of the other two; a batch is
    cut to a multiple of ``world``."""
    import math

    from astromorph_training import realbogus

    perm = np.random.default_rng(1).permutation(n)
    steps = int(math.ceil(n / bs))
    shards = [realbogus._rank_batches(perm, bs, steps, rank, world) for rank in range(world)]
    assert len({len(s) for s in shards}) == 1
    for step, parts in enumerate(zip(*shards)):
        assert len(parts[0]) > 0 and len({len(p) for p in parts}) == 1
        batch = perm[step * bs:(step + 1) * bs]
        whole = np.sort(np.concatenate(parts))
        assert len(np.setdiff1d(whole, batch)) == 0 and len(np.unique(whole)) == len(whole)
        assert 0 <= len(batch) - len(whole) < world  # at most world - 1 left out of a batch
    if bs % world == 0:  # only the final batch is cut: at most world - 1 triplets an epoch
        assert 0 <= n - sum(len(p) for s in shards for p in s) < world


@pytest.mark.parametrize("n, bs", [(257, 128), (256, 128), (1, 16), (40, 16)])
def test_real_bogus_single_process_batches_are_unchanged(n, bs):
    """One process (how every shipped real-bogus model was trained) takes the batches it
    always took: ``np.sort(perm[step * bs:(step + 1) * bs])``, a final batch of one kept."""
    import math

    from astromorph_training import realbogus

    perm = np.random.default_rng(2).permutation(n)
    steps = int(math.ceil(n / bs))
    got = realbogus._rank_batches(perm, bs, steps, 0, 1)
    want = [np.sort(perm[s * bs:(s + 1) * bs]) for s in range(steps)]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    # smoke runs take fewer steps than the set has batches
    assert len(realbogus._rank_batches(perm, bs, 2, 0, 1)) == min(2, steps)


def test_figures_are_written_atomically(tmp_path, monkeypatch):
    """The reports' figures were written in place with ``fig.savefig(path)``: a run killed
    (or out of disk) while saving left a truncated PNG in training/reports. Every figure now
    goes through `_common.save_figure` (`atomic_path`): the previous picture stays whole
    and no temporary file is left."""
    import os

    from astromorph_training import _common

    rng = np.random.default_rng(3)
    probs = rng.dirichlet([1, 1], 20)
    labels = rng.integers(0, 2, 20)
    images = rng.uniform(0, 1, (20, 3, 8, 8))
    path = tmp_path / "figure.png"
    assert _common.plot_confusion_matrix(np.array([[3, 1], [0, 4]]), ["a", "b"], path) == path
    before = path.read_bytes()
    assert before.startswith(b"\x89PNG")

    def killed(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    for plot in (lambda p: _common.plot_confusion_matrix(np.eye(2, dtype=int), ["a", "b"], p),
                 lambda p: _common.plot_reliability(probs, labels, p),
                 lambda p: _common.plot_error_gallery(images, probs, labels, ["a", "b"], p)):
        with pytest.raises(KeyboardInterrupt):
            plot(path)
        assert path.read_bytes() == before
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]
    # and so do the figures the model modules draw themselves
    package = _common.repo_root() / "training" / "astromorph_training"
    assert not [p.name for p in package.glob("*.py") if ".savefig(" in p.read_text()]


def test_arrays_for_a_later_step_are_written_atomically(tmp_path, monkeypatch):
    """``embedding evaluate`` wrote ``pca.npz`` (the projection ``export`` bakes into the
    graph) in place with ``np.savez``: a run killed during the write left a truncated
    archive on which ``export`` crashed. It now goes through `_common.save_npz`, which keeps
    the previous file whole and leaves no temporary file."""
    import os

    from astromorph_training import _common

    path = tmp_path / "pca.npz"
    _common.save_npz(path, mean=np.arange(3.0), tta=4)
    with np.load(path) as saved:
        np.testing.assert_array_equal(saved["mean"], np.arange(3.0))
        assert int(saved["tta"]) == 4

    def killed(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        _common.save_npz(path, mean=np.zeros(5), tta=1)
    monkeypatch.undo()
    with np.load(path) as saved:
        assert int(saved["tta"]) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["pca.npz"]
    source = (_common.repo_root() / "training" / "astromorph_training" / "embedding.py").read_text()
    assert "np.savez(" not in source
