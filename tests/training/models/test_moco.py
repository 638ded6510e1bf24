"""The MoCo model, its geo head and loss, shuffle-BN and SimCLR's NT-Xent, on plain tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from geo_ssl.training.models.moco import GeoMoCo, MoCo, embedding_std, geo_moco_loss
from geo_ssl.training.models.shuffle_bn import SplitBatchNorm, SplitBatchNorm1d, shuffle_local
from geo_ssl.training.models.simclr import SimCLR, nt_xent


def tiny_moco(**kw) -> MoCo:
    torch.manual_seed(0)
    args = dict(arch="resnet18", dim=8, K=16, m=0.9, T=0.2, bn_splits=1, shuffle_bn=False)
    args.update(kw)
    return MoCo(**args)


def images(n: int = 4, seed: int = 1) -> torch.Tensor:
    """16 px is enough for a ResNet-18 forward (layer3/4 work on 1x1 maps) and keeps the tests fast."""
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_mlp_head_follows_backbone_width():
    model = tiny_moco()
    fc = model.encoder_q.fc
    assert [tuple(fc[0].weight.shape), tuple(fc[2].weight.shape)] == [(512, 512), (8, 512)]
    assert isinstance(fc[1], torch.nn.ReLU)
    r50 = MoCo("resnet50", dim=128, K=256)
    assert tuple(r50.encoder_q.fc[0].weight.shape) == (2048, 2048)
    assert tuple(r50.queue.shape) == (128, 256)


def test_queue_enqueue_and_pointer_wrap():
    model = tiny_moco(K=10)
    assert torch.allclose(model.queue.norm(dim=0), torch.ones(10))
    batches = [torch.full((4, 8), float(i + 1)) for i in range(3)]
    model._dequeue_and_enqueue(batches[0])
    assert int(model.queue_ptr) == 4
    assert torch.all(model.queue[:, :4] == 1)
    model._dequeue_and_enqueue(batches[1])
    assert int(model.queue_ptr) == 8
    model._dequeue_and_enqueue(batches[2])  # columns 8, 9, then wraps to 0, 1
    assert int(model.queue_ptr) == 2
    assert torch.all(model.queue[:, [8, 9, 0, 1]] == 3)
    assert torch.all(model.queue[:, 2:4] == 1) and torch.all(model.queue[:, 4:8] == 2)
    with pytest.raises(ValueError, match="larger than the queue"):
        model._dequeue_and_enqueue(torch.zeros(11, 8))


def test_key_encoder_gets_no_gradient_and_follows_momentum_rule():
    model = tiny_moco(m=0.9)
    q_before = [p.detach().clone() for p in model.encoder_q.parameters()]
    k_before = [p.detach().clone() for p in model.encoder_k.parameters()]
    # make the encoders differ first so the rule is visible
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(0.01)
    q_now = [p.detach().clone() for p in model.encoder_q.parameters()]
    logits, labels, _ = model(images(), images(seed=2))
    F.cross_entropy(logits, labels).backward()
    for p_k, k0, q0 in zip(model.encoder_k.parameters(), k_before, q_now, strict=True):
        assert not p_k.requires_grad and p_k.grad is None
        assert torch.allclose(p_k, 0.9 * k0 + 0.1 * q0, rtol=0, atol=1e-6)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder_q.parameters())
    assert not torch.equal(q_before[0], q_now[0])


def test_forward_loss_equals_hand_computation():
    torch.manual_seed(0)
    moco = tiny_moco(K=6, T=0.5)
    model = GeoMoCo(moco, n_clusters=3, moco_weight=0.7, geo_weight=1.3)
    im_q, im_k, geo = images(), images(seed=2), torch.tensor([0, 2, 1, 2])
    queue = moco.queue.clone()
    loss, stats = model(im_q, im_k, geo)

    with torch.no_grad():  # by hand, in float64, from the encoders as they are after the step
        q_proj = moco.encoder_q(im_q).double()
        q = q_proj / q_proj.norm(dim=1, keepdim=True)
        k = moco.encoder_k(im_k).double()
        k = k / k.norm(dim=1, keepdim=True)
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.double()], 1) / 0.5
        ce_moco = (torch.logsumexp(logits, 1) - logits[:, 0]).mean()
        lin = model.geo_head[1]
        g = q_proj.clamp(min=0) @ lin.weight.double().T + lin.bias.double()
        ce_geo = (torch.logsumexp(g, 1) - g[torch.arange(4), geo]).mean()
    assert math.isclose(float(stats["loss_moco"]), float(ce_moco), rel_tol=1e-4)
    assert math.isclose(float(stats["loss_geo"]), float(ce_geo), rel_tol=1e-4)
    assert math.isclose(loss.item(), 0.7 * float(ce_moco) + 1.3 * float(ce_geo), rel_tol=1e-4)
    # the batch's keys went into the queue after the logits were computed
    assert torch.allclose(moco.queue[:, :4].double(), k.T, atol=1e-5)


def test_geo_labels_reach_the_loss_and_the_encoder():
    moco = tiny_moco()
    model = GeoMoCo(moco, n_clusters=4, moco_weight=0.0)  # the loss is the geo term alone
    state = {k: v.clone() for k, v in model.state_dict().items()}
    im_q, im_k = images(), images(seed=2)
    losses = []
    for geo in (torch.tensor([3, 3, 0, 0]), torch.tensor([0, 1, 2, 3])):
        model.load_state_dict(state)
        model.zero_grad()
        loss, _ = model(im_q, im_k, geo)
        losses.append(loss.item())
    assert losses[0] != losses[1]
    loss.backward()
    assert moco.encoder_q.conv1.weight.grad.abs().sum() > 0  # the geo task trains the backbone
    assert GeoMoCo(moco, n_clusters=0).geo_head is None
    assert GeoMoCo(moco, n_clusters=5, geo_weight=0.0).geo_head is None


def test_geo_moco_loss_hand_values():
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.5, 1.5, -1.0]])
    labels = torch.zeros(2, dtype=torch.long)
    geo_logits = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    geo = torch.tensor([1, 1])
    loss, stats = geo_moco_loss(logits, labels, geo_logits, geo, moco_weight=1.0, geo_weight=2.0)
    ce1 = (
        -math.log(math.e**2 / (math.e**2 + 1 + math.e))
        - math.log(math.e**0.5 / (math.e**0.5 + math.e**1.5 + math.e**-1))
    ) / 2
    ce2 = (-math.log(math.e / (1 + math.e)) - math.log(1 / (math.e + 1))) / 2
    assert math.isclose(float(loss), ce1 + 2 * ce2, rel_tol=1e-6)
    assert float(stats["acc_moco"]) == 0.5 and float(stats["acc_geo"]) == 0.5
    loss, stats = geo_moco_loss(logits, labels)
    assert math.isclose(float(loss), ce1, rel_tol=1e-6) and "loss_geo" not in stats


def test_split_batchnorm_matches_per_split_batchnorm():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 5, 5) * 3 + 1
    split = SplitBatchNorm(3, num_splits=2)
    ref = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        split.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        ref.weight.copy_(split.weight)
    out = split(x)
    ref_a, ref_b = torch.nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    for r in (ref_a, ref_b):
        r.load_state_dict(ref.state_dict())
    expected = torch.empty_like(x)
    expected[0::2], expected[1::2] = ref_a(x[0::2]), ref_b(x[1::2])  # sub-batch i % 2
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(split.running_mean, (ref_a.running_mean + ref_b.running_mean) / 2, atol=1e-6)
    assert torch.allclose(split.running_var, (ref_a.running_var + ref_b.running_var) / 2, atol=1e-6)
    assert not torch.allclose(out, ref(x), atol=1e-3)  # statistics really differ from whole-batch BN
    split.eval()
    ref.load_state_dict(split.state_dict())
    ref.eval()
    assert torch.allclose(split(x), ref(x))
    with pytest.raises(ValueError, match="not divisible"):
        split.train()(torch.randn(5, 3, 2, 2))


def test_local_shuffle_is_undone():
    model = tiny_moco(shuffle_bn=True)
    im_k = images(8)
    torch.manual_seed(3)
    shuffled, unshuffle = shuffle_local(im_k)
    assert not torch.equal(shuffled, im_k) and torch.equal(shuffled[unshuffle], im_k)
    with torch.no_grad():
        plain = F.normalize(model.encoder_k(im_k), dim=1)
        via_shuffle = model._encode_keys(im_k)  # plain BN is order-invariant: same features, same order
    assert torch.allclose(plain, via_shuffle, atol=1e-5)


def test_split_bn_moco_trains_one_step_and_exports_plain_bn_keys():
    model = GeoMoCo(tiny_moco(bn_splits=2, shuffle_bn=True), n_clusters=3)
    loss, stats = model(images(4), images(4, seed=2), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert set(stats) >= {"loss", "loss_moco", "loss_geo", "acc_moco", "acc_geo", "q_std"}
    keys = set(model.moco.encoder_q.state_dict())
    assert "bn1.running_mean" in keys and "layer1.0.bn1.num_batches_tracked" in keys


def test_embedding_std_detects_collapse():
    healthy = torch.randn(512, 128)
    collapsed = torch.ones(512, 128) + 1e-6 * torch.randn(512, 128)
    assert abs(float(embedding_std(healthy)) - 1 / math.sqrt(128)) < 0.01
    assert float(embedding_std(collapsed)) < 1e-4


def test_nt_xent_hand_computation_and_simclr_step():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 0.1], [0.1, 1.0]])
    loss, acc = nt_xent(z1, z2, T=0.5)
    z = F.normalize(torch.cat([z1, z2]), dim=1).double()
    sim = z @ z.T / 0.5
    total = 0.0
    for i in range(4):
        pos = (i + 2) % 4
        others = [j for j in range(4) if j != i]
        total += -(sim[i, pos] - torch.logsumexp(sim[i, others], 0))
    assert math.isclose(float(loss), float(total / 4), rel_tol=1e-5)
    assert float(acc) == 1.0
    torch.manual_seed(0)
    model = SimCLR("resnet18", dim=8, T=0.2)
    views = torch.randn(4, 3, 3, 16, 16)
    loss, _ = model(views)
    loss.backward()
    assert math.isfinite(loss.item()) and model.encoder.conv1.weight.grad is not None
    with pytest.raises(ValueError, match="N>=2"):
        model(torch.randn(4, 1, 3, 16, 16))


def test_head_bn_centres_the_hidden_layer_and_uses_the_backbone_splits():
    plain, normed = tiny_moco(), tiny_moco(head_bn=True)
    assert isinstance(normed.encoder_q.fc[1], torch.nn.BatchNorm1d) and normed.encoder_q.fc[0].bias is None
    assert isinstance(plain.encoder_q.fc[1], torch.nn.ReLU)  # MoCo-v2's head unchanged by default
    hidden = {}
    normed.encoder_q.fc[1].register_forward_hook(lambda _m, _i, out: hidden.update(out=out))
    x = images(32, seed=4) * 0.5 + 1.0
    with torch.no_grad():
        std_plain = float(embedding_std(F.normalize(plain.encoder_q(x), dim=1)))
        std_normed = float(embedding_std(F.normalize(normed.encoder_q(x), dim=1)))
    assert torch.allclose(hidden["out"].mean(0), torch.zeros(512), atol=1e-4)  # centred per feature
    assert torch.allclose(hidden["out"].std(0, unbiased=False), torch.ones(512), atol=1e-2)
    assert std_normed > std_plain
    split = tiny_moco(head_bn=True, bn_splits=2, shuffle_bn=True)
    assert isinstance(split.encoder_q.fc[1], SplitBatchNorm1d) and split.encoder_q.fc[1].num_splits == 2
    model = GeoMoCo(split, n_clusters=3)
    loss, _ = model(images(4), images(4, seed=2), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert split.encoder_q.fc[1].weight.grad is not None
    head = {k: v.shape for k, v in split.encoder_q.fc.state_dict().items()}
    assert head == {k: v.shape for k, v in normed.encoder_q.fc.state_dict().items()}  # plain BN keys
    simclr = SimCLR("resnet18", dim=8, head_bn=True)
    assert isinstance(simclr.encoder.fc[1], torch.nn.BatchNorm1d)


def test_split_batchnorm1d_normalises_each_sub_batch():
    torch.manual_seed(0)
    x = torch.randn(8, 5) * 4 + 2
    out = SplitBatchNorm1d(5, num_splits=2)(x)
    for part in (out[0::2], out[1::2]):
        assert torch.allclose(part.mean(0), torch.zeros(5), atol=1e-5)
    assert out.shape == (8, 5)
