"""REFORM and Adv-RM side by side, on the same base RM, prompts and held-out pairs.

    python -m reform_engine compare --run-dir D --pipeline-dir P --rounds-dir A

P is a ``pipeline`` run (REFORM), A an ``adv-rounds`` run (Adv-RM) whose target is P's base RM; either
may still be running other arms, once the stages read here have finished. The REFORM pairs are the ones
P's reform arm trained on (judge-filtered when P filtered). One criterion of success serves both: the target RM prefers the sample to the dataset's
chosen response y+, and the sample is confirmed bad, by the judge RM (scores it below y+) or a rule
(confirm.py), the judge and rules of A's attack. REFORM's samples are its "raise" variants (decoded
from a rejected response to score high: the kind of failure Adv-RM looks for; "lower" variants are
another kind and not counted); Adv-RM's are the fresh samples of round 1's final policy.

Stages, in sub-directories of the run directory (stages.Stages, so a re-run resumes):

    judge_reform/           REFORM's raise variants, judged (judging.py: samples.jsonl, as the attack writes it)
    retrain_reform/         with equal_pairs: the base recipe from scratch on n of REFORM's pairs, n the
    retrain_advrm/          smaller of the two methods' counts (Adv-RM: round 1's pairs), a seeded sample
    robustness_reform/      of the method with more; a finished run of the same config in P or A (the
    robustness_advrm/       pipeline's reform arm, round 1) is used instead of training again
    variants_vs_advrm/      with cross_attacks: REFORM's decoding of its influential pairs against the
    judge_vs_advrm/         Adv-RM-hardened RM, judged
    attack_vs_reform/       round 1's attack against the REFORM-hardened RM
    variants_attack_prompts/  with same_prompts: REFORM's "raise" decoding of the attack's own prompts (its
    judge_attack_prompts/     pairs, y+ included) against the base, judged: both methods on the same prompts

``comparison.json`` is the table (:func:`comparison_table`): success per sample and per prompt,
confirmed failures per CPU-minute, diversity, the retrained RMs' clean accuracy and drops with
paired differences and their spurious indicators, the cross-attacks, and success on the attack's prompts
(REFORM decoding them beside Adv-RM's samples, per prompt paired); every rate with its 95% bootstrap interval.
"""
from __future__ import annotations

import dataclasses
import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, Sequence

from .adv_rounds import read_rounds_config
from .attack import AttackConfig, read_kept, run_attack
from .configs import config_from_dict, nested, required, setting
from .confirm import jaccard, trigrams
from .data import hh_text, load_preferences, select_rows, write_jsonl
from .evaluation import BOOTSTRAP_RESAMPLES, Interval, bootstrap_diff, bootstrap_mean, paired_bootstrap_diff
from .inversions import GenerateVariantsConfig, generate_variants
from .judging import SAMPLES_FILE, JudgeVariantsConfig, judge_variants, read_samples
from .robustness import evaluate_robustness, read_pair_scores
from .runs import RunDir, atomic_write_json, job, read_json, run_state
from .runtime import Runtime
from .stages import Stages, finished, retrain_config
from .training import train_reward_model

TABLE_FILE = "comparison.json"
REFORM, ADVRM = "REFORM", "Adv-RM"
SPURIOUS = ("extreme_negative_share", "length_corr", "capital_corr", "repetition_corr")   # robustness.SpuriousIndicators


# --------------------------------------------------------------------------- the table

def _interval(i: Interval, **row: Any) -> dict:
    return {**row, "value": i.estimate, "low": i.low, "high": i.high, "n": i.n}


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct word n-grams over all n-grams of ``texts`` (1 = no n-gram repeats anywhere)."""
    grams = [tuple(ws[i:i + n]) for t in texts for ws in [t.lower().split()] for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def trigram_overlap(texts: Sequence[str], max_texts: int = 300, seed: int = 0) -> float:
    """Mean character-trigram Jaccard over all pairs of ``texts`` (a seeded sample of ``max_texts``):
    0 = nothing shared, 1 = one text over and over."""
    texts = list(texts)
    if len(texts) > max_texts:
        texts = random.Random(seed).sample(texts, max_texts)
    grams = [trigrams(t) for t in texts]
    pairs = list(combinations(range(len(grams)), 2))
    return sum(jaccard(grams[i], grams[j]) for i, j in pairs) / len(pairs) if pairs else float("nan")


@dataclass
class MethodRun:
    """One method's judged samples, and what finding them cost."""

    name: str
    samples: list[dict]                     # the method's output, judged (each with prompt text in "prompt_text", "success")
    failures: list[dict]                    # every distinct confirmed failure it found (samples, plus kept ones outside them)
    cpu_seconds: float                      # NaN when a stage did not record it


