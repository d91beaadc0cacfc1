"""Adv-RM's rounds of adversarial training: attack the RM, add what the attack found as rejected
responses, retrain from scratch, and attack the retrained RM again.

    python -m reform_engine adv-rounds --run-dir D --attack.target-rm T --attack.penalty-rms P1,P2 [--attack.judge-rm J] ...

Each step is a stage in a sub-directory of the run directory (stages.Stages: a finished stage with the
same config is reused, so a killed job resumes):

    robustness_base/        the base RM (``attack.target_rm``) on the held-out pairs
    attack_r1/              the attack on the base RM (attack.run_attack: z-scores afresh, against pi0's
                            samples as the RM under attack scores them)
    attack_r1_lambda0/      with ``baseline_arm``: the same attack with lambda = 0, the over-optimisation
                            baseline; reported beside, never trained on
    pairs_r1.jsonl          every adversarial pair so far, (y+ preferred over the sample), TRL rows
    retrain_r1/             the base's recipe from scratch on its pairs plus those
    robustness_r1/          the retrained RM on the same held-out pairs
    attack_r2/ ...          round 2 attacks round 1's RM; and so on for ``rounds`` retrainings
    attack_r3/              with ``final_attack``: the last RM attacked once more (no retraining), so the
                            report says whether it still falls

A round whose attack passes the keep filter on fewer than ``pass_floor`` of its fresh samples ends
the rounds (in round 1: the attack does not break the base RM often enough to train on; later: the
retrained RM no longer falls for it), and so does one that keeps no pair to add. The
penalty RMs and the judge stay the same in every round; only the target changes.

``report.json`` has the pipeline's schema (stages.py), so the Retrain page shows it: models ``base``,
``round 1``, ``round 2``...; and ``rounds``, one :class:`RoundReport` per attack.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from .attack import AttackConfig, read_kept, run_attack
from .configs import JobConfigError, config_from_dict, refuse, required, setting
from .data import load_preferences, parse_rows, select_rows, write_jsonl
from .retrain import BaseRetraining, held_out_rows
from .robustness import RobustnessConfig, evaluate_robustness, robustness_stage
from .runs import RunDir, job, read_json
from .stages import ComparisonResult, ModelReport, Stages, retrain_config
from .training import TrainRewardConfig, train_reward_model
from .trunk_cache import run_cache_dirs

BASELINE = "lambda=0"     # the arm name of the over-optimisation baseline's rows


@dataclass
class AdvRoundsConfig(BaseRetraining):
    attack: AttackConfig = required("every round's attack; its target_rm is the base RM (round 1's target), later rounds "
                                    "put the last retrained RM in its place", set_by_job=("runtime",))
    rounds: int = setting(2, "retrainings: the paper's attack stopped working after 2")
    pass_floor: float = setting(0.05, "a round whose attack passes the keep filter on fewer than this share of its fresh "
                                      "samples ends the rounds (pi0's own samples pass at most ~2.5%: U's z > 1.96 is a 2.5% tail)")
    final_attack: bool = setting(True, "after the last retraining, attack once more to see whether the RM still falls")
    confirmed_only: bool = setting(True, "only samples the judge or a rule confirms become pairs (the paper relies on "
                                         "disagreement plus its filter); false: every kept sample")
    baseline_arm: bool = setting(False, "each attack also with lambda = 0 (the over-optimisation baseline), reported beside, "
                                        "never trained on")
    baseline_rounds: int = setting(0, "with baseline_arm: the lambda = 0 arm beside the first N attacks only (0 = beside every "
                                      "attack); round 1's is the one the attack's bar compares with")
    # retraining: the base's recipe (its run's config.json), from scratch, on its pairs + the adversarial ones (BaseRetraining)
    # evaluation: every RM on the same held-out pairs (eval_data: BaseRetraining)
    eval_rows: str = setting("", "held-out rows; '' = the rows after the training rows (all rows when it trained on all)")
    robustness: RobustnessConfig = robustness_stage("the robustness of every RM on the held-out pairs")

    def __post_init__(self):
        checks = [(self.rounds >= 1, "rounds must be >= 1"),
                  (self.baseline_rounds >= 0, "baseline_rounds must be >= 0 (0 = the lambda = 0 arm beside every attack)"),
                  (0 <= self.pass_floor <= 1, "pass_floor must be a share in [0, 1] (0 = never stop early)"),
                  (self.attack.keep.fresh_samples >= 1, "attack.keep.fresh_samples must be >= 1: a round's pass rate is measured on "
                   "fresh samples of the final policy")]
        refuse(self, checks)
        parse_rows(self.train_rows), parse_rows(self.eval_rows)
        self.attack = dataclasses.replace(self.attack, runtime=self.runtime)
        self.robustness = dataclasses.replace(self.robustness, runtime=self.runtime)

    def recipe(self) -> TrainRewardConfig:
        return self.recipe_of(self.attack.target_rm)

    def retrain_config(self, pairs_path: str) -> TrainRewardConfig:
        base = self.recipe()
        return retrain_config(base, "scratch", self.attack.target_rm, pairs_path, runtime=self.retraining_runtime(base))

    def robustness_config(self, rm: str) -> RobustnessConfig:
        recipe = self.recipe()
        rows = self.eval_rows if self.eval_rows or self.eval_data else held_out_rows(recipe.train_rows)
        return dataclasses.replace(self.robustness, reward_model=rm, data=self.eval_data or recipe.data, rows=rows)

    def attack_config(self, target: str, baseline: bool = False) -> AttackConfig:
        lambda0 = {"reward": dataclasses.replace(self.attack.reward, penalty_weight=0.0)} if baseline else {}
        return dataclasses.replace(self.attack, target_rm=target, **lambda0)


@dataclass
class RoundReport:
    round: int
    arm: str                                # "adv-rm", or "lambda=0" (the baseline)
    target: str                             # the model attacked: "base", "round 1", ...
    checkpoint: str                         # its checkpoint
    pass_rate: float                        # fresh samples of the final policy passing the keep filter
    base_pass_rate: float                   # pi0's fresh samples, same filter
    confirmed_rate: float                   # confirmed / kept
    success_rate: float                     # fresh samples the target prefers to y+ and confirmed bad
    kept: int
    confirmed: int
    added: int = 0                          # pairs this round adds to the training set
    total_pairs: int = 0                    # adversarial pairs the retrained RM was trained on
    retrained: str = ""                     # the retrained RM's checkpoint ('' = none this round)
    stop: str = ""                          # why the rounds ended here ('' = they went on)
    cpu_seconds: float = 0.0                # the attack's CPU time, RL included
    rules_fired: dict = field(default_factory=dict)

    @classmethod
    def from_attack(cls, r: int, arm: str, target: str, checkpoint: str, m: dict) -> RoundReport:
        return cls(r, arm, target, checkpoint, m["pass_rate"], m["base_pass_rate"], m["confirmed_rate"], m["success_rate"],
                   m["kept"], m["confirmed"], cpu_seconds=m.get("cpu_seconds", 0.0), rules_fired=m.get("rules_fired", {}))


def read_rounds_config(run_dir: str | Path) -> AdvRoundsConfig:
    """The config of the adv-rounds run in ``run_dir`` (its config.json)."""
    saved = read_json(Path(run_dir) / "config.json")
    try:
        return config_from_dict(AdvRoundsConfig, saved)
    except (JobConfigError, TypeError, ValueError) as exc:
        raise ValueError(f"{run_dir} holds no adv-rounds config this version reads ({exc}); pick an adv-rounds run "
                         "directory") from None


def read_rounds(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """(round rows, model rows) of an adv-rounds run's report.json so far; ([], []) before its first."""
    report = read_json(Path(run_dir) / "report.json")
    return (report.get("rounds", []), report.get("models", [])) if isinstance(report, dict) else ([], [])


