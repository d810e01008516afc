"""Augmentation-consistent stores: top-k compression by hand, seeded view choice, and the
student replaying exactly the pixels the teacher scored."""

import json
import math
import shutil

import h5py
import numpy as np
import pytest
import torch

from kdstore.cache import write as cache
from kdstore.cache.config import CacheConfig
from kdstore.cache.write import load_teacher
from kdstore.data.augment import AUGMENTATIONS, normalize
from kdstore.data.beton import make_loader
from kdstore.loader import batch as batch_module
from kdstore.loader.prepare import choose
from kdstore.method.sparse_targets import topk_compress, topk_expand
from kdstore.method.variants import VARIANTS
from kdstore.store.format import Store, write_manifest
from kdstore.store.verification import verify
from kdstore.store.views import draw_params
from kdstore.train import build as train_build
from kdstore.train import loop as train
from kdstore.train.config import TrainConfig

K = 3


def test_topk_by_hand():
    z = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    out = topk_compress(z, 2)
    assert out["topk_values"].tolist() == [[2.0, 1.0]] and out["topk_indices"].tolist() == [[0, 1]]
    e = [math.exp(v) for v in (2.0, 1.0, 0.0, -1.0)]  # 7.389, 2.718, 1, 0.368; sum 11.475
    rest = (e[2] + e[3]) / sum(e)  # 0.1192: the mass outside the top 2
    assert out["fill"].item() == pytest.approx(math.log(rest / 2) + math.log(sum(e)), abs=1e-5)  # -0.3799
    full = topk_expand(out["topk_values"], out["topk_indices"], out["fill"], 4)
    assert full[0, 2].item() == full[0, 3].item() == pytest.approx(-0.37989, abs=1e-4)
    p = torch.softmax(full, 1)[0]
    assert p[0].item() == pytest.approx(e[0] / sum(e), abs=1e-6) and p[1].item() == pytest.approx(
        e[1] / sum(e), abs=1e-6
    )
    assert p[2].item() == pytest.approx(rest / 2, abs=1e-6)  # the rest spread evenly, as FKD does


def test_view_choice_and_params_are_seeded():
    a, b = choose(0, 0, 1000, K), choose(0, 1, 1000, K)
    assert a.tolist() == choose(0, 0, 1000, K).tolist() and a.tolist() != b.tolist()
    assert a.min() == 0 and a.max() == K - 1 and a.tolist() != choose(1, 0, 1000, K).tolist()
    many = draw_params("crop-flip", 50, 8, 32, seed=3)
    np.testing.assert_array_equal(many[:, :4], draw_params("crop-flip", 50, 4, 32, seed=3))  # fewer views: a prefix
    assert AUGMENTATIONS["crop-flip"].valid(many, 32) and many.shape == (50, 8, 3)
    rrc = draw_params("resized-crop-flip", 200, 2, 96, seed=0)
    assert AUGMENTATIONS["resized-crop-flip"].valid(rrc, 96) and len(np.unique(rrc[:, :, 2])) > 20


def _teacher_cfg(folder, out="", **kw):
    """small_store's seeded, untrained teacher (load_teacher seeds the weights) on the same images."""
    return CacheConfig(
        allow_untrained=True,
        dataset=f"imagefolder:{folder}",
        teacher="cifar_resnet8",
        out=str(out),
        batch_size=8,
        progress=False,
        **kw,
    )


@pytest.fixture(scope="module")
def views_store(tmp_path_factory, synthetic_folder):
    out = tmp_path_factory.mktemp("views") / "store"
    cache.run(_teacher_cfg(synthetic_folder, out, views=K, logits_dtype="float32"))
    return out


@pytest.mark.slow
def test_replayed_views_are_the_pixels_the_teacher_scored(views_store, synthetic_folder, tmp_path, monkeypatch):
    store = Store.open(views_store)
    v = store.train.views
    assert v.count == K and v.augmentation == "crop-flip" and v.logits.shape == (30, K, 3)
    seen_inputs, seen_ids = [], []
    real_build = train_build.build_model

    def recording_build(*args, **kwargs):
        model, meta = real_build(*args, **kwargs)
        model.register_forward_pre_hook(lambda m, a: seen_inputs.append(a[0].detach().clone()) if m.training else None)
        return model, meta

    monkeypatch.setattr(train_build, "build_model", recording_build)
    cfg = TrainConfig(
        out=str(tmp_path / "run"),
        store=str(views_store),
        variant="kd",
        epochs=1,
        batch_size=16,
        seed=5,
        workers=1,
        progress=False,
    )
    summary = train.run(cfg, hook=lambda e, b, ids, lam: seen_ids.append(ids))
    assert summary["views"] == {"mode": "replay", "count": K, "topk": 0, "sample": 0, "mix": ""}

    pos = store.train.positions(seen_ids[0])  # the first batch
    view = choose(5, 0, len(store.train), K)[pos]
    assert len(set(view.tolist())) > 1
    # the student's input, rebuilt independently: decode, normalise, augment with the stored parameters
    loader = make_loader(views_store / "train.beton", len(pos), 1, indices=np.sort(pos))
    images, _, ids = next(iter(loader))
    back = np.argsort(np.argsort(pos))
    mean, std = torch.tensor(store.attrs["normalize_mean"]), torch.tensor(store.attrs["normalize_std"])
    rebuilt = AUGMENTATIONS[v.augmentation].apply(
        normalize(images, mean, std)[back], torch.from_numpy(v.params[pos, view]).long()
    )
    assert torch.equal(seen_inputs[0], rebuilt)  # pixel-identical
    # and the teacher on those pixels gives the logits the store holds for that view
    teacher = load_teacher(_teacher_cfg(synthetic_folder), 3, 16).model.eval()
    with torch.inference_mode():
        live = teacher(seen_inputs[0]).numpy()
    np.testing.assert_allclose(live, v.logits[pos, view], rtol=1e-4, atol=1e-4)
    # a clean-view KD target would differ: the stored view is not the clean image
    assert np.abs(store.train.logits[pos] - live).max() > 1e-2


