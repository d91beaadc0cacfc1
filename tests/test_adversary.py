import math

import pytest
import torch

from reform_engine.adversary import AdversarialReward, PromptNorm, kl_k3, rloo_advantages, rloo_loss
from reform_engine.reward_model import RewardModelSpec, build_reward_model
from reform_engine.rollouts import RolloutEngine, build_policy
from reform_engine.tiny import save_tiny_model


def test_rloo_advantage_is_the_reward_minus_the_mean_of_the_other_rollouts():
    adv = rloo_advantages(torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 0.0, 4.0]]))
    assert torch.allclose(adv, torch.tensor([[-8 / 3, -4 / 3, 0.0, 4.0], [-4 / 3, -4 / 3, -4 / 3, 4.0]]))
    assert torch.allclose(adv.sum(1), torch.zeros(2))
    with pytest.raises(ValueError, match=r"k >= 2 rollouts per prompt"):
        rloo_advantages(torch.ones(3, 1))


def test_rloo_loss_is_minus_the_mean_advantage_weighted_log_probability_with_constant_advantages():
    adv = torch.tensor([1.0, -1.0], requires_grad=True)
    seq_logp = torch.tensor([-2.0, -4.0], requires_grad=True)
    loss = rloo_loss(adv, seq_logp)
    assert loss.item() == -1.0  # -mean(1 * -2, -1 * -4)
    loss.backward()
    assert seq_logp.grad.tolist() == [-0.5, 0.5] and adv.grad is None


def shaping() -> AdversarialReward:
    return AdversarialReward(penalty_weight=2.0, kl_weight=0.1, threshold=1.0, below_cost=5.0, clip=(-2.0, 2.0))


def test_reward_shaping_on_literal_z_scores_returns_every_piece():
    z_t = torch.tensor([2.0, 3.0, 0.5, 4.0, float("nan")])
    z_p = torch.tensor([[1.0, 3.0], [-5.0, -3.0], [-1.0, -1.0], [0.0, 0.0], [0.0, 0.0]])
    ended = torch.tensor([True, True, True, False, True])
    kl = torch.tensor([1.0, 0.0, 2.0, 0.5, 0.0])
    parts = shaping()(z_t, z_p, ended, kl)
    # above T: 2 - 2*clip(2) ; 3 - 2*clip(-4 -> -2) ; below T: 0.5 - 5 ; no EOS: -5 ; unscorable: -5 ; all minus 0.1 * KL
    assert torch.allclose(parts.total, torch.tensor([-2.1, 7.0, -4.7, -5.05, -5.0]))
    assert parts.z_penalty.tolist() == [2.0, -4.0, -1.0, 0.0, 0.0]
    assert parts.above.tolist() == [True, True, False, False, False]
    assert parts.penalty.tolist() == [4.0, -4.0, 0.0, 0.0, 0.0]
    assert parts.shortfall.tolist() == [0.0, 0.0, 5.0, 0.0, 0.0]
    assert parts.no_eos.tolist() == [False, False, False, True, True]
    assert torch.allclose(parts.kl_cost, torch.tensor([0.1, 0.0, 0.2, 0.05, 0.0]))
    means = parts.means()
    assert means["target_z"] == 2.375 and means["above_threshold"] == pytest.approx(0.4) and means["no_eos_rate"] == pytest.approx(0.4)


def test_penalty_weight_zero_is_the_over_optimisation_baseline():
    base = AdversarialReward(0.0, 0.0, 1.0, 5.0)
    parts = base(torch.tensor([3.0, 0.0]), torch.tensor([[10.0, 10.0], [-9.0, -9.0]]), torch.tensor([True, True]), torch.zeros(2))
    assert parts.total.tolist() == [3.0, -5.0] and parts.penalty.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(penalty_weight=0.5), r"penalty_weight=0.5: use 0 \(the over-optimisation baseline\) or > 1"),
    (dict(kl_weight=-0.1), r"kl_weight=-0.1: the KL weight cannot be negative"),
    (dict(clip=(2.0, -2.0)), r"clip=\(2.0, -2.0\): the lower end must be below the upper"),
    (dict(below_cost=4.0), r"below_cost=4.0: make C > 0 and > penalty_weight \* clip_high = 4, .* e.g. 5"),
    (dict(threshold=float("inf")), r"threshold=inf: give a finite target z-score"),
])
def test_bad_reward_settings_are_refused_with_what_to_use(kwargs, message):
    settings = dict(penalty_weight=2.0, kl_weight=0.05, threshold=1.0, below_cost=5.0, clip=(-2.0, 2.0)) | kwargs
    with pytest.raises(ValueError, match=message):
        AdversarialReward(**settings)


