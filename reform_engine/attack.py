"""The Adv-RM attack job: train an adversary policy against a target RM and keep what it finds.

    python -m reform_engine attack --run-dir D --target-rm T --penalty-rms P1,P2 [--judge-rm J] ...

Stages, in the run directory (runs.py) beside config/status/log/metrics:
1. Normalisation: ``reward.base_samples`` samples of pi0 per prompt, scored by the target and penalty RMs,
   give every prompt's mean and sd (adversary.PromptNorm).
2. RLOO steps (adversary.py); each appends its metrics to ``steps.jsonl`` as it ends, so a page can
   draw the curves live; ``checkpoint/`` holds the LoRA adapter (at the end, or every ``rloo.save_every``).
   After the calibration and after every step, ``rl_state.pt`` holds the whole state: the adapter,
   the optimiser, the sampler's generator, the normalisation and the rollouts kept so far. A rerun of the same
   config in the same directory, after a kill or a session's end, goes on from the last finished step
   and gives the same steps as a run never stopped (tests/test_attack.py); the file goes when the job ends.
3. ``keep.fresh_samples`` per prompt from the final policy and from pi0: the pass rates of both under the
   same filter, on the same prompts.
4. Keeping (confirm.select_kept) among the rollouts of the last ``keep.keep_last`` share of the steps and
   the fresh samples; each kept sample is confirmed (judge RM, rules) and written to ``variants.jsonl``
   as a variant of direction "adv-rm": the pair (y+ preferred over the sample), y+ being the dataset's
   chosen response. The store ingests that file when the job ends, so they join the Curation queue.
5. ``samples.jsonl``: every fresh sample (of the final policy and of pi0), scored from its text by the
   target and the judge against y+ and checked by the rules (judging.py): the rate of confirmed
   failures among what the attack produces, the success criterion it shares with REFORM (compare.py).

A response is complete when it ends with EOS or, with ``response.sentence_window`` > 0, at a sentence end in
the last ``response.sentence_window`` tokens of its budget (rollouts.py). SmolLM2 on HH prompts rarely says
EOS within 48 tokens, so with EOS alone nearly every rollout earns -C and the advantages carry no
signal; the window keeps the paper's rule (a cut-off text is no response) while accepting an answer
that closes a sentence near the limit (benchmarks/RESULTS.md: the completion rates measured).
"""
from __future__ import annotations

import gc
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from .adversary import AdversarialRewardConfig, PromptNorm, RLOOConfig, kl_k3, rloo_advantages, rloo_loss
from .configs import nested, refuse, required, setting
from .confirm import Candidate, ConfirmConfig, KeepConfig, Rule, RuleContext, check_rules, confirmation, passes
from .data import DEMO_PATH, DataError, PreferencePair, load_preferences, parse_rows, select_rows, write_jsonl
from .judging import SAMPLES_FILE, duel_scores, duels, judge_candidates
from .models import DEFAULT_MODEL
from .resume import Snapshot
from .rollouts import AdapterConfig, ResponseConfig
from .runs import RunDir, atomic_directory, job
from .runtime import Runtime, seed_everything

STEPS_FILE = "steps.jsonl"
KEPT_FILE = "variants.jsonl"      # the name the store's ingestion reads (jobs.ingest_results)
SNAPSHOT_FILE = "rl_state.pt"     # the state after the last finished RLOO step, while the job has not ended (resume.py)
SOURCE = "adv-rm"                 # the variants' direction in the store: the pair (y+, sample), as "raise"


