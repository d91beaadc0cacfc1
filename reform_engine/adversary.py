"""Adv-RM (Adversarial Training of Reward Models, arXiv 2504.06141): the reward an adversary policy
is trained on, and the RLOO update that trains it.

The adversary looks for responses the target RM scores high while penalty RMs (the same recipe on other
seeds and subsets) do not. Every RM's reward of a rollout y to prompt x is z-scored against the base
policy's N samples of x, so prompts and RMs are on one scale:

    Z_m = (r_m(x, y) - mean_m(x)) / max(sd_m(x), floor_m)     floor_m = sd_floor * median over prompts of sd_m
    Z_p = mean of Z_m over the penalty RMs
    r   = Z_t - lambda * clip(Z_p, lo, hi)    if Z_t > T
          Z_t - C                             otherwise
          -C                                  if y is incomplete: no EOS (nor a sentence end in the
                                              last tokens, when the attack counts those; rollouts.py)
    r  -= beta * sum_t k3_t                   k3_t = pi0/pi - 1 - log(pi0/pi) at each sampled token (>= 0)

Z_p is the mean, not the min, over the ensemble: with the min the adversary is paid for fooling the
single easiest penalty RM, a quirk of one model rather than a disagreement of the ensemble; the mean
has to move them all and is less noisy. k3 (Schulman's estimator) is never negative, unlike the plain
log-ratio, so a rollout cannot earn reward by a lucky negative KL sample.

RLOO (REINFORCE leave-one-out): k rollouts per prompt; each one's advantage is its reward minus the mean
reward of the other k - 1, and the loss is -mean(advantage * sum_t log pi(y_t | x, y<t)).

Hand-written rather than TRL's RLOOTrainer (not installed here): TRL samples with ``generate`` and runs
every RM and a separate reference model over whole sequences. Here pi0 is the policy with its adapter
off, and the frozen lower layers are computed once, while sampling, for the policy, pi0 and every RM
(rollouts.py), so a whole step (8 rollouts x 48 tokens, three RMs, pi0, one update) took 0.91x the time
of ``generate`` sampling the same rollouts on HH prompts, 1.14x on the short demo prompts
(benchmarks/bench_rloo_step.py, 1 thread); the update below is a few lines.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from .configs import refuse, setting


class RolloutReward(ABC):
    """A rule that turns the z-scores of N rollouts into their rewards, every piece kept for the log.
    In the spirit of decoding.CandidateScorer: one call, bad arguments refused at construction,
    inputs never changed in place."""

    @abstractmethod
    def __call__(self, z_target: torch.Tensor, z_penalties: torch.Tensor, complete: torch.Tensor,
                 kl: torch.Tensor) -> "RewardParts":
        """z_target (N,), z_penalties (N, M), complete (N,) bool (the response ended: rollouts.Rollouts.complete),
        kl (N,) summed per rollout -> RewardParts."""


@dataclass
class RewardParts:
    """Each (N,); total = where(valid, z_target - penalty - shortfall, -below_cost) - kl_cost."""

    total: torch.Tensor
    z_target: torch.Tensor
    z_penalty: torch.Tensor          # the ensemble's mean
    above: torch.Tensor              # bool: complete and Z_t > T
    penalty: torch.Tensor            # lambda * clip(Z_p) where above, else 0
    shortfall: torch.Tensor          # C where complete but Z_t <= T, else 0
    incomplete: torch.Tensor         # bool: cut off by the token limit (or unscorable): the reward is -C
    kl_cost: torch.Tensor            # beta * KL estimate

    def means(self) -> dict[str, float]:
        """Batch means for the per-step log (NaN z-scores of unscorable rollouts left out)."""
        def mean(x: torch.Tensor) -> float:
            x = x.float()
            x = x[torch.isfinite(x)]
            return float(x.mean()) if x.numel() else float("nan")
        return {"reward": mean(self.total), "target_z": mean(self.z_target), "penalty_z": mean(self.z_penalty),
                "disagreement": mean(self.z_target - self.z_penalty), "above_threshold": mean(self.above),
                "penalty_term": mean(self.penalty), "shortfall_term": mean(self.shortfall), "incomplete_rate": mean(self.incomplete),
                "kl_term": mean(self.kl_cost)}


class AdversarialReward(RolloutReward):
    """Adv-RM's shaped reward (module docstring). ``penalty_weight`` 0 is the paper's RM
    over-optimisation baseline: the target alone, thresholded."""

    def __init__(self, penalty_weight: float, kl_weight: float, threshold: float, below_cost: float,
                 clip: tuple[float, float] = (-2.0, 2.0)):
        lo, hi = clip
        if not (penalty_weight == 0 or penalty_weight > 1):
            raise ValueError(f"penalty_weight={penalty_weight}: use 0 (the over-optimisation baseline) or > 1, so that a "
                             f"response both RMs like more earns less (the paper's regime); 2.0 is the usual choice")
        if not kl_weight >= 0:
            raise ValueError(f"kl_weight={kl_weight}: the KL weight cannot be negative; use 0 to drop the KL term")
        if not lo < hi:
            raise ValueError(f"clip=({lo}, {hi}): the lower end must be below the upper, e.g. (-2.0, 2.0)")
        if not below_cost > penalty_weight * max(hi, 0.0) or not below_cost > 0:
            raise ValueError(f"below_cost={below_cost}: make C > 0 and > penalty_weight * clip_high = "
                             f"{penalty_weight * max(hi, 0.0):g}, so crossing the threshold always pays; "
                             f"e.g. {penalty_weight * max(hi, 0.0) + 1:g}")
        if not math.isfinite(threshold):
            raise ValueError(f"threshold={threshold}: give a finite target z-score, e.g. 1.0")
        self.penalty_weight, self.kl_weight, self.threshold, self.below_cost = penalty_weight, kl_weight, threshold, below_cost
        self.clip = (float(lo), float(hi))

    def __call__(self, z_target, z_penalties, complete, kl) -> RewardParts:
        if z_penalties.dim() != 2 or z_penalties.shape[0] != z_target.shape[0] or kl.shape != z_target.shape:
            raise ValueError(f"z_target {tuple(z_target.shape)}, z_penalties {tuple(z_penalties.shape)}, kl {tuple(kl.shape)}: "
                             f"pass (N,), (N, M) and (N,)")
        z_penalty = z_penalties.mean(-1)
        valid = complete.bool() & torch.isfinite(z_target) & torch.isfinite(z_penalty)
        above = valid & (z_target > self.threshold)
        zero = torch.zeros_like(z_target)
        penalty = torch.where(above, self.penalty_weight * z_penalty.clamp(*self.clip), zero)
        shortfall = torch.where(valid & ~above, torch.full_like(z_target, self.below_cost), zero)
        shaped = torch.where(valid, z_target - penalty - shortfall, torch.full_like(z_target, -self.below_cost))
        kl_cost = self.kl_weight * kl
        return RewardParts(shaped - kl_cost, z_target, z_penalty, above, penalty, shortfall, ~valid, kl_cost)

    def __repr__(self) -> str:
        return (f"AdversarialReward(penalty_weight={self.penalty_weight}, kl_weight={self.kl_weight}, "
                f"threshold={self.threshold}, below_cost={self.below_cost}, clip={self.clip})")


@dataclass
class PromptNorm:
    """Per-prompt statistics of the base policy's samples, the yardstick of every z-score.

    mean, sd: (P, M) per prompt and RM (target first); u_mean, u_sd: (P,) of the base samples'
    disagreement U = Z_t - Z_p. Standard deviations are floored at ``sd_floor`` times their median over
    prompts: a prompt whose base samples all score alike would otherwise turn noise into huge z-scores."""

    mean: torch.Tensor
    sd: torch.Tensor
    u_mean: torch.Tensor
    u_sd: torch.Tensor

    @classmethod
    def fit(cls, raw: torch.Tensor, prompt_index: torch.Tensor, n_prompts: int, sd_floor: float = 0.25) -> "PromptNorm":
        """raw (N, M) rewards of base samples, prompt_index (N,) -> the statistics; every prompt needs 2 finite samples."""
        if not 0 < sd_floor <= 1:
            raise ValueError(f"sd_floor={sd_floor}: use a share of the median sd in (0, 1], e.g. 0.25")
        M = raw.shape[1]
        mean, sd = torch.empty(n_prompts, M), torch.empty(n_prompts, M)
        for p in range(n_prompts):
            rows = raw[prompt_index == p]
            rows = rows[torch.isfinite(rows).all(-1)]
            if rows.shape[0] < 2:
                raise ValueError(f"prompt {p} has {rows.shape[0]} scorable base samples; z-scores need at least 2: "
                                 f"raise base_samples or max_new_tokens")
            mean[p], sd[p] = rows.mean(0), rows.std(0)
        sd = _floored(sd, sd_floor)
        z = (raw - mean[prompt_index]) / sd[prompt_index]
        u = z[:, 0] - z[:, 1:].mean(-1) if M > 1 else z[:, 0]
        u_mean, u_sd = torch.empty(n_prompts), torch.empty(n_prompts, 1)
        for p in range(n_prompts):
            x = u[(prompt_index == p) & torch.isfinite(u)]
            u_mean[p], u_sd[p, 0] = x.mean(), x.std()
        return cls(mean, sd, u_mean, _floored(u_sd, sd_floor)[:, 0])

    def z(self, raw: torch.Tensor, prompt_index: torch.Tensor) -> torch.Tensor:
        """(N, M) rewards -> (N, M) z-scores against each rollout's prompt."""
        return (raw - self.mean[prompt_index]) / self.sd[prompt_index]

    def u_z(self, u: torch.Tensor, prompt_index: torch.Tensor) -> torch.Tensor:
        """(N,) disagreements -> (N,) their z-scores among the base samples of the same prompt."""
        return (u - self.u_mean[prompt_index]) / self.u_sd[prompt_index]


