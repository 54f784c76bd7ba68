"""Tests of facefuse/model/fusion.py: the fused model, its ablations and its loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from facefuse.errors import ConfigError
from facefuse.model import FusionConfig, FusionModel, FusionOutput

SMALL = dict(d_model=32, local_heads=2, global_heads=4, fusion_hidden=64, embedding_size=48)


def _maps(n: int = 3, ca: int = 512, cb: int = 512, seed: int = 0
          ) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, ca, 7, 7, generator=g), torch.randn(n, cb, 7, 7, generator=g)


@pytest.mark.parametrize("channels", [(512, 512), (128, 64)])
@pytest.mark.parametrize("window", [1, 3, 5, 7])
@pytest.mark.parametrize("branches", ["local", "global", "both"])
def test_shapes_for_every_branch_window_and_channel_layout(
        branches: str, window: int, channels: tuple[int, int]) -> None:
    cfg = FusionConfig(in_channels_a=channels[0], in_channels_b=channels[1], branches=branches,
                       local_window=window, num_classes=5, **SMALL)
    model = FusionModel(cfg)
    a, b = _maps(3, *channels)
    out = model(a, b, torch.tensor([0, 4, 2]))
    assert isinstance(out, FusionOutput)
    assert out.embedding.shape == out.z.shape == (3, 48)
    assert out.logits.shape == (3, 5)
    assert out.kl.shape == out.ce.shape == out.loss.shape == ()
    assert torch.isfinite(out.loss)
    assert (model.local_branch is not None) == (branches != "global")
    assert (model.global_branch is not None) == (branches != "local")
    assert model.embed(a, b).shape == (3, 48)


def test_default_config_runs_on_real_sized_fp16_maps() -> None:
    model = FusionModel(FusionConfig(num_classes=7))
    a, b = _maps(2)
    out = model(a.half(), b.half(), torch.tensor([1, 6]))  # the cache stores fp16
    assert out.embedding.dtype == torch.float32 and out.embedding.shape == (2, 512)


def test_dict_config_is_accepted() -> None:
    model = FusionModel({"in_channels": 128, "num_classes": 3, **SMALL})
    assert model.cfg.channels_b == 128


def test_loss_is_ce_plus_beta_kl_and_beta_zero_is_plain_ce() -> None:
    a, b = _maps(4)
    labels = torch.tensor([0, 1, 2, 1])
    torch.manual_seed(0)
    model = FusionModel(FusionConfig(num_classes=3, beta=0.0, **SMALL)).eval()
    out = model(a, b, labels)
    assert out.kl.item() > 0  # the KL is still measured ...
    assert torch.equal(out.loss, out.ce)  # ... but adds nothing
    plain = F.cross_entropy(model.head(out.z, labels), labels)
    assert torch.allclose(out.ce, plain)

    model.cfg.beta = 0.25  # same weights, beta changed
    out = model(a, b, labels)
    assert torch.allclose(out.loss, out.ce + 0.25 * out.kl)


def test_vib_off_is_deterministic_with_zero_kl() -> None:
    model = FusionModel(FusionConfig(vib=False, beta=3.0, num_classes=3, **SMALL)).train()
    a, b = _maps(2)
    out = model(a, b, torch.tensor([0, 2]))
    assert out.kl.item() == 0.0 and out.logvar is None
    assert torch.equal(out.z, out.embedding)
    assert torch.equal(out.loss, out.ce)


def test_eval_is_deterministic_and_uses_mu() -> None:
    model = FusionModel(FusionConfig(num_classes=3, dropout=0.1, **SMALL))
    a, b = _maps(4)
    model.train()
    out = model(a, b)
    assert not torch.equal(out.z, out.embedding)  # sampled in training
    model.eval()
    first, second = model(a, b), model(a, b)
    assert torch.equal(first.z, first.embedding)
    assert torch.equal(first.embedding, second.embedding)
    assert torch.allclose(model.embed(a, b), first.embedding)


def test_gradients_reach_both_branches_and_both_inputs() -> None:
    torch.manual_seed(0)
    model = FusionModel(FusionConfig(num_classes=4, **SMALL))
    a, b = _maps(4)
    a.requires_grad_(True)
    b.requires_grad_(True)
    model(a, b, torch.tensor([0, 1, 2, 3])).loss.backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None, name
    for branch in (model.local_branch, model.global_branch, model.tokens.proj[0],
                   model.tokens.proj[1], model.bottleneck.logvar):
        assert any(p.grad.abs().sum() > 0 for p in branch.parameters())


def test_window_one_local_branch_mixes_maps_only_at_the_same_position() -> None:
    torch.manual_seed(0)
    model = FusionModel(FusionConfig(branches="local", local_window=1, dw_kernel=1,
                                     **SMALL)).eval()
    seen: list[torch.Tensor] = []
    model.local_branch.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    a, b = _maps(2)
    p = 3 * 7 + 1
    model(a, b)
    b2 = b.clone()
    b2[:, :, 3, 1] += torch.randn(2, 512)
    model(a, b2)
    changed = (seen[1] - seen[0]).abs().amax(dim=(0, 2)) > 1e-6
    assert set(torch.nonzero(changed).flatten().tolist()) == {p, 49 + p}


def test_concat_baseline_has_no_attention_and_learns_through_every_input() -> None:
    model = FusionModel(FusionConfig(fusion="concat", num_classes=3, **SMALL))
    assert model.local_branch is None and model.global_branch is None
    a, b = _maps(2)
    a.requires_grad_(True)
    b.requires_grad_(True)
    out = model(a, b, torch.tensor([0, 2]))
    out.loss.backward()
    assert out.embedding.shape == (2, 48)
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


@pytest.mark.parametrize("inputs, channels", [("arcface", (128, 64)), ("adaface", (128, 64))])
@pytest.mark.parametrize("fusion", ["attention", "concat"])
def test_single_input_ablations_ignore_the_other_map(inputs: str, channels: tuple[int, int],
                                                     fusion: str) -> None:
    model = FusionModel(FusionConfig(inputs=inputs, fusion=fusion, in_channels_a=channels[0],
                                     in_channels_b=channels[1], num_classes=3, **SMALL)).eval()
    a, b = _maps(2, *channels)
    labels = torch.tensor([0, 1])
    if inputs == "arcface":
        out, again = model(a, None, labels), model(a, b * 100, labels)
    else:
        out, again = model(None, b, labels), model(a * 100, b, labels)
    assert out.embedding.shape == (2, 48)
    assert torch.equal(out.embedding, again.embedding)


def test_a_missing_or_misshapen_map_names_the_field() -> None:
    model = FusionModel(FusionConfig(in_channels_a=128, in_channels_b=64, **SMALL))
    a, b = _maps(2, 128, 64)
    with pytest.raises(ConfigError) as info:
        model(a, None)
    assert info.value.field == "inputs"
    with pytest.raises(ConfigError) as info:
        model(b.new_zeros(2, 64, 7, 7), b)
    assert info.value.field == "in_channels_a"
    with pytest.raises(ConfigError) as info:
        model(a, b[:, :, :5, :5])
    assert info.value.field == "in_channels_b"
    with pytest.raises(ConfigError) as info:
        model(a, b, torch.tensor([0, 1]))  # num_classes is 0: no classifier
    assert info.value.field == "num_classes"


@pytest.mark.parametrize("head", ["arcface", "cosface", "softmax"])
def test_heads_by_name_train_on_a_separable_toy_problem(head: str) -> None:
    torch.manual_seed(0)
    n_cls = 4
    centres = torch.randn(n_cls, 64, 7, 7)
    labels = torch.arange(32) % n_cls
    a = centres[labels] + 0.3 * torch.randn(32, 64, 7, 7)
    b = centres[labels].flip(1) + 0.3 * torch.randn(32, 64, 7, 7)
    model = FusionModel(FusionConfig(in_channels=64, num_classes=n_cls, head=head, scale=16.0,
                                     **SMALL))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        out = model(a, b, labels)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.ce.item())
    assert losses[-1] < 0.5 * losses[0]


def test_same_seed_same_model() -> None:
    a, b = _maps(2)
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        outs.append(FusionModel(FusionConfig(**SMALL)).eval().embed(a, b))
    assert torch.equal(outs[0], outs[1])


# ---------------------------------------------------------------------------------------------
# The local/global mixing weight (``mix``)
# ---------------------------------------------------------------------------------------------
def _concat_formula(model: FusionModel, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Returns the embedding as the model computed it before ``mix`` existed: plain concatenation."""
    x = model.tokens(model._maps(a, b))
    local = model.local_pool(model.local_branch(x))
    glob = model.global_branch(x).flatten(1)
    h = model.fusion_mlp(model.fusion_norm(torch.cat([local, glob], dim=1)))
    return model.bottleneck.mu(h)