@dataclass
class AttackConfig:
    # models
    target_rm: str = required("the RM under attack: a train-rm checkpoint directory")
    penalty_rms: str = required(">= 2 checkpoints, comma-separated: the target's recipe on other seeds or subsets")
    judge_rm: str = setting("", "confirms success, never in the reward; '' = only the rules confirm")
    policy: str = setting(DEFAULT_MODEL, "the adversary starts as this model (pi0); LoRA is trained on its top layers")
    # prompts
    data: str = setting(str(DEMO_PATH), "preference data: its prompts are attacked, its chosen responses are y+")
    rows: str = setting("", "'a:b' source rows ('' = all)")
    prompts: int = setting(32, "the first this many pairs of those rows")
    skip_invalid: bool = setting(True, "invalid rows are skipped and counted, not fatal")
    max_prompt_tokens: int = setting(256, "prompts are cut from the left beyond this (and to fit every RM's max_length)")
    # r = Z_t - lambda * clip(Z_p) if Z_t > T else Z_t - C; no EOS: -C; minus beta * KL (adversary.py)
    reward: AdversarialRewardConfig = nested(AdversarialRewardConfig, "the adversary's reward (lambda, beta, T, C, clip) "
                                             "and the base samples its z-scores stand on")
    response: ResponseConfig = nested(ResponseConfig, "every sampled response's length and what ends it (base, RL, fresh)")
    rloo: RLOOConfig = nested(RLOOConfig, "RLOO training: group size, prompts per step, steps, optimiser, checkpoints")
    adapter: AdapterConfig = nested(AdapterConfig, "the LoRA adapter the adversary trains on the policy's top layers")
    keep: KeepConfig = nested(KeepConfig, "which samples are candidates, and the filter and caps that keep them")
    confirm: ConfirmConfig = nested(ConfirmConfig, "the rules that confirm a sample bad without a human, and their thresholds")
    runtime: Runtime = nested(Runtime, "device, dtype, threads, seed (pi0's samples, RLOO, prompt order), remote-code leave")
    # these groups were the job's own fields until they were nested: a stored flat config (a job row,
    # a run's config.json) still loads, each old key put into its group (configs.config_from_dict)
    MOVED_INTO: ClassVar[tuple[str, ...]] = ("reward", "response", "rloo", "adapter", "keep")

    def __post_init__(self):
        penalties = self.penalty_list()
        checks = [
            (bool(self.target_rm.strip()), "target_rm is empty: give the checkpoint of the RM to attack"),
            (len(penalties) >= 2 and len(set(penalties)) == len(penalties),
             f"penalty_rms={self.penalty_rms!r}: give at least 2 different checkpoints, comma-separated (train them "
             "with train-rm on other seeds or train_sample subsets)"),
            (self.target_rm.strip() not in penalties, "the target RM is among the penalty RMs: a model cannot disagree with "
             "itself; give other checkpoints"),
            (not self.judge_rm.strip() or self.judge_rm.strip() not in penalties + [self.target_rm.strip()],
             "the judge RM is also in the reward: give a judge trained apart, or '' to confirm by the rules alone"),
            (self.prompts >= 1, "prompts must be >= 1"),
            (self.max_prompt_tokens >= 4, "max_prompt_tokens must be >= 4"),
        ]
        refuse(self, checks)
        parse_rows(self.rows)

    def rules(self) -> tuple[Rule, ...]:
        return self.confirm.build()

    def penalty_list(self) -> list[str]:
        return [p.strip() for p in self.penalty_rms.split(",") if p.strip()]


@dataclass
class AttackResult:
    variants_path: str                      # the kept samples with everything about them (JSONL)
    steps_path: str                         # one line of metrics per RLOO step (JSONL)
    adapter: str                            # the final LoRA adapter (checkpoint/)
    steps: int
    prompts: int
    kept: int
    confirmed: int
    pass_rate: float                        # fresh samples of the final policy passing the keep filter
    base_pass_rate: float                   # fresh samples of pi0, same prompts, same filter
    rollout_pass_rate: float                # RL rollouts of the keep window passing it
    confirmed_rate: float                   # confirmed / kept
    rules_fired: dict = field(default_factory=dict)   # rule -> how many kept samples it flags
    base_perplexity: float = float("nan")   # median perplexity under pi0 of the base samples (the rules' yardstick)
    success_rate: float = float("nan")      # fresh samples of the final policy the target prefers to y+ and that are
                                            # confirmed bad (samples.jsonl)
    base_success_rate: float = float("nan")  # the same for pi0's fresh samples
    seconds: float = 0.0
    seconds_per_step: float = 0.0
    cpu_seconds: float = 0.0                # CPU time of the job's process (all its threads), RL included
    process_peak_rss_gb: float = float("nan")  # the peak resident memory of the process this ran in, over its life so far:
                                               # the attack's own peak when it ran as its own job


