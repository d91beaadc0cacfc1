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


def add_config_args(parser: argparse.ArgumentParser, cls) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        kwargs = {"required": True} if required else {"default": f.default}
        if hints[f.name] is bool:  # '--trust-remote-code' alone means true; '--flag false' still works
            kwargs.update(nargs="?", const=True)
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=_flag_type(hints[f.name]), **kwargs,
                            help=None if required else f"default: {f.default}")


def config_from_args(cls, args: argparse.Namespace):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def _jobs():
    from .attack import AttackConfig, run_attack
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
            "attack": (AttackConfig, run_attack, "Adv-RM: an RLOO adversary against a target RM; kept samples become pairs")}


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
    jobs = _jobs()
    for name, (cls, _, help_text) in jobs.items():
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--run-dir", required=True, help="where config, status, log, metrics and checkpoint go")
        add_config_args(p, cls)
    args = parser.parse_args(argv)

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
    else:
        cls, fn, _ = jobs[args.command]
        try:
            config = config_from_args(cls, args)
        except ValueError as exc:
            parser.error(str(exc))
        result = fn(config, args.run_dir)
        print(json.dumps({k: v for k, v in to_jsonable(result).items() if k not in ("loss_curve", "models")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