def _success_rows(runs: Sequence[MethodRun], n_boot: int, seed: int, shared: set[str]) -> list[dict]:
    rows, per_prompt = [], {}
    for run in runs:
        flags = [float(s["success"]) for s in run.samples]
        rows.append(_interval(bootstrap_mean(flags, n_boot=n_boot, seed=seed), method=run.name, unit="sample", prompts="all"))
        by_prompt: dict[str, bool] = {}
        for s in run.samples:
            by_prompt[s["prompt_text"]] = by_prompt.get(s["prompt_text"], False) or bool(s["success"])
        per_prompt[run.name] = by_prompt
        rows.append(_interval(bootstrap_mean([float(v) for v in by_prompt.values()], n_boot=n_boot, seed=seed), method=run.name,
                              unit="prompt", prompts="all"))
        if shared:
            rows.append(_interval(bootstrap_mean([float(by_prompt[p]) for p in sorted(shared)], n_boot=n_boot, seed=seed),
                                  method=run.name, unit="prompt", prompts="shared"))
    if len(runs) == 2:
        a, b = runs
        rows.append(_interval(bootstrap_diff([float(s["success"]) for s in a.samples], [float(s["success"]) for s in b.samples],
                                             n_boot=n_boot, seed=seed), method=f"{a.name} − {b.name}", unit="sample", prompts="all"))
        if shared:  # the same prompts on both sides: paired
            rows.append(_interval(paired_bootstrap_diff([float(per_prompt[a.name][p]) for p in sorted(shared)],
                                                        [float(per_prompt[b.name][p]) for p in sorted(shared)], n_boot=n_boot,
                                                        seed=seed), method=f"{a.name} − {b.name}", unit="prompt", prompts="shared"))
    return rows


def _efficiency_rows(runs: Sequence[MethodRun], n_boot: int, seed: int) -> list[dict]:
    rows = []
    for run in runs:
        minutes = run.cpu_seconds / 60
        got = bootstrap_mean([float(s["success"]) for s in run.failures], n_boot=n_boot, seed=seed)
        scale = len(run.failures) / minutes if minutes > 0 else float("nan")  # the count is n x the success share
        rows.append({"method": run.name, "confirmed_failures": sum(s["success"] for s in run.failures), "cpu_minutes": minutes,
                     "value": got.estimate * scale, "low": got.low * scale, "high": got.high * scale, "n": got.n})
    return rows


def _diversity_rows(runs: Sequence[MethodRun], seed: int) -> list[dict]:
    rows = []
    for run in runs:
        texts = [s["text"] for s in run.failures if s["success"]]
        fired = Counter(f["rule"] for s in run.failures if s["success"] for f in s["flags"])
        judged = sum("judge" in s["confirmed_by"] for s in run.failures if s["success"])
        rows.append({"method": run.name, "failures": len(texts), "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2),
                     "trigram_overlap": trigram_overlap(texts, seed=seed), "judge": judged, "rules": dict(sorted(fired.items()))})
    return rows