def test_verify_covers_views(views_store, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(views_store, bad)
    with h5py.File(bad / "teacher.h5", "r+") as f:
        params = f["train/views/params"]
        row = params[0]
        row[0, 0] = 99  # a crop offset outside the padded image
        params[0] = row
    assert any("sha256 differs" in p for p in verify(bad))
    recorded = json.loads((views_store / "MANIFEST.json").read_text())
    write_manifest(bad, {"dataset_fingerprint": recorded["dataset_fingerprint"]})  # as if a buggy writer had done it
    assert any("views/params hold crop-flip parameters outside" in p for p in verify(bad))


@pytest.mark.slow
def test_topk_store_trains_with_expanded_targets(synthetic_folder, views_store, tmp_path, monkeypatch):
    out = tmp_path / "topk"
    cache.run(_teacher_cfg(synthetic_folder, out, views=K, topk=2))
    v, full = Store.open(out).train.views, Store.open(views_store).train.views
    assert v.topk == 2 and v.logits is None and v.topk_indices.shape == (30, K, 2)
    np.testing.assert_array_equal(v.params, full.params)  # same seed, same views
    expanded = topk_expand(
        torch.from_numpy(v.topk_values[:, 0]), torch.from_numpy(v.topk_indices[:, 0]), torch.from_numpy(v.fill[:, 0]), 3
    )
    np.testing.assert_allclose(
        torch.softmax(expanded, 1).numpy(), torch.softmax(torch.from_numpy(full.logits[:, 0]), 1).numpy(), atol=2e-3
    )
    with h5py.File(out / "teacher.h5", "r") as f:
        assert "logits" not in f["train/views"] and f["train/views"].attrs["topk"] == 2
    # The KD target of every batch is the expanded top-k logits of the view each sample replayed.
    targets, seen = [], []
    real_loss = batch_module.student_loss
    monkeypatch.setattr(
        batch_module, "student_loss", lambda s, y, t, *a: targets.append(t.clone()) or real_loss(s, y, t, *a)
    )
    summary = train.run(
        TrainConfig(
            out=str(tmp_path / "run"), store=str(out), variant="kd", epochs=1, batch_size=8, workers=1, progress=False
        ),
        hook=lambda e, b, ids, lam: seen.append(ids),
    )
    assert summary["views"]["topk"] == 2 and len(targets) == len(seen) == 4
    t = Store.open(out).train
    chosen = choose(0, 0, 30, K)
    for ids, target in zip(seen, targets):
        pos = t.positions(ids)
        view = chosen[pos]
        expected = topk_expand(
            torch.from_numpy(v.topk_values[pos, view]),
            torch.from_numpy(v.topk_indices[pos, view]),
            torch.from_numpy(v.fill[pos, view]),
            3,
        )
        assert torch.equal(target, expected)


@pytest.mark.slow
def test_merge_averages_identical_views_and_refuses_a_mix(views_store, small_store, tmp_path):
    from kdstore.errors import KdstoreError
    from kdstore.store import merge

    merged = Store.open(
        merge.run(merge.MergeConfig(stores=(str(views_store), str(views_store)), out=str(tmp_path / "m")))
    )
    np.testing.assert_allclose(
        merged.train.views.logits, Store.open(views_store).train.views.logits, rtol=2e-3, atol=2e-3
    )  # float16
    with pytest.raises(KdstoreError, match="same views"):
        merge.run(merge.MergeConfig(stores=(str(views_store), str(small_store)), out=str(tmp_path / "mix")))


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_trains_from_a_views_store(variant, views_store, tmp_path):
    summary = train.run(
        TrainConfig(
            out=str(tmp_path / variant),
            store=str(views_store),
            variant=variant,
            epochs=1,
            batch_size=8,
            workers=1,
            progress=False,
        )
    )
    assert summary["views"] == {"mode": "replay", "count": K, "topk": 0, "sample": 0, "mix": ""}
    row = json.loads((tmp_path / variant / "metrics.jsonl").read_text().splitlines()[0])
    assert (row["train_kd"] > 0) == VARIANTS[variant].needs_teacher  # the replayed views' logits are the KD target