@pytest.mark.parametrize("mix", [None, 0.5, "0.5", "learned"])
def test_default_equal_and_fresh_learned_mix_are_todays_concatenation_bit_for_bit(mix) -> None:
    over = {} if mix is None else {"mix": mix}
    torch.manual_seed(7)
    model = FusionModel(FusionConfig(num_classes=4, **SMALL, **over)).eval()
    a, b = _maps(5, seed=3)
    with torch.no_grad():
        assert torch.equal(model.embed(a, b), _concat_formula(model, a, b))
    if mix != "learned":
        # no new parameter: checkpoints of models trained before load unchanged
        torch.manual_seed(7)
        plain = FusionModel(FusionConfig(num_classes=4, **SMALL))
        assert model.state_dict().keys() == plain.state_dict().keys()
        assert model.mix_weight() is None
    else:
        assert model.mix_weight() == 0.5


def test_fixed_mix_scales_local_by_2w_and_global_by_2_minus_2w() -> None:
    torch.manual_seed(7)
    model = FusionModel(FusionConfig(num_classes=4, mix=0.25, **SMALL)).eval()
    a, b = _maps(5, seed=3)
    with torch.no_grad():
        x = model.tokens(model._maps(a, b))
        local = model.local_pool(model.local_branch(x)) * 0.5
        glob = model.global_branch(x).flatten(1) * 1.5
        h = model.fusion_mlp(model.fusion_norm(torch.cat([local, glob], dim=1)))
        assert torch.allclose(model.embed(a, b), model.bottleneck.mu(h), atol=1e-6)
        assert not torch.allclose(model.embed(a, b), _concat_formula(model, a, b), atol=1e-3)


