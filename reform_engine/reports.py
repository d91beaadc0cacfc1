"""What the jobs produced, as tables a page can draw: robustness results of finished runs (base vs
retrained vs ablations), the run history, the stages of a running pipeline, the loss curves of the reward
models a run trained, and the end of a job's logs.

Results come from the run directories the store points at: a ``pipeline``, ``retrain`` or ``adv-rounds`` job's
``report.json`` (one row per model), a ``robustness`` job's ``metrics.json`` (one model). Frames:

    summary   run, job_id, kind, model, label, checkpoint, clean_accuracy, mean_drop, drop_vs_base
    drops     run, job_id, model, label, perturbation, drop          (long format: one bar per cell)
    arms      one report per run (:func:`arm_table`, :func:`arm_markdown` for benchmarks/RESULTS.md): per arm the
              added pairs, accuracy, drops and ratio to the base with intervals, the best-of-N win rate (the
              run's own ``bon_<arm>`` stage, else a ``best-of-n`` job on it), the spurious indicators and the stage times
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .runs import read_json

RESULT_KINDS = ("pipeline", "retrain", "robustness", "adv-rounds")    # jobs whose results are robustness tables
SUMMARY_COLUMNS = ["run", "job_id", "kind", "model", "label", "checkpoint", "n_pairs", "clean_accuracy", "clean_accuracy_low",
                   "clean_accuracy_high", "mean_drop", "mean_drop_low", "mean_drop_high", "drop_vs_base", "drop_vs_base_low",
                   "drop_vs_base_high"]
DROP_COLUMNS = ["run", "job_id", "model", "label", "perturbation", "drop", "low", "high"]
HISTORY_COLUMNS = ["id", "kind", "state", "progress", "message", "created_at", "finished_at", "minutes", "rerun_of", "run_dir"]


def checkpoint_name(path: str) -> str:
    """A short name for a checkpoint: its run directory's name for ``.../<run>/checkpoint``."""
    p = Path(str(path).rstrip("/"))
    return p.parent.name if p.name == "checkpoint" and p.parent.name else p.name or str(path)


