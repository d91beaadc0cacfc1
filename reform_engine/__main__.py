"""Command line: ``python -m reform_engine <job> --field value ...``. Each job's flags are its
config dataclass's fields; this file only parses and calls."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing

from .runs import to_jsonable


def _flag_type(tp):
    tp = typing.get_args(tp)[0] if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", ())) else tp
    if tp is bool:
        return lambda s: {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[s.lower()]
    return tp


def _is_config(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def add_config_args(parser: argparse.ArgumentParser, cls, prefix: str = "") -> None:
    """One ``--flag`` per field; a field that is itself a config gives ``--field.sub-field`` flags."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if _is_config(hints[f.name]):
            add_config_args(parser, hints[f.name], f"{prefix}{f.name}.")
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        kwargs = {"required": True} if required else {"default": f.default}
        if hints[f.name] is bool:  # '--trust-remote-code' alone means true; '--flag false' still works
            kwargs.update(nargs="?", const=True)
        parser.add_argument(f"--{prefix.replace('_', '-')}{f.name.replace('_', '-')}", dest=prefix + f.name,
                            type=_flag_type(hints[f.name]), **kwargs, help=None if required else f"default: {f.default}")


def config_from_args(cls, args: argparse.Namespace, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: config_from_args(hints[f.name], args, f"{prefix}{f.name}.") if _is_config(hints[f.name])
                  else getattr(args, prefix + f.name) for f in dataclasses.fields(cls)})


def _jobs():
    from .adv_rounds import AdvRoundsConfig, run_adv_rounds
    from .attack import AttackConfig, run_attack
    from .compare import CompareConfig, run_compare
    from .evaluation import EvaluateRewardConfig, evaluate_reward_model
    from .influence import InfluenceConfig, find_influential
    from .inversions import GenerateVariantsConfig, generate_variants
    from .pipeline import PipelineConfig, run_pipeline
    from .retrain import RetrainConfig, run_retrain
    from .robustness import RobustnessConfig, evaluate_robustness
    from .training import TrainRewardConfig, train_reward_model

    return {"train-rm": (TrainRewardConfig, train_reward_model, "train a reward model (Bradley-Terry)"),
            "eval-rm": (EvaluateRewardConfig, evaluate_reward_model, "pairwise accuracy + length baselines"),
            "influential": (InfluenceConfig, find_influential, "rank training pairs by loss; select lowest/random/highest p%"),
            "variants": (GenerateVariantsConfig, generate_variants, "controlled decoding over the influential set + inversion filter"),
            "robustness": (RobustnessConfig, evaluate_robustness, "win-rate drop under perturbations + spurious-feature indicators"),
            "pipeline": (PipelineConfig, run_pipeline, "the REFORM loop end to end: base, influential, variants, retrain, robustness"),
            "retrain": (RetrainConfig, run_retrain, "retrain on approved pairs (scratch|finetune), then robustness of base vs retrained"),
            "attack": (AttackConfig, run_attack, "Adv-RM: an RLOO adversary against a target RM; kept samples become pairs"),
            "adv-rounds": (AdvRoundsConfig, run_adv_rounds, "Adv-RM rounds: attack, add the samples as pairs, retrain from "
                           "scratch, attack the retrained RM; robustness of every RM"),
            "compare": (CompareConfig, run_compare, "REFORM vs Adv-RM on one base RM: confirmed failures, cost, diversity, "
                        "retrained on equal pairs, cross-attacks, with bootstrap intervals")}


def _add_store_commands(sub) -> None:
    db_help = "the project database (default: $REFORM_PROJECT_DIR/reform.duckdb, or ./project_data/reform.duckdb)"
    p = sub.add_parser("backup", help="snapshot the project database (read back in full before it counts)")
    p.add_argument("--db", default=None, help=db_help)
    p.add_argument("--to", default=None, help="a new file, or a folder (default: the backups folder beside the database, "
                                              "oldest snapshots beyond REFORM_BACKUP_KEEP deleted)")
    p = sub.add_parser("restore", help="put a snapshot in place of the project database, keeping the current file aside")
    p.add_argument("--db", default=None, help=db_help)
    p.add_argument("--from", dest="source", default=None, help="the snapshot (default: the newest one that reads back)")
    p.add_argument("--list", action="store_true", help="only list the snapshots, newest first")
    p = sub.add_parser("export-decisions", help="every decision (approve, reject, edit) with note, reviewer and time")
    p.add_argument("--db", default=None, help=db_help)
    p.add_argument("--to", required=True, help="a .jsonl or .parquet file")