def read_steps(run_dir: str | Path) -> list[dict]:
    """The per-step metrics written so far (a line being written is left for the next read)."""
    rows = []
    try:
        with open(Path(run_dir) / STEPS_FILE, encoding="utf-8") as fh:
            for line in fh:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break
    except FileNotFoundError:
        pass
    return rows


def read_kept(run_dir: str | Path) -> list[dict]:
    """The kept samples of a finished attack (records of variants.jsonl), [] before it ends."""
    path = Path(run_dir) / KEPT_FILE
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def companion_configs(target_rm: str, penalties: int, judge: bool, *, data: str, rows: str, share: float = 0.8,
                      runtime: Runtime | None = None) -> list[tuple[str, "TrainRewardConfig"]]:
    """train-rm configs for the RMs an attack on ``target_rm`` lacks -> [(role, config)]: ``penalties``
    penalty RMs, then the judge if asked. Each is the target's recipe (its run's config.json; else its
    spec trained on ``data`` rows ``rows``) on another seed and a seeded ``share`` of its training pairs;
    the last penalty is head-only, so the ensemble does not share one way of being wrong. ``runtime``:
    where they train (its seed is replaced by each one's own)."""
    import dataclasses

    from .reward_model import read_spec
    from .retrain import base_training_config
    from .training import TrainRewardConfig

    recipe = base_training_config(target_rm)
    if recipe is None:
        recipe = TrainRewardConfig(data=data, train_rows=rows, model=dataclasses.replace(read_spec(target_rm), trust_remote_code=False))
    n = len(select_rows(load_preferences(recipe.data, skip_invalid=recipe.skip_invalid).pairs, recipe.train_rows))
    common = dict(train_sample=max(1, round(share * n)), eval_data="", eval_rows="", augment_data="", init_from="", save_every=0)
    seed = recipe.runtime.seed
    roles = [(f"penalty {i + 1}", seed + 1 + i, "head" if i == penalties - 1 else recipe.model.finetune) for i in range(penalties)]
    roles += [("judge", seed + 101, recipe.model.finetune)] if judge else []
    placement = runtime or Runtime()
    return [(role, dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, finetune=finetune),
                                       runtime=dataclasses.replace(placement, seed=role_seed), **common))
            for role, role_seed, finetune in roles]


# --------------------------------------------------------------------------- the job

def _candidates(roll, raw, logp0, prompt_index, norm: PromptNorm, origin: str) -> list[Candidate]:
    z = norm.z(raw, prompt_index)
    z_pen = z[:, 1:].mean(-1)
    u = z[:, 0] - z_pen
    u_z = norm.u_z(u, prompt_index)
    ppl = torch.exp(-logp0.sum(-1) / roll.lengths.clamp(min=1))
    return [Candidate(int(prompt_index[n]), roll.texts[n], bool(roll.complete[n]), float(z[n, 0]), float(z_pen[n]), float(u[n]),
                      float(u_z[n]), float(ppl[n]), origin, z[n, 1:].tolist()) for n in range(len(roll.texts))]


def _sample_scored(engine, prompts, ids: list[int], k: int, generator, config: AttackConfig, adapter: bool):
    """k samples of each prompt in ``ids`` -> (rollouts, (N, M) rewards, (N, T) log pi0, (N,) prompt index)."""
    roll = engine.sample([prompts[i] for i in ids], k, generator, adapter=adapter, **asdict(config.response))
    logp0, _ = engine.logprobs(roll, adapter=False)
    return roll, engine.rm_rewards(roll), logp0, torch.tensor(ids)[roll.owner.cpu()]


def _chunks(n_prompts: int, per_call: int) -> list[list[int]]:
    return [list(range(i, min(n_prompts, i + per_call))) for i in range(0, n_prompts, per_call)]