def _floored(sd: torch.Tensor, share: float) -> torch.Tensor:
    """(P, M) -> each column floored at ``share`` times its median (and at 1e-6, for all-equal columns)."""
    return torch.maximum(sd, (share * sd.median(dim=0).values).clamp(min=1e-6)[None])


def kl_k3(logp: torch.Tensor, logp0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, T) log pi and log pi0 of the sampled tokens, (N, T) mask -> (N,) sum over tokens of
    k3 = pi0/pi - 1 - log(pi0/pi), an unbiased, never negative estimate of KL(pi || pi0)."""
    log_ratio = (logp0 - logp).float()
    k3 = (torch.expm1(log_ratio) - log_ratio).clamp(min=0)  # x - 1 - log x >= 0; the clamp only absorbs rounding
    return (k3 * mask).sum(-1)


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """(G, k) rewards, one row per prompt -> (G, k) advantages: each reward minus the mean of the other k - 1."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards {tuple(rewards.shape)}: pass (G, k) with k >= 2 rollouts per prompt "
                         f"(leave-one-out needs another rollout to compare with)")
    k = rewards.shape[1]
    return rewards - (rewards.sum(1, keepdim=True) - rewards) / (k - 1)


def rloo_loss(advantages: torch.Tensor, seq_logp: torch.Tensor) -> torch.Tensor:
    """(N,) advantages (treated as constants), (N,) sum over response tokens of log pi -> the scalar
    REINFORCE loss -mean(advantage * log pi(y | x))."""
    return -(advantages.detach() * seq_logp).mean()