def _retrained_rows(models: dict[str, Any], n_boot: int, seed: int) -> tuple[list[dict], list[dict]]:
    """models: name -> (added pairs, PairScores) -> (per-model rows, paired differences vs REFORM's RM)."""
    rows, diffs = [], []
    for name, (added, scores) in models.items():
        metrics = [("clean accuracy", scores.wins()), ("mean drop", scores.drops())]
        metrics += [(p, scores.drops(p)) for p in scores.perturbed]
        rows += [_interval(bootstrap_mean(v, n_boot=n_boot, seed=seed), model=name, added_pairs=added, metric=m) for m, v in metrics]
    if ADVRM in models and REFORM in models:
        a, b = models[ADVRM][1], models[REFORM][1]
        if a.pair_ids == b.pair_ids:
            pairs = [("clean accuracy", a.wins(), b.wins()), ("mean drop", a.drops(), b.drops())]
            pairs += [(p, a.drops(p), b.drops(p)) for p in a.perturbed if p in b.perturbed]
            diffs = [_interval(paired_bootstrap_diff(x, y, n_boot=n_boot, seed=seed), metric=m, difference=f"{ADVRM} − {REFORM}")
                     for m, x, y in pairs]
    return rows, diffs


def _spurious_rows(models: dict[str, tuple[int, dict]]) -> list[dict]:
    """models: name -> (added pairs, the indicators its robustness stage measured on the clean held-out
    pairs, robustness.SpuriousIndicators as a dict) -> one row per RM (point values: no interval is drawn)."""
    return [{"model": name, "added_pairs": added, **{k: (indicators or {}).get(k) for k in SPURIOUS}}
            for name, (added, indicators) in models.items()]


def _cross_rows(cross: Sequence[tuple[str, str, list[dict]]], n_boot: int, seed: int) -> list[dict]:
    """(attacker, target, judged samples) -> success per sample, with the share the attacked RM prefers to y+ (the
    criterion's first half: a hack the confirmation does not see still shows there), and each hardened target against
    base."""
    rows = []
    for a, t, samples in cross:
        prefers = bootstrap_mean([float(s["r_sample"] > s["r_chosen"]) for s in samples], n_boot=n_boot, seed=seed)
        rows.append(_interval(bootstrap_mean([float(s["success"]) for s in samples], n_boot=n_boot, seed=seed), attacker=a, target=t,
                              target_prefers=prefers.estimate, target_prefers_low=prefers.low, target_prefers_high=prefers.high))
    by = {(a, t): samples for a, t, samples in cross}
    for a, t, samples in cross:
        if t != "base" and (a, "base") in by:
            rows.append(_interval(bootstrap_diff([float(s["success"]) for s in samples], [float(s["success"]) for s in by[a, "base"]],
                                                 n_boot=n_boot, seed=seed), attacker=a, target=f"{t} − base"))
    return rows