def job_results(job: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """(summary rows, drop rows) of one finished job of a RESULT_KIND; ([], []) while it has none."""
    run_dir = Path(job["run_dir"]) if job.get("run_dir") else None
    if run_dir is None or job.get("state") != "succeeded" or job.get("kind") not in RESULT_KINDS:
        return [], []
    run = f"#{job['id']} {job['kind']}"
    if job["kind"] == "robustness":
        metrics, config = read_json(run_dir / "metrics.json"), read_json(run_dir / "config.json", {}) or {}
        if not isinstance(metrics, dict) or "clean_win_rate" not in metrics:
            return [], []
        model = checkpoint_name(config.get("reward_model", ""))
        models = [{"name": model, "checkpoint": config.get("reward_model", ""), "clean_accuracy": metrics["clean_win_rate"],
                   "mean_drop": metrics["mean_drop"], "drops": {p["name"]: p["drop"] for p in metrics["per_perturbation"]}}]
    else:
        report = read_json(run_dir / "report.json")
        if not isinstance(report, dict) or "models" not in report:
            return [], []
        models = report["models"]
    base = next((m for m in models if m["name"] == "base"), None)
    summary, drops = [], []
    for m in models:
        label = f"#{job['id']} {m['name']}"
        ratio = m["mean_drop"] / base["mean_drop"] if base is not None and base["mean_drop"] else None
        ci = m.get("intervals") or {}   # older reports (and robustness jobs) have none: their ends stay empty
        summary.append({"run": run, "job_id": int(job["id"]), "kind": job["kind"], "model": m["name"], "label": label,
                        "checkpoint": m["checkpoint"], "n_pairs": m.get("n_pairs"), "clean_accuracy": m["clean_accuracy"],
                        **_ends("clean_accuracy", ci.get("clean_accuracy")), "mean_drop": m["mean_drop"],
                        **_ends("mean_drop", ci.get("mean_drop")), "drop_vs_base": ratio,
                        **_ends("drop_vs_base", (ci.get("vs_base") or {}).get("drop_ratio"))})
        drops += [{"run": run, "job_id": int(job["id"]), "model": m["name"], "label": label, "perturbation": p, "drop": d,
                   **_ends("", (ci.get("drops") or {}).get(p))} for p, d in m["drops"].items()]
    return summary, drops


def _ends(column: str, interval: dict | None) -> dict:
    """{column_low, column_high} (``low``/``high`` for an empty column) of an interval dict, None without one."""
    prefix = f"{column}_" if column else ""
    interval = interval or {}
    return {f"{prefix}low": interval.get("low"), f"{prefix}high": interval.get("high")}


def results_frames(jobs: Sequence[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The summary and drop frames of several finished jobs together (oldest job first)."""
    summary, drops = [], []
    for job in sorted(jobs, key=lambda j: j["id"]):
        s, d = job_results(job)
        summary += s
        drops += d
    return pd.DataFrame(summary, columns=SUMMARY_COLUMNS), pd.DataFrame(drops, columns=DROP_COLUMNS)


def finished_result_jobs(store) -> list[dict[str, Any]]:
    """Succeeded jobs that have a robustness table to show, newest first."""
    jobs = store.list_jobs()
    jobs = jobs[jobs["kind"].isin(RESULT_KINDS) & (jobs["state"] == "succeeded")]
    return [job for job in jobs.to_dict("records") if job_results(job)[0]]


def history_frame(store, kinds: Sequence[str] | None = None) -> pd.DataFrame:
    """The run history (newest first): one row per job with how long it ran, in minutes."""
    jobs = store.list_jobs()
    if kinds is not None:
        jobs = jobs[jobs["kind"].isin(list(kinds))]
    if jobs.empty:
        return pd.DataFrame(columns=HISTORY_COLUMNS)
    jobs = jobs.copy()
    end = jobs["finished_at"].fillna(jobs["updated_at"])
    jobs["minutes"] = ((end - jobs["started_at"]).dt.total_seconds() / 60).round(2)
    return jobs[HISTORY_COLUMNS].reset_index(drop=True)


def latest_job(store, kind: str, run_dir: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The newest job of ``kind`` (in ``run_dir``, when given), or None."""
    jobs = store.list_jobs(kind)
    if run_dir is not None:
        jobs = jobs[jobs["run_dir"] == str(Path(run_dir).expanduser().resolve())]
    return None if jobs.empty else store.get_job(int(jobs["id"].iloc[0]))


def stage_status(run_dir: str | os.PathLike | None) -> list[dict[str, Any]]:
    """The stages of a pipeline or retrain run (its sub-directories with a status.json), in the order
    they started: name, state, progress, message."""
    if not run_dir or not Path(run_dir).is_dir():
        return []
    stages = []
    for d in Path(run_dir).iterdir():
        status = read_json(d / "status.json") if d.is_dir() and not d.name.startswith(".") else None
        if isinstance(status, dict):
            stages.append({"stage": d.name, "state": status.get("state", ""), "progress": float(status.get("progress") or 0.0),
                           "message": status.get("message", ""), "_t": (d / "config.json").stat().st_mtime
                           if (d / "config.json").exists() else 0.0})
    return [{k: v for k, v in s.items() if k != "_t"} for s in sorted(stages, key=lambda s: (s["_t"], s["stage"]))]


def loss_curves(run_dir: str | os.PathLike | None) -> dict[str, list[float]]:
    """The training loss per step of each reward model a run trained: the run's own ``metrics.json``
    (a train-rm job; named after the run directory) and its stages' (a pipeline's base and retrain; named
    after the stage), in the order they started -> {name: [loss of step 1, 2, …]}; {} when none trained."""
    if not run_dir or not Path(run_dir).is_dir():
        return {}
    run_dir = Path(run_dir)
    curves = {}
    for name, metrics_path in [(run_dir.name, run_dir / "metrics.json"),
                               *((s["stage"], run_dir / s["stage"] / "metrics.json") for s in stage_status(run_dir))]:
        metrics = read_json(metrics_path)
        if isinstance(metrics, dict) and metrics.get("loss_curve"):
            curves[name] = [float(x) for x in metrics["loss_curve"]]
    return curves


CACHE_LINE = "trunk cache: "   # how trunk_cache.TrunkCache.report's line starts in a job's log


def trunk_caches(run_dir: str | os.PathLike | None) -> tuple[list[dict[str, Any]], list[str]]:
    """The trunk caches a run and its stages use, as they are on disk now (trunk_cache.usage, one row per
    directory and trunk), and the cache's lines of their logs (hits, misses, size per job or stage), oldest
    first -> (rows, lines); ([], []) for a run that used none."""
    from .trunk_cache import run_setting_dirs, usage

    if not run_dir or not Path(run_dir).is_dir():
        return [], []
    run_dir = Path(run_dir)
    runs = [run_dir, *(run_dir / s["stage"] for s in stage_status(run_dir))]
    dirs = dict.fromkeys(d.resolve() for r in runs for d in run_setting_dirs(r))
    lines = []
    for r in runs:
        try:
            text = (r / "log.txt").read_text(errors="replace")
        except OSError:
            continue
        lines += [line for line in text.splitlines() if CACHE_LINE in line and " hits, " in line]
    return [row for d in dirs for row in usage(d)], sorted(lines)


def log_tail(job: dict[str, Any], max_lines: int = 40, max_bytes: int = 16_384) -> str:
    """The last lines of a job's logs: its own ``log.txt`` (what it did) and ``process.log`` (its
    output, with any traceback), each at most ``max_lines`` lines from its last ``max_bytes`` bytes."""
    parts = []
    run_dir = Path(job["run_dir"]) if job.get("run_dir") else None
    paths = [run_dir / "log.txt"] if run_dir else []
    if job.get("log_path"):
        paths.append(Path(job["log_path"]))
    for path in paths:
        try:
            with open(path, "rb") as fh:
                fh.seek(max(0, os.path.getsize(path) - max_bytes))
                raw = fh.read().decode("utf-8", "replace").split("\n")
        except OSError:
            continue
        # progress bars redraw with carriage returns: keep only each line's last state
        lines = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in raw]
        lines = [line for line in lines if line.strip()][-max_lines:]
        if lines:
            parts.append(f"==> {path.name} <==\n" + "\n".join(lines))
    return "\n\n".join(parts)


# --------------------------------------------------------------------------- one report per run

BEST_OF_N_KIND = "best-of-n"
# what each stage does, by its name's prefix: train an RM, find new pairs for it, or evaluate it
STAGE_KINDS = {"base": "train", "retrain": "train", "influence": "find", "variants": "find", "attack": "find", "judge": "find",
               "robustness": "eval", "bon": "eval"}
# a stage's name after its prefix -> the arm it builds, where they differ ('retrain' alone: the retrain job's)
STAGE_ALIASES = {"lowest_loss": "reform", "": "retrained"}
SHARED_STAGES = {"influence": ("reform", "random", "highest_loss")}   # one stage every one of these arms is built on
REFORM_ARM = "reform"   # reform_filtered, reform_finetune, ...: the reform arm's pairs, other training: built on its find stages
EQUAL_SUFFIX = "_equal"  # random_equal, highest_loss_equal: a sample of that arm's pairs, built on its find stages
INDICATORS = ("extreme_negative_share", "length_corr")        # the seed's spurious-correlation checks, before (base) and after


def best_of_n_result(run_dir: str | os.PathLike) -> dict | None:
    """The result (metrics.json) of a finished best-of-n run, None when there is none: best_of_n.BestOfNResult's
    fields (rm_a, rm_b, win_rate, low, high, prompts, same_pick, ...)."""
    metrics = read_json(Path(run_dir) / "metrics.json")
    return metrics if isinstance(metrics, dict) and "win_rate" in metrics and "rm_b" in metrics else None


def best_of_n_results(jobs: Sequence[dict[str, Any]]) -> list[dict]:
    """The results of the succeeded best-of-n jobs among ``jobs`` (:func:`best_of_n_result`), newest
    first, each with its ``job_id``."""
    out = []
    for job in sorted(jobs, key=lambda j: -int(j["id"])):
        if job.get("kind") != BEST_OF_N_KIND or job.get("state") != "succeeded" or not job.get("run_dir"):
            continue
        result = best_of_n_result(job["run_dir"])
        if result is not None:
            out.append({**result, "job_id": int(job["id"])})
    return out


BEST_OF_N_COLUMNS = ["job_id", "rm_a", "rm_b", "judge", "n", "prompts", "win_rate", "low", "high", "wins", "losses", "ties",
                     "same_pick", "skipped"]


def best_of_n_frame(results: Sequence[dict]) -> pd.DataFrame:
    """best_of_n_results as a table, one row per run (RMs by their short names: checkpoint_name)."""
    return pd.DataFrame([{**{c: r.get(c) for c in BEST_OF_N_COLUMNS}, "rm_a": checkpoint_name(r["rm_a"]),
                          "rm_b": checkpoint_name(r["rm_b"]), "judge": checkpoint_name(r["judge_rm"])} for r in results],
                        columns=BEST_OF_N_COLUMNS)


def _same_path(a: str, b: str) -> bool:
    return bool(a) and bool(b) and Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _stage_arm(stage: str) -> tuple[str, str] | None:
    """(what the stage does, the arm it builds) from its name: 'retrain_reform' -> ('train', 'reform')."""
    prefix, _, rest = stage.partition("_")
    kind = STAGE_KINDS.get(prefix)
    if kind is None:
        return None
    if prefix == "base":
        return kind, "base"
    return kind, STAGE_ALIASES.get(rest, rest.replace("r", "round ", 1) if rest[:1] == "r" and rest[1:].isdigit() else rest)


def stage_seconds(stages: Sequence[dict], arm: str) -> dict[str, float]:
    """Wall seconds of the stages that built and evaluated ``arm``, by what they do -> {train, find, eval}
    (eval: its robustness and best-of-N). A stage several arms are built on (the influence ranking, the
    reform arm's variants for its ablations) counts in each; a reused stage counts the time it took when it ran."""
    found_as = {arm} | ({REFORM_ARM} if arm.startswith(f"{REFORM_ARM}_") else set()) \
        | ({arm.removesuffix(EQUAL_SUFFIX)} if arm.endswith(EQUAL_SUFFIX) else set())
    out = {"train": 0.0, "find": 0.0, "eval": 0.0}
    for s in stages:
        found = _stage_arm(s["name"])
        if found is not None and (found[1] == arm or (found[0] == "find" and found[1] in found_as)
                                  or found_as & set(SHARED_STAGES.get(s["name"], ()))):
            out[found[0]] += float(s.get("seconds") or 0.0)
    return out


def own_best_of_n(run_dir: str | os.PathLike, stages: Sequence[dict]) -> dict[str, dict]:
    """The results of a run's own best-of-N stages (a pipeline's ``bon_<arm>``) among ``stages`` (its
    report's: the ones this run ran or reused, so a stage directory left from another config is not read)
    -> {arm: best_of_n_result}."""
    out = {}
    for s in stages:
        found = _stage_arm(s["name"])
        result = best_of_n_result(Path(run_dir) / s["name"]) if found and s["name"].startswith("bon_") else None
        if result is not None:
            out[found[1]] = result
    return out


SELECTIONS = {"lowest_loss": "lowest loss (the method)", "random": "random", "highest_loss": "highest loss"}
VARIANT_COLUMNS = ("variants", "inversions", "success_rate", "lower_inversions", "raise_inversions", "not_fluent", "truncated",
                   "inappropriate", "ordered_wrong", "duplicates")


def variants_table(run_dir: str | os.PathLike, run: str = "") -> pd.DataFrame:
    """What the decoding found for each selection of a pipeline run (its report.json's variant stats), one row per
    selection: variants decoded, true inversions and their rate, by direction, and the flags counted over the
    inversions (truncated, inappropriate, ordered wrong: from a source pair the base already orders wrong), with the
    variants the fluency flag refused and the near-duplicates dropped. A count a report written before it existed
    lacks is None, except "ordered wrong", counted from the stage's variants.jsonl. Empty when the run decoded none."""
    report = read_json(Path(run_dir) / "report.json")
    stats = report.get("variants") if isinstance(report, dict) else None
    rows = []
    for strategy, st in (stats or {}).items():
        if st.get("ordered_wrong") is None:
            st = {**st, "ordered_wrong": _ordered_wrong(Path(run_dir) / f"variants_{strategy}" / "variants.jsonl")}
        by_dir = st.get("by_direction") or {}
        rows.append({"run": run or Path(run_dir).name, "selection": SELECTIONS.get(strategy, strategy), "variants": st.get("n"),
                     "inversions": st.get("inversions"), "success_rate": st.get("success_rate"),
                     "lower_inversions": (by_dir.get("lower") or {}).get("inversions"),
                     "raise_inversions": (by_dir.get("raise") or {}).get("inversions"),
                     **{k: st.get(k) for k in ("not_fluent", "truncated", "inappropriate", "ordered_wrong", "duplicates")}})
    return pd.DataFrame(rows, columns=["run", "selection", *VARIANT_COLUMNS])


def _ordered_wrong(path: Path) -> int | None:
    """Inversions in a variants.jsonl decoded from a source pair the RM ordered wrong; None without the file."""
    import json

    from .inversions import ordered_wrong

    try:
        with open(path, encoding="utf-8") as fh:
            records = [json.loads(line) for line in fh if line.strip()]
    except (OSError, ValueError):
        return None
    return sum(bool(r.get("is_inversion")) and ordered_wrong(r.get("direction"), r.get("r_chosen"), r.get("r_rejected"))
               for r in records)


def variants_markdown(table: pd.DataFrame) -> str:
    """:func:`variants_table` as Markdown, for benchmarks/RESULTS.md."""
    head = ["run", "selection", "variants", "inversions (rate)", "lower / raise", "not fluent", "truncated", "inappropriate",
            "ordered wrong", "near-duplicates"]
    count = lambda x: "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{int(x)}"  # noqa: E731
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table.to_dict("records"):
        rate = "" if r["success_rate"] is None else f" ({r['success_rate']:.0%})"
        lines.append(f"| {r['run']} | {r['selection']} | {count(r['variants'])} | {count(r['inversions'])}{rate} | "
                     f"{count(r['lower_inversions'])} / {count(r['raise_inversions'])} | "
                     + " | ".join(count(r[k]) for k in ("not_fluent", "truncated", "inappropriate", "ordered_wrong", "duplicates")) + " |")
    return "\n".join(lines) + "\n"


def arm_table(run_dir: str | os.PathLike, best_of_n: Sequence[dict] = (), run: str = "") -> pd.DataFrame:
    """One row per arm (model) of a pipeline, retrain or adv-rounds run, from its ``report.json``:
    added pairs, held-out pairs, clean accuracy and mean drop with their 95% intervals, each perturbation's
    drop (``drop:<name>`` with ``_low``/``_high``), the ratio of its mean drop to the base's, the
    differences of its mean drop and clean accuracy from the base's, each with its paired interval, the best-of-N win rate against the base (the run's own best-of-N stage for that arm,
    :func:`own_best_of_n`, else the newest of ``best_of_n``, results of best_of_n_results, whose RM A is
    this run's base and RM B this arm; ``bon_job`` is None for the run's own), the spurious indicators and
    the seconds of its stages by what they did. Empty when the run has no report."""
    report = read_json(Path(run_dir) / "report.json")
    if not isinstance(report, dict) or not report.get("models"):
        return pd.DataFrame()
    models = report["models"]
    base = next((m for m in models if m["name"] == "base"), None)
    own = own_best_of_n(run_dir, report.get("stages") or [])
    rows = []
    for m in models:
        ci = m.get("intervals") or {}
        row = {"run": run or Path(run_dir).name, "arm": m["name"], "checkpoint": m["checkpoint"],
               "added_pairs": m.get("augment_pairs", 0), "n_pairs": m.get("n_pairs"),
               "clean_accuracy": m["clean_accuracy"], **_ends("clean_accuracy", ci.get("clean_accuracy")),
               "mean_drop": m["mean_drop"], **_ends("mean_drop", ci.get("mean_drop"))}
        for p, d in m["drops"].items():
            row[f"drop:{p}"] = d
            row.update(_ends(f"drop:{p}", (ci.get("drops") or {}).get(p)))
        is_base = base is None or m is base
        vs_base = {} if is_base else ci.get("vs_base") or {}
        row["drop_vs_base"] = None if is_base or not base["mean_drop"] else m["mean_drop"] / base["mean_drop"]
        row.update(_ends("drop_vs_base", vs_base.get("drop_ratio")))
        # the other two read-outs against the base, paired on the same held-out pairs
        row["clean_vs_base"] = None if is_base else m["clean_accuracy"] - base["clean_accuracy"]
        row.update(_ends("clean_vs_base", vs_base.get("clean_accuracy")))
        row["drop_change"] = None if is_base else m["mean_drop"] - base["mean_drop"]
        row.update(_ends("drop_change", vs_base.get("mean_drop")))
        bon = own.get(m["name"]) if m is not base else None
        bon = bon or next((b for b in best_of_n if base is not None and _same_path(b.get("rm_a", ""), base["checkpoint"])
                           and _same_path(b.get("rm_b", ""), m["checkpoint"])), None)
        row.update({"bon_win_rate": bon["win_rate"] if bon else None, "bon_win_rate_low": bon["low"] if bon else None,
                    "bon_win_rate_high": bon["high"] if bon else None, "bon_prompts": bon["prompts"] if bon else None,
                    "bon_same_pick": bon["same_pick"] if bon else None, "bon_job": bon.get("job_id") if bon else None})
        row.update({k: (m.get("indicators") or {}).get(k) for k in INDICATORS})
        row.update({f"seconds_{k}": v for k, v in stage_seconds(report.get("stages") or [], m["name"]).items()})
        rows.append(row)
    return pd.DataFrame(rows).astype(object).where(lambda f: f.notna(), None)


def _number(x: Any, fmt: str) -> str:
    """``x`` formatted, '—' when missing; counts read back as floats (a column with gaps) print as whole numbers."""
    if x is None or x != x:
        return "—"
    return format(int(x) if fmt == "d" else x, fmt)


def _with_interval(row: dict, column: str, fmt: str) -> str:
    value, low, high = row.get(column), row.get(f"{column}_low"), row.get(f"{column}_high")
    if value is None or value != value:
        return "—"
    if low is None or high is None or low != low or high != high:
        return format(value, fmt)
    return f"{format(value, fmt)} [{format(low, fmt)}, {format(high, fmt)}]"


def arm_cells(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`arm_table` as the text a reader sees, one column per heading: intervals in brackets, '—'
    where a value is missing, seconds as train / find / eval (the app's table and :func:`arm_markdown`)."""
    if table.empty:
        return pd.DataFrame()
    perturbations = [c.split(":", 1)[1] for c in table.columns if c.startswith("drop:") and not c.endswith(("_low", "_high"))]
    rows = []
    for row in table.to_dict("records"):
        bon = _with_interval(row, "bon_win_rate", ".3f")
        if bon != "—":
            bon += f" ({_number(row['bon_prompts'], 'd')}; {_number(row['bon_same_pick'], 'd')})"
        seconds = [row[f"seconds_{k}"] for k in ("train", "find", "eval")]
        rows.append({"run": str(row["run"]), "arm": str(row["arm"]), "added pairs": _number(row["added_pairs"], "d"),
                     "held-out pairs": _number(row["n_pairs"], "d"),
                     "clean accuracy [95% CI]": _with_interval(row, "clean_accuracy", ".3f"),
                     "mean drop [95% CI]": _with_interval(row, "mean_drop", "+.3f"),
                     **{f"drop: {p}": _with_interval(row, f"drop:{p}", "+.3f") for p in perturbations},
                     "drop ÷ base [paired 95% CI]": _with_interval(row, "drop_vs_base", ".2f"),
                     "mean drop − base [paired 95% CI]": _with_interval(row, "drop_change", "+.3f"),
                     "clean − base [paired 95% CI]": _with_interval(row, "clean_vs_base", "+.3f"),
                     "BoN win vs base [95% CI] (prompts; same pick)": bon,
                     "extreme-negative share": _number(row["extreme_negative_share"], ".3f"),
                     "r(reward, length)": _number(row["length_corr"], "+.3f"),
                     "seconds train / find / eval": " / ".join(_number(x, ".1f" if (x or 0) < 10 else ".0f") for x in seconds)})
    return pd.DataFrame(rows)


def arm_markdown(table: pd.DataFrame) -> str:
    """:func:`arm_table` as a Markdown table (benchmarks/RESULTS.md): the cells of :func:`arm_cells`."""
    cells = arm_cells(table)
    if cells.empty:
        return ""
    lines = ["| " + " | ".join(cells.columns) + " |", "|" + "|".join("---" for _ in cells.columns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def versus_table(run_dir: str | os.PathLike, arm: str = "reform", seed: int = 0) -> pd.DataFrame:
    """``arm`` against every other arm of a pipeline run but the base (which :func:`arm_table` covers), on the
    same held-out pairs: the differences ``arm - other`` of mean drop and clean accuracy with paired 95%
    bootstrap intervals, from the per-pair rewards of their robustness stages (``robustness_<name>``).
    The issue's "the reform arm ahead of the random arm" is the row ``random``. Empty without such stages."""
    from .robustness import read_pair_scores, robustness_intervals

    report = read_json(Path(run_dir) / "report.json")
    names = [m["name"] for m in (report or {}).get("models", [])] if isinstance(report, dict) else []
    mine = read_pair_scores(Path(run_dir) / f"robustness_{arm}") if arm in names else None
    if mine is None:
        return pd.DataFrame()
    rows = []
    for other in names:
        theirs = read_pair_scores(Path(run_dir) / f"robustness_{other}") if other not in ("base", arm) else None
        paired = robustness_intervals(mine, theirs, seed=seed).get("vs_base") if theirs is not None else None
        if paired is None:  # not scored on the same pairs
            continue
        rows.append({"arm": arm, "versus": other, "n_pairs": paired["mean_drop"]["n"],
                     "drop_change": paired["mean_drop"]["estimate"], **_ends("drop_change", paired["mean_drop"]),
                     "clean_vs_base": paired["clean_accuracy"]["estimate"], **_ends("clean_vs_base", paired["clean_accuracy"])})
    return pd.DataFrame(rows)


def versus_cells(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`versus_table` as the text a reader sees (the app's table and :func:`versus_markdown`)."""
    return pd.DataFrame([{"run": str(r.get("run", "")), "arm": r["arm"], "versus": r["versus"],
                          "held-out pairs": _number(r["n_pairs"], "d"),
                          "mean drop, arm − other [paired 95% CI]": _with_interval(r, "drop_change", "+.3f"),
                          "clean accuracy, arm − other [paired 95% CI]": _with_interval(r, "clean_vs_base", "+.3f")}
                         for r in table.to_dict("records")])


def versus_markdown(table: pd.DataFrame) -> str:
    """:func:`versus_table` as Markdown (benchmarks/RESULTS.md); '' when empty."""
    cells = versus_cells(table)
    if cells.empty:
        return ""
    cells = cells.drop(columns="run") if not cells["run"].str.len().any() else cells
    lines = ["| " + " | ".join(cells.columns) + " |", "|" + "|".join("---" for _ in cells.columns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines) + "\n"
