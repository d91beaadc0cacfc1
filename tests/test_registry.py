import ast
from pathlib import Path

import reform_engine
from reform_engine.jobs import job_kinds
from reform_engine.registry import jobs

ENGINE = Path(reform_engine.__file__).parent


def imports_of(module: str) -> set[str]:
    """Every module a file of the engine imports, relative ones with their leading dots."""
    tree = ast.parse((ENGINE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_the_job_queue_and_the_cli_take_the_jobs_from_the_registry_not_from_each_other():
    assert not {m for m in imports_of("jobs") if m.endswith("__main__")}
    assert ".registry" in imports_of("jobs") and ".registry" in imports_of("__main__")
    assert job_kinds() == {name: job.config for name, job in jobs().items()}
    assert list(jobs()) == ["train-rm", "eval-rm", "crossval", "influential", "variants", "robustness", "pipeline", "retrain", "attack",
                            "adv-rounds", "compare", "best-of-n"]


def test_every_job_config_has_a_runtime_and_every_field_a_help():
    import dataclasses

    from reform_engine.configs import flags
    from reform_engine.runtime import Runtime

    for name, job in jobs().items():
        assert isinstance(job.config.__dataclass_fields__["runtime"].default_factory(), Runtime), name
        assert all(f.metadata.get("help") for f in dataclasses.fields(job.config)), name
        assert all(flag.help for flag in flags(job.config)), name