def test_learned_mix_gets_a_gradient_and_training_moves_it() -> None:
    torch.manual_seed(0)
    model = FusionModel(FusionConfig(num_classes=4, mix="learned", **SMALL))
    a, b = _maps(8, seed=1)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    model(a, b, labels).loss.backward()
    assert model.mix_logit.grad is not None and model.mix_logit.grad.abs().item() > 0
    opt = torch.optim.SGD([model.mix_logit], lr=1.0)
    for _ in range(5):
        opt.zero_grad()
        model(a, b, labels).loss.backward()
        opt.step()
    assert model.mix_weight() != 0.5 and 0.0 < model.mix_weight() < 1.0


@pytest.mark.parametrize("over, message", [
    ({"mix": 1.5}, "mix must be in [0, 1]"),
    ({"mix": -0.1}, "mix must be in [0, 1]"),
    ({"mix": "learnt"}, "unknown mix 'learnt'"),
    ({"mix": True}, "must be a number or a word"),
    ({"mix": 0.25, "branches": "local"}, "weighs the local against the global branch"),
    ({"mix": "learned", "fusion": "concat"}, "weighs the local against the global branch"),
])
def test_bad_mix_names_the_field(over: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=r"\[mix\]") as exc:
        FusionConfig(**over)
    assert message in str(exc.value)


def test_single_branch_models_keep_the_default_mix() -> None:
    for branches in ("local", "global"):
        model = FusionModel(FusionConfig(branches=branches, **SMALL))
        assert model.mix_logit is None
