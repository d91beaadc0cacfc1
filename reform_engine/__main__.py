"""Command line: ``python -m reform_engine <job> --field value ...``. Each job's flags are its
config dataclass's fields (``--group.field`` for a nested config's), with the fields' help; the jobs
are those of registry.py. This file only parses and calls."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

from .configs import add_config_args, config_from_args, nested, required
from .registry import jobs
from .runs import to_jsonable
from .runtime import Runtime

__all__ = ["add_config_args", "config_from_args", "main"]


@dataclass
class TraceConfig:
    reward_model: str = required("a checkpoint directory from train-rm, or a sequence-classification model id or directory")
    prompt: str = required("the user's message")
    response: str = required("the response to trace, token by token")
    runtime: Runtime = nested(Runtime, "device, dtype, threads, remote-code leave (trace draws nothing: no seed)",
                              set_by_job=("seed",))


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
    add_config_args(sub.add_parser("trace", help="per-token reward trace of one response"), TraceConfig)
    _add_store_commands(sub)
    sub.add_parser("queue", help="look at the project's jobs (REFORM_PROJECT_DIR) and start queued ones that have a free slot")
    commands = {}
    for name, job in jobs().items():
        said = job.help.replace("%", "%%")  # argparse formats help with %: "p%" would break --help
        commands[name] = sub.add_parser(name, help=said, description=f"{said}. Every flag is a field of "
                                        f"{job.config.__name__}; a nested config's fields are --group.field.")
        commands[name].add_argument("--run-dir", required=True, help="where config, status, log, metrics and checkpoint go")
        add_config_args(commands[name], job.config)
    args = parser.parse_args(argv)

    if args.command in ("backup", "restore", "export-decisions"):
        return _run_store_command(args)
    if args.command == "convert-model":
        from .models import ensure_default_model
        print(ensure_default_model())
    elif args.command == "trace":
        from .reward_model import load_reward_model
        from .scoring import reward_trace
        try:
            config = config_from_args(TraceConfig, args)
        except ValueError as exc:
            parser.error(str(exc))
        from .runtime import set_cpu_threads
        set_cpu_threads(config.runtime.threads)
        rm = load_reward_model(config.reward_model, **config.runtime.load_args())
        t = reward_trace(rm, [{"role": "user", "content": config.prompt}], config.response)
        for piece, r in zip(t.pieces, t.rewards):
            print(f"{r:+.4f}\t{piece!r}")
    elif args.command == "queue":
        from .jobs import ACTIVE, launch_queued, queue_position
        from .store import Store
        store = Store()
        launch_queued(store)
        listed = store.list_jobs()
        for job in listed[listed["state"].isin(ACTIVE)].sort_values("id").to_dict("records"):
            place = f" (position {queue_position(store, job['id'])})" if job["state"] == "queued" else ""
            print(f"#{job['id']}\t{job['kind']}\t{job['state']}{place}\t{job['message']}")
    else:
        job = jobs()[args.command]
        try:
            config = config_from_args(job.config, args)
        except ValueError as exc:
            commands[args.command].error(str(exc))
        from .jobs import hand_off
        try:
            result = job.run(config, args.run_dir)
        except BaseException as exc:
            hand_off(exc)  # a job started from the queue passes its slot on as it ends
            raise
        hand_off()
        print(json.dumps({k: v for k, v in to_jsonable(result).items() if k not in ("loss_curve", "models")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