def _record(c: Candidate, pair: PreferencePair, target_scores, judge_scores, trace, base_ppl: float,
            rules: tuple[Rule, ...]) -> dict:
    """One kept sample as a store variant (direction "adv-rm") with its Adv-RM evidence."""
    r_chosen, r_rejected = target_scores
    flags = check_rules(c.text, RuleContext(pair.prompt[-1]["content"], c.perplexity, base_ppl), rules)
    judge_chosen, judge_sample = judge_scores
    by = confirmation(judge_sample, judge_chosen, flags)
    r_variant = trace.final if trace is not None else float("nan")
    steps = [] if trace is None else [{"step": i, "token_id": t, "piece": p, "running_reward": r, "is_eos": False}
                                      for i, (t, p, r) in enumerate(zip(trace.token_ids, trace.pieces, trace.rewards))]
    return {"pair_id": pair.pair_id, "direction": SOURCE, "prompt": [dict(m) for m in pair.prompt],
            "original_chosen": pair.chosen, "original_rejected": pair.rejected, "text": c.text,
            "r_variant": r_variant, "r_trace": r_variant, "r_chosen": r_chosen, "r_rejected": r_rejected,
            "margin": r_variant - r_chosen, "perplexity": c.perplexity, "is_inversion": True, "steps": steps,
            "z_target": c.z_target, "z_penalty": c.z_penalty, "z_penalties": c.z_penalties, "u": c.u, "u_z": c.u_z,
            "origin": c.origin, "judge_chosen": judge_chosen, "judge_sample": judge_sample,
            "flags": [{"rule": f.rule, "evidence": f.evidence} for f in flags], "confirmed_by": by, "confirmed": bool(by),
            "success": bool(by) and r_variant > r_chosen,
            "new_pair": {"prompt": [dict(m) for m in pair.prompt], "chosen": pair.chosen.strip(), "rejected": c.text.strip()}}


def _confirm(kept: list[Candidate], pairs: list[PreferencePair], target, judge, base_ppl: float,
             rules: tuple[Rule, ...]) -> list[dict]:
    """Score each kept sample, its y+ and y- with the target (from text, as a retrained RM will see
    them) and the judge; apply the rules -> store records."""
    from .scoring import SCORE_MAX_LENGTH, reward_trace, score_pairs

    used = sorted({c.prompt_index for c in kept})
    scores = score_pairs(target, [pairs[i] for i in used], max_length=SCORE_MAX_LENGTH, skip_too_long=True)
    scored = [i for j, i in enumerate(used) if j not in scores.skipped]
    target_of = {i: (float(a), float(b)) for i, a, b in zip(scored, scores.r_chosen, scores.r_rejected)}
    judged = duel_scores(judge, duels(kept, pairs)) if judge is not None else {}  # the judge's pair: y+ against the sample
    records = []
    for n, c in enumerate(kept):
        pair = pairs[c.prompt_index]
        try:
            trace = reward_trace(target, pair.prompt, c.text, max_length=SCORE_MAX_LENGTH)
        except DataError:
            trace = None
        records.append(_record(c, pair, target_of.get(c.prompt_index, (float("nan"), float("nan"))),
                               judged.get(n, (None, None)), trace, base_ppl, rules))
    return records


def _outcome(result: AttackResult) -> str:
    return (f"kept {result.kept} samples, {result.confirmed} confirmed; pass rate {result.pass_rate:.1%} vs base "
            f"{result.base_pass_rate:.1%}")