def test_the_k3_kl_estimate_is_never_negative_and_sums_the_masked_tokens():
    g = torch.Generator().manual_seed(0)
    logp, logp0 = -10 * torch.rand(64, 48, generator=g), -10 * torch.rand(64, 48, generator=g)
    kl = kl_k3(logp, logp0, torch.ones(64, 48))
    assert (kl >= 0).all() and kl.min() > 0
    assert kl_k3(logp, logp, torch.ones(64, 48)).tolist() == [0.0] * 64
    half, quarter = math.log(0.5), math.log(0.25)
    one = kl_k3(torch.tensor([[half, half]]), torch.tensor([[quarter, 0.0]]), torch.tensor([[1.0, 0.0]]))
    assert one.item() == pytest.approx(0.5 - 1 - math.log(0.5))  # ratio pi0/pi = 0.5; the masked token adds nothing


def test_prompt_norm_z_scores_against_each_prompts_base_samples_with_the_sd_floored():
    # 3 prompts x 2 base samples; RM 0 (target) and RM 1 (penalty)
    raw = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 1.0], [4.0, 1.0], [5.0, 7.0], [5.0, 9.0]])
    idx = torch.tensor([0, 0, 1, 1, 2, 2])
    norm = PromptNorm.fit(raw, idx, 3, sd_floor=0.25)
    assert norm.mean.tolist() == [[2.0, 1.0], [2.0, 1.0], [5.0, 8.0]]
    root2 = math.sqrt(2)
    # target sds sqrt2, 2 sqrt2, 0 -> the last floored at 0.25 * median(sqrt2) ; penalty sds sqrt2, 0, sqrt2 -> 0.25 * sqrt2
    assert torch.allclose(norm.sd, torch.tensor([[root2, root2], [2 * root2, root2 / 4], [root2 / 4, root2]]))
    z = norm.z(torch.tensor([[6.0, 8.0]]), torch.tensor([2]))
    assert torch.allclose(z, torch.tensor([[1 / (root2 / 4), 0.0]]))
    assert torch.allclose(norm.u_mean, torch.zeros(3), atol=1e-6)  # base samples' z average 0 on every prompt
    with pytest.raises(ValueError, match="prompt 1 has 1 scorable base samples; z-scores need at least 2"):
        PromptNorm.fit(raw[:3], idx[:3], 2)


def test_seeded_rloo_steps_raise_the_reward_of_a_tiny_rm_that_rewards_one_token(tmp_path):
    """The RM's layers add nothing to the residual stream and its head reads the embedding of '!':
    its reward is how much the last token looks like '!'. 30 seeded RLOO steps on LoRA learn that."""
    torch.manual_seed(0)
    policy_dir = str(save_tiny_model(tmp_path / "policy", seed=1, ascii_only=True))
    policy, tok = build_policy(policy_dir, lora_layers=1, lora_r=4, lora_alpha=8, device="cpu", seed=0)
    bang = tok.convert_tokens_to_ids("!")
    rm = build_reward_model(RewardModelSpec(base_model=policy_dir, finetune="full", max_length=128), device="cpu").eval()
    with torch.no_grad():
        for layer in rm.backbone.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        rm.head.weight.copy_(rm.backbone.embed_tokens.weight[bang] / rm.backbone.embed_tokens.weight[bang].norm())
        rm.head.bias.zero_()
    engine = RolloutEngine(policy, tok, [rm], prompt_budget=64)
    prompts = [({"role": "user", "content": "Say it."},), ({"role": "user", "content": "Go on."},)]
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=3e-2)
    rewards, endings = [], []
    for _ in range(30):
        roll = engine.sample(prompts, 4, generator, max_new_tokens=3)
        r = engine.rm_rewards(roll)[:, 0]
        logp, _ = engine.logprobs(roll, grad=True)
        loss = rloo_loss(rloo_advantages(r.view(2, 4)).view(-1), logp.sum(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rewards.append(float(r.mean()))
        endings += [t.endswith("!") for t in roll.texts]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 1.0, (first, last)
    assert sum(endings[:40]) == 0 and sum(endings[-40:]) >= 8  # rollouts ending on "!": none in the first 5 steps, 10 of 40 in the last 5