def comparison_table(runs: Sequence[MethodRun], *, retrained: dict[str, Any] | None = None,
                     spurious: dict[str, tuple[int, dict]] | None = None,
                     cross: Sequence[tuple[str, str, list[dict]]] = (), checks: Sequence[dict] = (),
                     same_prompts: Sequence[MethodRun] = (), n_boot: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """The comparison as tables (lists of flat rows, Plotly/pandas-ready), every rate with its
    percentile-bootstrap interval (value, low, high, n):

        checks       what makes the comparison fair, each with ok and detail
        success      per sample and per prompt (all prompts, and the prompts both attacked), and the differences
        efficiency   confirmed failures, CPU minutes, failures per CPU-minute
        diversity    over the confirmed failures: distinct-1/2, mean pairwise trigram overlap, judge and rule counts
        retrained    per RM (base, REFORM's, Adv-RM's, same number of added pairs): clean accuracy and drops
        paired       Adv-RM's RM minus REFORM's, on the same held-out pairs (paired bootstrap)
        spurious     per RM: the share of extreme-negative rewards and the correlations of reward with length,
                     capitals and repetition on the clean held-out pairs (before: base, after: each method's RM)
        cross        success of each attacker against base and against the other method's RM
        same_prompts the success rows again for ``same_prompts`` (REFORM decoding the attack's prompts, and Adv-RM's
                     samples): the per-prompt difference is paired over the prompts both have
    """
    def shared_of(group: Sequence[MethodRun]) -> set[str]:
        prompts = [{s["prompt_text"] for s in run.samples} for run in group]
        return set.intersection(*prompts) if len(prompts) == 2 else set()

    shared, same = shared_of(runs), shared_of(same_prompts)
    rows, diffs = _retrained_rows(retrained or {}, n_boot, seed)
    return {"checks": list(checks), "success": _success_rows(runs, n_boot, seed, shared),
            "efficiency": _efficiency_rows(runs, n_boot, seed), "diversity": _diversity_rows(runs, seed), "retrained": rows,
            "paired": diffs, "spurious": _spurious_rows(spurious or {}), "cross": _cross_rows(cross, n_boot, seed),
            "shared_prompts": len(shared),
            "same_prompts": _success_rows(same_prompts, n_boot, seed, same) if same_prompts else [], "same_prompts_n": len(same),
            "n_boot": n_boot, "seed": seed}


# --------------------------------------------------------------------------- the job

@dataclass
class CompareConfig:
    pipeline_dir: str = required("a pipeline run (REFORM on the base RM) whose influence, base robustness and "
                                 "lowest-loss variants are finished")
    rounds_dir: str = required("an adv-rounds run whose target is that base RM, with its base robustness and round-1 "
                               "attack finished")
    equal_pairs: bool = setting(True, "retrain both methods' RMs on the same number of added pairs and evaluate them")
    cross_attacks: bool = setting(True, "REFORM's decoding against Adv-RM's RM, and the attack against REFORM's (needs "
                                        "equal_pairs)")
    same_prompts: bool = setting(True, "also decode REFORM's 'raise' variants of the attack's own prompts, so that both "
                                       "methods are compared on the same prompts (REFORM's own are its influential pairs)")
    n_boot: int = setting(BOOTSTRAP_RESAMPLES, "bootstrap resamples of every interval")
    runtime: Runtime = nested(Runtime, "device, dtype, threads, remote-code leave of every stage (each keeps the seed of the "
                                       "run it repeats); seed: of the bootstrap and of the pair samples")

    def __post_init__(self):
        for name in ("pipeline_dir", "rounds_dir"):
            if not getattr(self, name).strip():
                raise ValueError(f"CompareConfig: {name} is empty; give the run directory of a finished "
                                 f"{'pipeline' if name == 'pipeline_dir' else 'adv-rounds'} job")
        if self.n_boot < 1:
            raise ValueError("CompareConfig: n_boot must be >= 1 (2000 gives intervals within ~0.5 point)")

    def placed(self, runtime: Runtime) -> Runtime:
        """This job's placement with ``runtime``'s seed: a stage repeats its run's draws wherever it runs."""
        return dataclasses.replace(self.runtime, seed=runtime.seed)


@dataclass
class CompareResult:
    table_path: str
    success: dict                           # method -> confirmed-failure rate per sample
    failures_per_cpu_minute: dict           # method -> that
    added_pairs: int                        # per method, in the equal-pairs retraining (0: not retrained)
    seconds: float = 0.0


NEEDED_STAGES = {"pipeline": ("influence", "robustness_base", "variants_lowest_loss"),   # the stages this job reads
                 "adv-rounds": ("robustness_base", "attack_r1")}


def comparable(path: str | Path, kind: str) -> bool:
    """Whether the ``kind`` run at ``path`` can be compared now: it succeeded, or the stages this job reads did."""
    try:
        _finished_run(Path(path).expanduser(), kind, NEEDED_STAGES[kind])
    except (ValueError, OSError):
        return False
    return True


def _finished_run(path: Path, kind: str, stages: Sequence[str]) -> dict:
    """The config of the ``kind`` run at ``path`` when it succeeded, or when the ``stages`` this job reads did (a long
    pipeline's other arms, or an attack's lambda = 0 arm, may still be running or not run yet)."""
    state = run_state(path)
    missing = [s for s in stages if run_state(path / s) != "succeeded"]
    if state != "succeeded" and (missing or not (path / "config.json").is_file()):
        raise ValueError(f"{path} is not a finished {kind} run (state {state or 'missing'!r}; not finished: "
                         f"{', '.join(missing) or 'its config'}); pick the run directory of a {kind} job whose stages "
                         f"{', '.join(stages)} succeeded")
    return read_json(path / "config.json")


def reform_pairs_source(pipeline: dict, variants_dir: Path) -> str:
    """The pairs the pipeline's reform arm trained on (its config as a dict): the approved file when one was given,
    else the variants' new pairs, less those judged inappropriate when the pipeline filtered them."""
    if pipeline.get("approved"):
        return pipeline["approved"]
    return str(variants_dir / ("augment_appropriate.jsonl" if pipeline.get("filter_inappropriate") else "augment.jsonl"))


def _same_file(a: str, b: str) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _count(path: str | Path) -> int:
    with open(path, encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


def _pair_sample(source: str, n: int, out: Path, seed: int) -> str:
    """``source`` itself when it holds n pairs, else a seeded sample of n of them (in their order) at ``out``."""
    with open(source, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    if len(rows) == n:
        return source
    keep = sorted(random.Random(seed).sample(range(len(rows)), n))
    write_jsonl(out, [rows[i] for i in keep])
    return str(out)


def _with_prompt_text(rows: list[dict]) -> list[dict]:
    return [{**r, "prompt_text": hh_text(r["prompt"])} for r in rows]


def _outcome(result: CompareResult) -> str:
    return "; ".join(f"{m}: {v:.1%} of samples are confirmed failures" for m, v in result.success.items())


@job("reading the runs", done=_outcome)
def run_compare(config: CompareConfig, run: RunDir) -> CompareResult:
    """Judge, retrain on equal pairs, cross-attack, and write ``comparison.json``; see the module docstring."""
    P, A = Path(config.pipeline_dir).expanduser(), Path(config.rounds_dir).expanduser()
    start = time.perf_counter()
    pipe = _finished_run(P, "pipeline", NEEDED_STAGES["pipeline"])
    _finished_run(A, "adv-rounds", NEEDED_STAGES["adv-rounds"])
    rounds = read_rounds_config(A)
    attack: AttackConfig = rounds.attack
    report = read_json(P / "report.json", {}) or {}
    base = next((m["checkpoint"] for m in report.get("models", []) if m["name"] == "base"), "")
    variants_dir = P / "variants_lowest_loss"
    if not (A / "attack_r1" / SAMPLES_FILE).is_file() or not (variants_dir / "variants.jsonl").is_file():
        raise ValueError("the runs lack what is compared: the pipeline's variants_lowest_loss/variants.jsonl and the "
                         f"rounds' attack_r1/{SAMPLES_FILE} (an attack from before samples were judged); run them again")
    stages = Stages(run, total=1 + 4 * config.equal_pairs + 3 * config.cross_attacks + 2 * config.same_prompts)
    judge = dict(judge_rm=attack.judge_rm, base_perplexity=read_json(A / "attack_r1" / "metrics.json")["base_perplexity"],
                 confirm=attack.confirm, runtime=config.runtime)

    # REFORM's raise variants and Adv-RM's round-1 fresh samples, judged alike
    stages("judge_reform", judge_variants, JudgeVariantsConfig(str(variants_dir / "variants.jsonl"), **judge))
    reform = _with_prompt_text(read_samples(run.path / "judge_reform"))
    fresh = _with_prompt_text(read_samples(A / "attack_r1", "fresh"))
    texts = {s["text"] for s in fresh}
    kept = _with_prompt_text([k for k in read_kept(A / "attack_r1") if k["text"] not in texts])
    cpu = [read_json(d / "metrics.json", {}) or {} for d in (P / "influence", variants_dir, A / "attack_r1")]
    recorded = all("cpu_seconds" in m for m in cpu)
    runs = [MethodRun(REFORM, reform, reform, cpu[0].get("cpu_seconds", float("nan")) + cpu[1].get("cpu_seconds", float("nan"))),
            MethodRun(ADVRM, fresh, fresh + kept, cpu[2].get("cpu_seconds", float("nan")))]
    prompts = [{s["prompt_text"] for s in r.samples} for r in runs]
    rob_base = [read_json(d / "robustness_base" / "config.json", {}) or {} for d in (P, A)]
    checks = [{"check": "same base RM", "ok": bool(base) and _same_file(base, attack.target_rm),
               "detail": f"pipeline {base}; attack {attack.target_rm}"},
              {"check": "same held-out pairs", "ok": all(rob_base) and _same_file(rob_base[0]["data"], rob_base[1]["data"])
               and rob_base[0]["rows"] == rob_base[1]["rows"],
               "detail": "; ".join(f"{n}: {c.get('data', '?')} rows {c.get('rows', '?')!r}"
                                   for n, c in zip(("pipeline", "rounds"), rob_base))},
              {"check": "same prompts", "ok": prompts[0] == prompts[1],
               "detail": f"{len(prompts[0] & prompts[1])} shared of {len(prompts[0])} (REFORM) and {len(prompts[1])} (Adv-RM)"},
              {"check": "same judge and rules", "ok": True,
               "detail": f"judge {attack.judge_rm or 'none'}; rules {attack.confirm.rules}"},
              {"check": "CPU time recorded", "ok": recorded, "detail": "influence + variants (REFORM), the round-1 attack "
               "with its RL (Adv-RM); the penalty RMs' training is not counted"}]

    # the same number of added pairs: retrain both, evaluate on the rounds' held-out pairs
    hardened: dict[str, str] = {}
    retrained: dict[str, Any] = {}
    measured: dict[str, Path] = {}          # each retrained RM's robustness run: its indicators are in its metrics
    if config.equal_pairs:
        sources = {REFORM: reform_pairs_source(pipe, variants_dir), ADVRM: str(A / "pairs_r1.jsonl")}
        counts = {m: _count(p) if Path(p).is_file() else 0 for m, p in sources.items()}
        n = min(counts.values())
        checks.append({"check": "same number of added pairs", "ok": n > 0,
                       "detail": f"{n} each ({', '.join(f'{m} had {c}' for m, c in counts.items())})"})
        if n == 0:
            stages.skip(4 + 2 * config.cross_attacks)
        else:
            base_scores = read_pair_scores(A / "robustness_base")
            retrained["base"] = (0, base_scores)
            measured["base"] = A / "robustness_base"
            for method, own, slug in ((REFORM, P / "retrain_reform", "reform"), (ADVRM, A / "retrain_r1", "advrm")):
                pairs = _pair_sample(sources[method], n, run.path / f"pairs_{slug}.jsonl", config.runtime.seed)
                recipe = rounds.recipe()
                train = retrain_config(recipe, "scratch", attack.target_rm, pairs, runtime=config.placed(recipe.runtime))
                got = finished(own, train)
                if got is None:
                    got = stages(f"retrain_{slug}", train_reward_model, train, ("judge_reform",))
                else:
                    stages.skip(1)
                    run.log(f"{method}: the RM retrained on the same {n} pairs is {own}: used as it is")
                hardened[method] = got["checkpoint"]
                rob = rounds.robustness_config(got["checkpoint"])
                rob = dataclasses.replace(rob, runtime=config.placed(rob.runtime))
                where = next((d for d in (P / "robustness_reform", A / "robustness_r1") if finished(d, rob) is not None), None)
                if where is None:
                    stages(f"robustness_{slug}", evaluate_robustness, rob, (f"retrain_{slug}",))
                    where = run.path / f"robustness_{slug}"
                else:
                    stages.skip(1)
                retrained[method] = (n, read_pair_scores(where))
                measured[method] = where
            retrained = {k: v for k, v in retrained.items() if v[1] is not None}
    spurious = {k: (retrained[k][0], (read_json(measured[k] / "metrics.json", {}) or {}).get("indicators"))
                for k in retrained}

    def raise_decoding(data: Path, **changes: Any) -> GenerateVariantsConfig:
        """The pipeline's own decoding, "raise" only, of every pair in ``data`` (no influence selection)."""
        decode = config_from_dict(GenerateVariantsConfig, read_json(variants_dir / "config.json"))
        return dataclasses.replace(decode, data=str(data), rows="", fraction=1.0, scored="", directions="raise",
                                   runtime=config.placed(decode.runtime), **changes)

    # cross-attacks: each method against the RM the other one hardened
    cross = [("REFORM decoding", "base", reform), ("Adv-RM attack", "base", fresh)]
    if config.cross_attacks and len(hardened) == 2:
        write_reform_pairs(P, run.path / "reform_pairs.jsonl")
        stages("variants_vs_advrm", generate_variants,
               raise_decoding(run.path / "reform_pairs.jsonl", reward_model=hardened[ADVRM]), ("retrain_advrm",))
        stages("judge_vs_advrm", judge_variants,
               JudgeVariantsConfig(str(run.path / "variants_vs_advrm" / "variants.jsonl"), **judge), ("variants_vs_advrm",))
        cross.append(("REFORM decoding", "Adv-RM's RM", _with_prompt_text(read_samples(run.path / "judge_vs_advrm"))))
        stages("attack_vs_reform", run_attack,
               dataclasses.replace(attack, target_rm=hardened[REFORM], runtime=config.placed(attack.runtime)), ("retrain_reform",))
        cross.append(("Adv-RM attack", "REFORM's RM", _with_prompt_text(read_samples(run.path / "attack_vs_reform", "fresh"))))
    elif config.cross_attacks:
        stages.skip(3)

    same: list[MethodRun] = []
    if config.same_prompts:  # REFORM's decoding on the prompts the attack attacked, against the base
        n_attack = write_attack_pairs(attack, run.path / "attack_pairs.jsonl")
        out = stages("variants_attack_prompts", generate_variants, raise_decoding(run.path / "attack_pairs.jsonl"),
                     note=f" (the attack's {n_attack} prompts)")
        stages("judge_attack_prompts", judge_variants,
               JudgeVariantsConfig(str(run.path / "variants_attack_prompts" / "variants.jsonl"), **judge), ("variants_attack_prompts",))
        on_attack = _with_prompt_text(read_samples(run.path / "judge_attack_prompts"))
        same = [MethodRun(REFORM, on_attack, on_attack, float(out.get("cpu_seconds", float("nan")))), runs[1]]

    table = comparison_table(runs, retrained=retrained, spurious=spurious, cross=cross, checks=checks, same_prompts=same,
                             n_boot=config.n_boot, seed=config.runtime.seed)
    atomic_write_json(run.path / TABLE_FILE, table)
    per = {r["method"]: r["value"] for r in table["success"] if r["unit"] == "sample" and r["method"] in (REFORM, ADVRM)}
    eff = {r["method"]: r["value"] for r in table["efficiency"]}
    return CompareResult(str(run.path / TABLE_FILE), per, eff, n if config.equal_pairs else 0, time.perf_counter() - start)


def write_attack_pairs(attack: AttackConfig, out: str | Path) -> int:
    """The pairs an attack attacks (the first ``prompts`` of its data rows) as TRL rows at ``out``: for REFORM's
    decoding of the same prompts -> how many."""
    pairs = select_rows(load_preferences(attack.data, skip_invalid=attack.skip_invalid).pairs, attack.rows)[: attack.prompts]
    write_jsonl(out, [{"prompt": list(p.prompt), "chosen": p.chosen, "rejected": p.rejected} for p in pairs])
    return len(pairs)


def write_reform_pairs(pipeline_dir: str | Path, out: str | Path) -> int:
    """The pairs a pipeline's REFORM decoded "raise" variants from (its influential pairs), as TRL rows
    at ``out``: the prompts and y+ to attack so that both methods face the same prompts -> how many."""
    source: dict[str, dict] = {}
    for v in read_json_lines(Path(pipeline_dir) / "variants_lowest_loss" / "variants.jsonl"):
        if v["direction"] == "raise":
            source.setdefault(v["pair_id"], {"prompt": v["prompt"], "chosen": v["original_chosen"], "rejected": v["original_rejected"]})
    write_jsonl(out, list(source.values()))
    return len(source)


def read_json_lines(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def read_table(run_dir: str | Path) -> dict | None:
    """The comparison table of a finished compare run, None before it exists."""
    return read_json(Path(run_dir) / TABLE_FILE)
