"""Sampled-logit views (`cache --sample k`): draws that follow the teacher's softmax and do not
depend on the batch, a KD target whose gradient is unbiased, replay in train, and the fidelity
table `inspect` prints."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from kdstore.cache import write as cache
from kdstore.cache.config import CacheConfig
from kdstore.cli.main import cli
from kdstore.errors import KdstoreError
from kdstore.loader import batch as batch_module
from kdstore.loader.prepare import choose
from kdstore.method.losses import kd_per_sample
from kdstore.method.sparse_targets import (
    bytes_per_view,
    draw_uniforms,
    fidelity,
    sample_classes,
    sampled_target,
    topk_compress,
    topk_expand,
)
from kdstore.passes import inference
from kdstore.store.format import Store
from kdstore.store.quantized import stored_dtype
from kdstore.store.verification import verify
from kdstore.train import loop as train
from kdstore.train.config import TrainConfig


def test_draws_follow_the_softmax_at_tau_and_ignore_the_batch():
    logits = torch.tensor([[[2.0, 0.0, -1.0, 1.0]]])  # one sample, one view, 4 classes
    tau = 2.0
    p = torch.softmax(logits[0, 0] / tau, 0).numpy()
    ids = sample_classes(logits, draw_uniforms(7, np.array([5]), np.array([0]), 200_000), tau)
    freq = np.bincount(ids.numpy().ravel(), minlength=4) / 200_000
    np.testing.assert_allclose(freq, p, atol=4e-3)  # 200k draws: standard error < 1.2e-3
    assert ids.dtype == torch.int16 and bool((ids[0, 0, 1:] >= ids[0, 0, :-1]).all())  # sorted
    # A draw is a function of (seed, position, view, draw index), not of the batch it is in.
    batch = torch.randn(6, 2, 4)
    whole = sample_classes(batch, draw_uniforms(3, np.arange(10, 16), np.array([0, 1]), 5), 4.0)
    part = sample_classes(batch[2:4], draw_uniforms(3, np.arange(12, 14), np.array([0, 1]), 5), 4.0)
    assert torch.equal(whole[2:4], part)
    later = sample_classes(batch[:, 1:], draw_uniforms(3, np.arange(10, 16), np.array([1]), 5), 4.0)
    assert torch.equal(whole[:, 1:], later)  # view 1 drawn alone (as --extend would) is the same


def test_sampled_target_is_the_empirical_distribution_and_its_kd_gradient_is_unbiased():
    ids = torch.tensor([[0, 0, 2, 3]])
    target = sampled_target(ids, 5, 4.0)
    np.testing.assert_allclose(torch.softmax(target / 4.0, 1).numpy(), [[0.5, 0.0, 0.25, 0.25, 0.0]], atol=1e-7)
    # E over draws of the gradient of tau^2 KL(q || p_S) equals the gradient of tau^2 KL(p_T || p_S).
    torch.manual_seed(0)
    teacher, student = torch.randn(1, 6) * 2, torch.randn(1, 6, requires_grad=True)
    tau, k, rounds = 3.0, 4, 20_000
    full = torch.autograd.grad(kd_per_sample(student, teacher, tau).sum(), student)[0]
    draws = sample_classes(
        teacher.expand(rounds, 6)[:, None], draw_uniforms(1, np.arange(rounds), np.array([0]), k), tau
    )[:, 0]
    many = student.expand(rounds, 6)
    sampled = torch.autograd.grad(kd_per_sample(many, sampled_target(draws, 6, tau), tau).sum() / rounds, student)[0]
    np.testing.assert_allclose(sampled.numpy(), full.numpy(), atol=0.02)
    # Top-k with a uniform fill is biased: the same check fails by far more than the tolerance.
    top = topk_compress(teacher, 2)
    biased = torch.autograd.grad(
        kd_per_sample(student, topk_expand(top["topk_values"], top["topk_indices"], top["fill"], 6), tau).sum(), student
    )[0]
    assert (biased - full).abs().max() > 0.05


def test_fidelity_table_bytes_and_bias():
    rows = fidelity(np.random.default_rng(0).normal(0, 3, (500, 100)).astype(np.float32), tau=4.0, topk=10, sample=32)
    by = {r["storage"].split()[-1] if r["storage"].startswith("full") else r["storage"].split()[0]: r for r in rows}
    assert (
        by["float32"]["bytes"] == 400
        and by["float16"]["bytes"] == 200
        and by["int8"]["bytes"] == 108 == bytes_per_view("logits", 0, 100, "int8")
        and by["top-10"]["bytes"] == 64 == bytes_per_view("topk", 10, 100)
        and by["32"]["bytes"] == 64
    )
    assert by["float32"]["bias"] == by["float32"]["kl_view"] == 0.0 and by["32"]["bias"] == 0.0
    assert 0 < by["float16"]["kl_view"] < by["int8"]["kl_view"] < 1e-3 < by["top-10"]["kl_view"]
    assert by["top-10"]["bias"] > 0 and by["32"]["kl_view"] > 0


@pytest.fixture(scope="module")
def sampled_store(tmp_path_factory, synthetic_folder):
    out = tmp_path_factory.mktemp("sampled") / "store"
    cache.run(
        CacheConfig(
            allow_untrained=True,
            dataset=f"imagefolder:{synthetic_folder}",
            teacher="cifar_resnet8",
            out=str(out),
            batch_size=8,
            views=3,
            sample=6,
            sample_tau=2.0,
            progress=False,
        )
    )
    return out


@pytest.mark.slow
def test_a_sampled_store_replays_its_ids_as_targets(sampled_store, tmp_path, monkeypatch):
    v = Store.open(sampled_store).train.views
    assert (
        v.storage == "sample"
        and v.sample == 6
        and v.sample_tau == 2.0
        and v.sample_ids.shape == (30, 3, 6)
        and v.logits is None
    )
    assert verify(sampled_store) == []
    with pytest.raises(KdstoreError, match="--tau 4.0 differs from the temperature the store's views were sampled at"):
        train.run(
            TrainConfig(out=str(tmp_path / "bad"), store=str(sampled_store), epochs=1, batch_size=8, progress=False)
        )
    targets, seen = [], []
    real_loss = batch_module.student_loss
    monkeypatch.setattr(
        batch_module, "student_loss", lambda s, y, t, *a: targets.append(t.clone()) or real_loss(s, y, t, *a)
    )
    summary = train.run(
        TrainConfig(
            out=str(tmp_path / "run"),
            store=str(sampled_store),
            variant="kd",
            tau=2.0,
            epochs=1,
            batch_size=8,
            workers=1,
            progress=False,
        ),
        hook=lambda e, b, ids, lam: seen.append(ids),
    )
    assert summary["views"]["sample"] == 6 and len(targets) == len(seen) == 4
    t = Store.open(sampled_store).train
    chosen = choose(0, 0, 30, 3)
    for ids, target in zip(seen, targets):
        pos = t.positions(ids)
        assert torch.equal(target, sampled_target(torch.from_numpy(v.sample_ids[pos, chosen[pos]]), 3, 2.0))
    out = CliRunner().invoke(cli, ["inspect", str(sampled_store)]).output
    assert "6 sampled class ids per view" in out and "sampled ids" in out and "top-" in out and "bytes / view" in out


def test_sample_options_are_checked(tmp_path, synthetic_folder):
    base = dict(
        allow_untrained=True,
        dataset=f"imagefolder:{synthetic_folder}",
        teacher="cifar_resnet8",
        out=str(tmp_path / "s"),
    )
    for kw in ({"sample": 4}, {"views": 2, "sample": 4, "topk": 2}, {"views": 2, "sample": 4, "sample_tau": 0.0}):
        with pytest.raises(KdstoreError, match="--sample"):
            CacheConfig(**base, **kw).validate()


@pytest.mark.slow
# full logits take the path of top-k's indices and fill in --extend (the same concatenation of
# stored arrays); int8 top-k values join their codes, scales and offsets alike
@pytest.mark.parametrize(
    "storage",
    [{"topk": 2, "logits_dtype": "int8"}, {"sample": 5, "sample_tau": 2.0}],
    ids=["int8-topk", "sample"],
)
def test_add_views_is_byte_identical_to_a_fresh_cache_with_more_views(storage, tmp_path, synthetic_folder, monkeypatch):
    """Views go through the teacher 2 to a forward here, so growing 3 views to 5 rescored view 2
    with view 3 (dropping the stored one) and view 4 alone, as the fresh cache did."""
    monkeypatch.setattr(inference, "VIEWS_PER_FORWARD", {"cpu": 2})
    base = dict(allow_untrained=True, teacher="cifar_resnet8", batch_size=8, progress=False)
    data = f"imagefolder:{synthetic_folder}"
    cache.run(CacheConfig(dataset=data, out=str(tmp_path / "grown"), views=3, **base, **storage))
    cache.run(CacheConfig(dataset=data, out=str(tmp_path / "fresh"), views=5, **base, **storage))
    betons = {n: (tmp_path / "grown" / n).stat().st_ino for n in ("train.beton", "val.beton")}
    cache.run(CacheConfig(extend=str(tmp_path / "grown"), views=5, **base))
    assert (tmp_path / "grown" / "teacher.h5").read_bytes() == (tmp_path / "fresh" / "teacher.h5").read_bytes()
    assert {n: (tmp_path / "grown" / n).stat().st_ino for n in betons} == betons  # hard-linked, not rewritten
    assert verify(tmp_path / "grown") == [] and Store.open(tmp_path / "grown").train.views.count == 5
    grown = Store.open(tmp_path / "grown")
    assert stored_dtype(grown.train.logits) == storage.get("logits_dtype", "float16")
    if "topk" in storage:
        assert stored_dtype(grown.train.views.topk_values) == "int8"
    assert not list(tmp_path.glob(".grown*"))  # no staging left behind


@pytest.mark.slow
def test_add_views_refuses_fewer_views_another_teacher_or_other_storage(tmp_path, synthetic_folder):
    base = dict(allow_untrained=True, teacher="cifar_resnet8", batch_size=8, progress=False)
    cache.run(CacheConfig(dataset=f"imagefolder:{synthetic_folder}", out=str(tmp_path / "s"), views=2, **base))
    before = (tmp_path / "s" / "teacher.h5").read_bytes()
    for kw, message in (
        ({"views": 2}, "already has 2 views"),
        ({"views": 3, "topk": 2}, "keeps the store's views as they are: --topk 2"),
        ({"views": 3, "teacher": "cifar_resnet20"}, "is not the store's"),
    ):
        with pytest.raises(KdstoreError, match=message):
            cache.run(CacheConfig(extend=str(tmp_path / "s"), **{**base, **kw}))
    with pytest.raises(KdstoreError, match="give --dataset .* or --extend"):
        CacheConfig(extend=str(tmp_path / "s"), dataset="digits", views=3, **base).validate()
    assert (tmp_path / "s" / "teacher.h5").read_bytes() == before