@job("loading data and models", done=_outcome)
def run_attack(config: AttackConfig, run: RunDir) -> AttackResult:
    """Normalise, train the adversary with RLOO, sample fresh, keep and confirm; see the module docstring."""
    from .reward_model import load_reward_model
    from .rollouts import RolloutEngine, build_policy

    seed = config.runtime.seed
    seed_everything(seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    pairs = select_rows(load_preferences(config.data, skip_invalid=config.skip_invalid).pairs, config.rows)[: config.prompts]
    if not pairs:
        raise DataError(f"no pairs in rows {config.rows!r} of {config.data}.", fix="widen or clear the rows.")
    prompts = [p.prompt for p in pairs]
    load = config.runtime.load_args()
    rms = [load_reward_model(p, **load) for p in [config.target_rm] + config.penalty_list()]
    policy, tokenizer = build_policy(config.policy, **asdict(config.adapter), seed=seed, **load)
    engine = RolloutEngine.fitting(policy, tokenizer, rms, max_prompt_tokens=config.max_prompt_tokens,
                                    max_new_tokens=config.response.max_new_tokens)
    run.log(f"{len(pairs)} prompts; policy LoRA from layer {engine.lora_start}; the RMs' own layers start at "
            f"{engine.rm_depths} (-1: all of them on the same ids, None: scored from text)")
    generator = torch.Generator().manual_seed(seed)
    rl, keep = config.rloo, config.keep
    per_step = rl.prompts_per_step * rl.group_size
    cal = _chunks(len(prompts), max(1, per_step // config.reward.base_samples))
    fresh = _chunks(len(prompts), max(1, per_step // max(1, keep.fresh_samples))) if keep.fresh_samples else []
    total, done = len(cal) + rl.steps + 2 * len(fresh) + 1, 0
    reward, k, G, threshold = config.reward.build(), rl.group_size, rl.prompts_per_step, config.reward.threshold
    params = {name: p for name, p in policy.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(params.values(), lr=rl.lr, weight_decay=0.0)
    order = _prompt_order(len(prompts), seed)
    steps_path = run.path / STEPS_FILE
    keep_after = rl.steps - round(keep.keep_last * rl.steps)
    snapshot = Snapshot(run.path / SNAPSHOT_FILE, {"config": config, "prompts": [p.pair_id for p in pairs]})
    state = snapshot.load()

    if state is None:
        # 1. the base policy's samples: every z-score's yardstick
        raws, idxs, ppls = [], [], []
        for ids in cal:
            roll, raw, logp0, idx = _sample_scored(engine, prompts, ids, config.reward.base_samples, generator, config,
                                                   adapter=False)
            raws.append(raw)
            idxs.append(idx)
            ppls.append(torch.exp(-logp0.sum(-1) / roll.lengths.clamp(min=1)))
            done += 1
            run.progress(done, total, message=f"sampling the base policy: {done}/{len(cal)} prompt groups")
        norm = PromptNorm.fit(torch.cat(raws), torch.cat(idxs), len(prompts), config.reward.sd_floor)
        base_ppl = float(torch.cat(ppls).median())
        first, pool, window, spent = 1, [], [], {"rl": 0.0, "wall": 0.0, "cpu": 0.0}
        steps_path.write_text("")  # a run of another config in the same directory starts its curves afresh
    else:
        norm, base_ppl, window, spent = PromptNorm(**state["norm"]), state["base_ppl"], state["window"], state["spent"]
        pool = [Candidate(**c) for c in state["pool"]]
        first = state["step"] + 1
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(state["params"][name])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])  # LoRA dropout, if any
        for _ in range((first - 1) * G):
            next(order)
        rows = read_steps(run.path)[: first - 1]
        steps_path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # a step after the snapshot is redone
        done = len(cal) + first - 1
        run.log(f"resuming at step {first} of {rl.steps}: the state after step {first - 1} read back from {SNAPSHOT_FILE} "
                f"(an interrupted run of this config)")

    # 2. RLOO
    rl_start = time.perf_counter()

    def save(step: int) -> None:
        snapshot.save({"step": step, "norm": asdict(norm), "base_ppl": base_ppl, "pool": [asdict(c) for c in pool],
                       "window": window,
                       "params": {name: p.detach().clone() for name, p in params.items()},
                       "optimizer": optimizer.state_dict(), "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                       "spent": {"rl": spent["rl"] + time.perf_counter() - rl_start,
                                 "wall": spent["wall"] + time.perf_counter() - start,
                                 "cpu": spent["cpu"] + time.process_time() - cpu_start}})

    if state is None:
        save(0)  # the calibration is the costliest part to redo
    for step in range(first, rl.steps + 1):
        t0 = time.perf_counter()
        ids = [next(order) for _ in range(G)]
        roll, raw, logp0, idx = _sample_scored(engine, prompts, ids, k, generator, config, adapter=True)
        logp, entropy = engine.logprobs(roll, grad=True)
        mask = roll.mask
        z = norm.z(raw, idx)
        kl = kl_k3(logp.detach(), logp0, mask)
        parts = reward(z[:, 0], z[:, 1:], roll.complete, kl)
        advantages = rloo_advantages(parts.total.view(len(ids), k)).view(-1)
        loss = rloo_loss(advantages, logp.sum(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(list(params.values()), rl.max_grad_norm)
        optimizer.step()
        found = _candidates(roll, raw, logp0, idx, norm, f"step {step}")
        passing = [passes(c, threshold, keep.u_z_min) for c in found]
        if step > keep_after:
            pool += found
            window += passing
        row = {"step": step, **parts.means(), "kl": float(kl.mean()), "entropy": float(entropy.sum() / mask.sum()),
               "length": float((roll.lengths - roll.ended.long()).float().mean()), "eos_rate": float(roll.ended.float().mean()),
               "complete_rate": float(roll.complete.float().mean()),
               "pass_rate": sum(passing) / len(passing), "loss": float(loss.detach()), "grad_norm": float(grad_norm),
               "seconds": time.perf_counter() - t0}
        with open(steps_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        save(step)
        done += 1
        run.progress(done, total, message=f"step {step}/{rl.steps}: target z {row['target_z']:+.2f}, penalty z "
                     f"{row['penalty_z']:+.2f}, pass rate {row['pass_rate']:.0%}")
        if rl.save_every and step % rl.save_every == 0 and step < rl.steps:
            _save_adapter(policy, run.checkpoint_path)
            run.log(f"adapter checkpoint at step {step}")
    rl_seconds = spent["rl"] + time.perf_counter() - rl_start
    _save_adapter(policy, run.checkpoint_path)

    # 3. fresh samples of the final policy and of pi0, same prompts
    rates, samples = {}, {}
    for adapter, name in ((True, "final"), (False, "base")):
        got = []
        for ids in fresh:
            roll, raw, logp0, idx = _sample_scored(engine, prompts, ids, keep.fresh_samples, generator, config, adapter)
            got += _candidates(roll, raw, logp0, idx, norm, "fresh" if adapter else "base")
            done += 1
            run.progress(done, total, message=f"fresh samples of the {name} policy")
        rates[name] = sum(passes(c, threshold, keep.u_z_min) for c in got) / len(got) if got else float("nan")
        samples[name] = got
        if adapter:
            pool += got

    # 4. keep, confirm, hand to the store
    run.set_status("running", message="keeping and confirming")
    kept = keep.select(pool, threshold)
    target = rms[0]
    del engine, rms, policy  # the judge's turn: the policy and the penalty RMs are done
    gc.collect()
    judge = load_reward_model(config.judge_rm, **load) if config.judge_rm.strip() else None
    rules = config.rules()
    records = _confirm(kept, pairs, target, judge, base_ppl, rules) if kept else []
    write_jsonl(run.path / KEPT_FILE, records)
    run.set_status("running", message="judging the fresh samples")
    judged = judge_candidates(samples.get("final", []) + samples.get("base", []), pairs, target, judge, base_ppl, rules,
                              threshold, keep.u_z_min)
    write_jsonl(run.path / SAMPLES_FILE, judged)
    success = {name: [r["success"] for r in judged if r["origin"] == origin]
               for name, origin in (("final", "fresh"), ("base", "base"))}
    fired: dict[str, int] = {}
    for r in records:
        for f in r["flags"]:
            fired[f["rule"]] = fired.get(f["rule"], 0) + 1
    confirmed = sum(r["confirmed"] for r in records)
    result = AttackResult(str(run.path / KEPT_FILE), str(steps_path), str(run.checkpoint_path), rl.steps, len(prompts),
                          len(records), confirmed, rates.get("final", float("nan")), rates.get("base", float("nan")),
                          sum(window) / len(window) if window else float("nan"),
                          confirmed / len(records) if records else float("nan"), fired, base_ppl,
                          _share(success["final"]), _share(success["base"]), spent["wall"] + time.perf_counter() - start,
                          rl_seconds / rl.steps, spent["cpu"] + time.process_time() - cpu_start, _peak_rss_gb())
    run.log(f"kept {len(records)} ({confirmed} confirmed); pass rate {result.pass_rate:.3f} vs base {result.base_pass_rate:.3f}")
    snapshot.remove()
    return result


def _peak_rss_gb() -> float:
    """The process's peak resident memory so far, in GiB (NaN where the OS does not say)."""
    try:
        import resource
    except ImportError:  # not on this OS
        return float("nan")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def _share(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


def _prompt_order(n: int, seed: int):
    """Prompt indices forever: a seeded permutation, reshuffled each pass."""
    g = torch.Generator().manual_seed(seed + 1)
    while True:
        yield from torch.randperm(n, generator=g).tolist()


def _save_adapter(policy, path: Path) -> None:
    with atomic_directory(path) as tmp:
        policy.save_pretrained(tmp)