def adversarial_pairs(attack_dir: str | Path, confirmed_only: bool) -> list[dict]:
    """The TRL rows a finished attack adds: (y+ preferred over the sample) for each kept (or each
    confirmed) sample."""
    return [dict(r["new_pair"]) for r in read_kept(attack_dir) if r["confirmed"] or not confirmed_only]


def _key(row: dict) -> str:
    return json.dumps([row["prompt"], row["chosen"], row["rejected"]], sort_keys=True)


def check_prompts_held_out(config: AdvRoundsConfig) -> None:
    """Refuse attack prompts among the held-out pairs: their pairs would be trained on, then evaluated."""
    rob = config.robustness_config("x")
    if Path(config.attack.data).expanduser().resolve() != Path(rob.data).expanduser().resolve():
        return
    pairs = load_preferences(config.attack.data, skip_invalid=config.attack.skip_invalid).pairs
    attacked = {p.pair_id for p in select_rows(pairs, config.attack.rows)[: config.attack.prompts]}
    shared = sorted(attacked & {p.pair_id for p in select_rows(pairs, rob.rows)})
    if shared:
        raise ValueError(f"{len(shared)} attacked prompts are among the held-out pairs (rows {rob.rows!r} of {rob.data}), e.g. "
                         f"{shared[0]}: their pairs would be trained on and then evaluated; set attack.rows within the "
                         "training rows, or eval_rows apart from them")


def _below_floor(rate: float, floor: float, round_: int) -> str:
    """Why the rounds end at an attack whose pass rate is under the floor: round 1's never broke the base RM
    (often enough to train on); a later one's shows the retrained RM no longer falls for it."""
    why = ("the attack does not break the base RM often enough to train on" if round_ == 1 else
           "the retrained RM no longer falls for the attack")
    return f"pass rate {rate:.3f} below the floor {floor}: {why}"