@dataclass
class AdversarialRewardConfig:
    """The attack's reward (the module docstring's r) and the base samples its z-scores stand on."""

    penalty_weight: float = setting(2.0, "lambda > 1: a response the penalty RMs like as much as the target earns less; "
                                         "0 = the over-optimisation baseline")
    kl_weight: float = setting(0.05, "beta: keeps the adversary near pi0 so its text stays readable (TRL's RLOO default)")
    threshold: float = setting(1.0, "T, in target z: beat ~84% of the base samples before the disagreement counts")
    below_cost: float = setting(5.0, "C: the cost below T and without EOS; above lambda * clip_high (4), so crossing T "
                                     "always pays")
    clip_low: float = setting(-2.0, "pushing the penalty RMs below -2 sd earns nothing more (no prize for gibberish)")
    clip_high: float = setting(2.0, "bounds the penalty, so one outlier does not swamp its group's advantages")
    sd_floor: float = setting(0.25, "per-prompt sd >= this share of the median sd: flat prompts do not blow up z")
    base_samples: int = setting(8, "N samples of pi0 per prompt for the mean and sd (8: sd within ~25%)")

    def __post_init__(self):
        refuse(self, [(self.base_samples >= 2, "base_samples must be >= 2: an sd needs two samples"),
                       (0 < self.sd_floor <= 1, "sd_floor must be a share of the median sd in (0, 1]")])
        self.build()  # refuses a bad lambda, beta, T, C or clip range now, not in the job

    def build(self) -> AdversarialReward:
        return AdversarialReward(self.penalty_weight, self.kl_weight, self.threshold, self.below_cost, (self.clip_low, self.clip_high))


@dataclass
class RLOOConfig:
    """How the adversary is trained: RLOO groups, steps, the optimiser, the checkpoints."""

    group_size: int = setting(4, "k rollouts per prompt (the paper's 4)")
    prompts_per_step: int = setting(2, "prompts per step: 2 x 4 = 8 rollouts")
    steps: int = setting(100, "RLOO updates; every prompt is drawn ~6 times at the defaults")
    lr: float = setting(1e-4, "LoRA's usual rate; RL on a 135M model diverges well above 1e-3")
    max_grad_norm: float = setting(1.0, "gradient clipping: one group of outlier rewards cannot throw the adapter far")
    save_every: int = setting(0, "steps between adapter checkpoints; 0 = at the end only")

    def __post_init__(self):
        refuse(self, [(self.group_size >= 2, "group_size must be >= 2: leave-one-out needs another rollout of the prompt"),
                       (self.prompts_per_step >= 1, "prompts_per_step must be >= 1"),
                       (self.steps >= 1, "steps must be >= 1"),
                       (self.lr > 0, "lr must be > 0"),
                       (self.max_grad_norm > 0, "max_grad_norm must be > 0"),
                       (self.save_every >= 0, "save_every must be >= 0")])