def _run_store_command(args) -> int:
    import dataclasses
    from pathlib import Path

    from .backups import BackupConfig, describe, list_backups
    from .store import Store, StoreError, default_store_path, restore_database

    db = Path(args.db or default_store_path()).expanduser().resolve()
    config = dataclasses.replace(BackupConfig.from_env(), on_start=False)  # a CLI call is no start of the app
    try:
        if args.command == "restore":
            if args.list:
                for path in list_backups(db, config):
                    d = describe(path, db)
                    print(f"{d['taken (UTC)']}  {d['reason']:<6}  {d['MB']:>8.3f} MB  {path}")
                return 0
            done = restore_database(db, args.source, config=config)
            for why in done.skipped:
                print(f"skipped {why}")
            print(f"restored {db} from {done.restored_from}"
                  + (f"; the previous file is kept at {done.kept_aside}" if done.kept_aside else ""))
            return 0
        if not db.is_file():
            raise StoreError(f"there is no database at {db}.", fix="pass --db, or set REFORM_PROJECT_DIR.")
        store = Store(db, backup=config)
        if args.command == "backup":
            print(store.backup(args.to))
        else:
            print(f"{store.export_decisions(args.to)} decision(s) written to {args.to}")
        return 0
    except (StoreError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reform_engine", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("convert-model", help="convert the packaged SmolLM2 GGUF to cached safetensors (once)")
    trace = sub.add_parser("trace", help="per-token reward trace of one response")
    trace.add_argument("--reward-model", required=True)
    trace.add_argument("--prompt", required=True)
    trace.add_argument("--response", required=True)
    trace.add_argument("--device", default="auto")
    trace.add_argument("--trust-remote-code", action="store_true",
                       help="let Python code shipped with the model run (auto_map); only for models you trust")
    _add_store_commands(sub)
    sub.add_parser("queue", help="look at the project's jobs (REFORM_PROJECT_DIR) and start queued ones that have a free slot")
    jobs = _jobs()
    for name, (cls, _, help_text) in jobs.items():
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--run-dir", required=True, help="where config, status, log, metrics and checkpoint go")
        add_config_args(p, cls)
    args = parser.parse_args(argv)

    if args.command in ("backup", "restore", "export-decisions"):
        return _run_store_command(args)
    if args.command == "convert-model":
        from .models import ensure_default_model
        print(ensure_default_model())
    elif args.command == "trace":
        from .reward_model import load_reward_model
        from .scoring import reward_trace
        rm = load_reward_model(args.reward_model, device=args.device, trust_remote_code=args.trust_remote_code)
        t = reward_trace(rm, [{"role": "user", "content": args.prompt}], args.response)
        for piece, r in zip(t.pieces, t.rewards):
            print(f"{r:+.4f}\t{piece!r}")
    elif args.command == "queue":
        from .jobs import ACTIVE, launch_queued, queue_position
        from .store import Store
        store = Store()
        launch_queued(store)
        jobs = store.list_jobs()
        for job in jobs[jobs["state"].isin(ACTIVE)].sort_values("id").to_dict("records"):
            place = f" (position {queue_position(store, job['id'])})" if job["state"] == "queued" else ""
            print(f"#{job['id']}\t{job['kind']}\t{job['state']}{place}\t{job['message']}")
    else:
        cls, fn, _ = jobs[args.command]
        try:
            config = config_from_args(cls, args)
        except ValueError as exc:
            parser.error(str(exc))
        from .jobs import hand_off
        try:
            result = fn(config, args.run_dir)
        except BaseException as exc:
            hand_off(exc)  # a job started from the queue passes its slot on as it ends
            raise
        hand_off()
        print(json.dumps({k: v for k, v in to_jsonable(result).items() if k not in ("loss_curve", "models")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