def _outcome(result: ComparisonResult) -> str:
    return "; ".join(f"{r['target']}: pass rate {r['pass_rate']:.1%}" for r in result.rounds if r["arm"] == "adv-rm")


@job("starting", done=_outcome)
def run_adv_rounds(config: AdvRoundsConfig, run: RunDir) -> ComparisonResult:
    """Attack, keep, retrain, evaluate, round after round; see the module docstring."""
    base = str(Path(config.attack.target_rm).expanduser())
    if config.runtime.trunk_cache == "auto":  # one cache for the stages, reading the base's: only new texts pay
        shared = [run.path / "trunk_cache", *run_cache_dirs(base)]
        config = dataclasses.replace(config, runtime=dataclasses.replace(
            config.runtime, trunk_cache=",".join(map(str, dict.fromkeys(shared)))))
    config.recipe()  # an unknown recipe fails here, before any attack
    check_prompts_held_out(config)
    attacks = config.rounds + int(config.final_attack)
    with_baseline = [r for r in range(1, attacks + 1) if config.baseline_arm and (config.baseline_rounds == 0 or r <= config.baseline_rounds)]
    stages = Stages(run, total=1 + config.rounds * 3 + int(config.final_attack) + len(with_baseline))
    models: list[ModelReport] = []
    rows: list[RoundReport] = []
    pairs: list[dict] = []

    def evaluate(name: str, ckpt: str, n: int, after: tuple[str, ...]) -> None:
        rob = stages(f"robustness_{name.replace('round ', 'r')}", evaluate_robustness, config.robustness_config(ckpt), after,
                     describe=lambda m: f"clean win rate {m['clean_win_rate']:.3f}, mean drop {m['mean_drop']:+.3f}")
        stage = f"robustness_{name.replace('round ', 'r')}"
        models.append(ModelReport.from_robustness(name, ckpt, n, rob, run.path / stage, run.path / "robustness_base",
                                                  seed=config.runtime.seed))
        stages.write_report(models, rounds=rows)

    def attack(r: int, target: str, ckpt: str, after: tuple[str, ...]) -> RoundReport:
        m = stages(f"attack_r{r}", run_attack, config.attack_config(ckpt), after,
                   describe=lambda m: f"pass rate {m['pass_rate']:.3f} (pi0 {m['base_pass_rate']:.3f}), kept {m['kept']}, "
                                      f"{m['confirmed']} confirmed")
        row = RoundReport.from_attack(r, "adv-rm", target, ckpt, m)
        rows.append(row)
        if r in with_baseline:
            m0 = stages(f"attack_r{r}_lambda0", run_attack, config.attack_config(ckpt, baseline=True), after)
            rows.append(RoundReport.from_attack(r, BASELINE, target, ckpt, m0))
        stages.write_report(models, rounds=rows)  # a page shows each round as it ends
        return row

    evaluate("base", base, 0, ())
    target, ckpt, after = "base", base, ()
    for r in range(1, config.rounds + 1):
        row = attack(r, target, ckpt, after)
        rate = row.pass_rate
        new = [p for p in adversarial_pairs(run.path / f"attack_r{r}", config.confirmed_only)
               if _key(p) not in {_key(q) for q in pairs}]
        if not rate >= config.pass_floor or not new:  # NaN (nothing sampled) stops too
            row.stop = (_below_floor(rate, config.pass_floor, r) if not rate >= config.pass_floor else
                        f"no new {'confirmed ' if config.confirmed_only else ''}sample to add")
            run.log(f"round {r}: {row.stop}; the rounds end here")
            stages.skip(stages.total - stages.done)
            break
        pairs += new
        path = run.path / f"pairs_r{r}.jsonl"
        write_jsonl(path, pairs)
        trained = stages(f"retrain_r{r}", train_reward_model, config.retrain_config(str(path)),
                         tuple(f"attack_r{i}" for i in range(1, r + 1)), note=f" ({len(pairs)} adversarial pairs)",
                         describe=lambda m: f"{m['train_pairs']} training pairs, {m['steps']} steps")
        row.added, row.total_pairs, row.retrained = len(new), len(pairs), trained["checkpoint"]
        target, ckpt, after = f"round {r}", trained["checkpoint"], (f"retrain_r{r}",)
        evaluate(target, ckpt, len(pairs), after)
    else:  # every round retrained: the last RM, attacked once more
        if config.final_attack:
            row = attack(config.rounds + 1, target, ckpt, after)
            if not row.pass_rate >= config.pass_floor:
                row.stop = _below_floor(row.pass_rate, config.pass_floor, config.rounds + 1)
    return stages.write_report(models, rounds=rows)
