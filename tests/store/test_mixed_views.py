"""Mixed views (`cache --mix mixup|cutmix`): seeded mixing parameters, replayed pixel for pixel
with the partner's label mixed into the CE term, extended byte-identically by --extend."""

import numpy as np
import pytest
import torch

from kdstore.cache import write as cache
from kdstore.cache.config import CacheConfig
from kdstore.cache.write import load_teacher
from kdstore.data.augment import AUGMENTATIONS, normalize
from kdstore.data.beton import make_loader
from kdstore.errors import KdstoreError
from kdstore.loader import batch as batch_module
from kdstore.loader.prepare import choose
from kdstore.method.losses import student_loss
from kdstore.passes import inference
from kdstore.store.format import Store
from kdstore.store.mixes import draw_mix
from kdstore.store.verification import verify
from kdstore.train import build as train_build
from kdstore.train import loop as train
from kdstore.train.config import TrainConfig

pytestmark = pytest.mark.slow  # caches, trains or kills processes: the full suite only


def test_draw_mix_is_seeded_view_by_view_and_cutmix_weights_are_area_shares():
    four = draw_mix("cutmix", 500, 4, 32, 1.0, seed=3)
    two = draw_mix("cutmix", 500, 2, 32, 1.0, seed=3)
    later = draw_mix("cutmix", 500, 2, 32, 1.0, seed=3, first_view=2)
    for key in ("mix_partner", "mix_lam", "mix_box"):
        np.testing.assert_array_equal(four[key][:, :2], two[key])
        np.testing.assert_array_equal(four[key][:, 2:], later[key])
    x0, y0, x1, y1 = np.moveaxis(four["mix_box"], -1, 0)
    assert (
        (0 <= x0).all()
        and (x0 <= x1).all()
        and (x1 <= 32).all()
        and (0 <= y0).all()
        and (y0 <= y1).all()
        and (y1 <= 32).all()
    )
    np.testing.assert_allclose(four["mix_lam"], 1 - (x1 - x0) * (y1 - y0) / 1024, rtol=1e-6)
    assert (
        four["mix_partner"].min() >= 0 and four["mix_partner"].max() < 500 and len(np.unique(four["mix_partner"])) > 200
    )
    mixup = draw_mix("mixup", 500, 1, 32, 0.4, seed=0)
    assert "mix_box" not in mixup and 0 < mixup["mix_lam"].min() and mixup["mix_lam"].max() < 1


def test_mixed_labels_in_the_ce_term_by_hand():
    logits = torch.tensor([[2.0, 0.0, 1.0]])
    y, partner, w = torch.tensor([0]), torch.tensor([2]), torch.tensor([0.7])
    terms = student_loss(logits, y, None, 0.0, 4.0, label_mix=(partner, w))
    log_p = torch.log_softmax(logits, 1)[0]
    assert terms["ce"].item() == pytest.approx(-(0.7 * log_p[0] + 0.3 * log_p[2]).item(), rel=1e-6)


def _rebuild(store_path, v, pos, view):
    """The student's input for the positions, made independently: every training image decoded in
    file order, normalised, own and partner image augmented with the view's parameters, mixed."""
    store = Store.open(store_path)
    everything = torch.cat([b for b, _, _ in make_loader(store_path / "train.beton", 64, 1)])
    mean, std = torch.tensor(store.attrs["normalize_mean"]), torch.tensor(store.attrs["normalize_std"])
    aug = AUGMENTATIONS[v.augmentation]
    p = torch.from_numpy(v.params[pos, view]).long()
    own = aug.apply(normalize(everything[pos], mean, std), p)
    other = aug.apply(normalize(everything[v.mix_partner[pos, view]], mean, std), p)
    lam = torch.from_numpy(v.mix_lam[pos, view])
    if v.mix == "mixup":
        return lam.view(-1, 1, 1, 1) * own + (1 - lam.view(-1, 1, 1, 1)) * other
    out = own.clone()
    for i, (x0, y0, x1, y1) in enumerate(v.mix_box[pos, view]):
        out[i, :, y0:y1, x0:x1] = other[i, :, y0:y1, x0:x1]
    return out


@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
def test_mixed_views_replay_the_pixels_the_teacher_scored(mix, synthetic_folder, tmp_path, monkeypatch):
    spec = dict(
        allow_untrained=True,
        dataset=f"imagefolder:{synthetic_folder}",
        teacher="cifar_resnet8",
        batch_size=8,
        progress=False,
    )
    out = tmp_path / "store"
    cache.run(CacheConfig(out=str(out), views=2, mix=mix, logits_dtype="float32", **spec))
    assert verify(out) == []
    v = Store.open(out).train.views
    assert v.mix == mix and v.mix_partner.shape == (30, 2) and (v.mix_box is not None) == (mix == "cutmix")
    seen_inputs, seen_ids, mixes = [], [], []
    real_build, real_loss = train_build.build_model, batch_module.student_loss

    def recording_build(*args, **kwargs):
        model, meta = real_build(*args, **kwargs)
        model.register_forward_pre_hook(lambda m, a: seen_inputs.append(a[0].detach().clone()) if m.training else None)
        return model, meta

    monkeypatch.setattr(train_build, "build_model", recording_build)
    monkeypatch.setattr(batch_module, "student_loss", lambda *a: mixes.append(a[6]) or real_loss(*a))
    summary = train.run(
        TrainConfig(
            out=str(tmp_path / "run"),
            store=str(out),
            variant="kd",
            epochs=1,
            batch_size=16,
            seed=5,
            workers=1,
            progress=False,
            agreement_samples=0,
        ),
        hook=lambda e, b, ids, lam: seen_ids.append(ids),
    )
    assert summary["views"]["mix"] == mix
    store = Store.open(out)
    pos = store.train.positions(seen_ids[0])
    view = choose(5, 0, 30, 2)[pos]
    torch.testing.assert_close(seen_inputs[0], _rebuild(out, v, pos, view), rtol=0, atol=1e-6)
    teacher = load_teacher(CacheConfig(**spec).teacher_spec, 3, 16).model.eval()
    with torch.inference_mode():
        live = teacher(seen_inputs[0]).numpy()
    np.testing.assert_allclose(
        live, v.logits[pos, view], rtol=1e-4, atol=1e-4
    )  # the teacher scored exactly these pixels
    partner_labels, weight = mixes[0]
    np.testing.assert_array_equal(partner_labels.numpy(), store.train.labels[v.mix_partner[pos, view]])
    np.testing.assert_allclose(weight.numpy(), v.mix_lam[pos, view])
    with pytest.raises(KdstoreError, match="--mix"):
        CacheConfig(out=str(tmp_path / "x"), mix=mix, **spec).validate()  # no --views


def test_add_views_extends_mixed_views_byte_identically(synthetic_folder, tmp_path, monkeypatch):
    # view 1 is scored with (mixed) view 0, whose stored result is kept
    monkeypatch.setattr(inference, "VIEWS_PER_FORWARD", {"cpu": 2})
    spec = dict(allow_untrained=True, teacher="cifar_resnet8", batch_size=8, progress=False)
    data = f"imagefolder:{synthetic_folder}"
    cache.run(CacheConfig(dataset=data, out=str(tmp_path / "grown"), views=1, mix="cutmix", **spec))
    cache.run(CacheConfig(dataset=data, out=str(tmp_path / "fresh"), views=3, mix="cutmix", **spec))
    cache.run(CacheConfig(extend=str(tmp_path / "grown"), views=3, **spec))
    assert (tmp_path / "grown" / "teacher.h5").read_bytes() == (tmp_path / "fresh" / "teacher.h5").read_bytes()
