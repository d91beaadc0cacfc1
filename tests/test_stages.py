import dataclasses
import json
import re
from dataclasses import dataclass, field

import pytest

from reform_engine.data import write_jsonl
from reform_engine.pipeline import PipelineConfig, run_pipeline
from reform_engine.retrain import RetrainConfig, run_retrain
from reform_engine.decoding import DecodingConfig
from reform_engine.inversions import GenerateVariantsConfig
from reform_engine.reward_model import RewardModelSpec
from reform_engine.robustness import RobustnessConfig
from reform_engine.runs import RunDir, atomic_write_json, job_run, read_json
from reform_engine.runtime import Runtime
from reform_engine.stages import (ComparisonResult, ModelReport, RetrainRecipe, StageTiming, Stages, check_retrain,
                                  retrain_config, run_stage)
from reform_engine.tiny import save_tiny_model
from reform_engine.training import TrainRewardConfig


@dataclass
class WordsConfig:
    text: str
    runtime: Runtime = field(default_factory=lambda: Runtime(device="cpu"))  # its placement: a finished stage is reused
                                                                             # whatever it says


CALLS: list[tuple[str, str, str]] = []      # (stage directory, text, the parent's progress message) of every run


def count_words(config: WordsConfig, run_dir) -> dict:
    """A tiny job with the run-directory contract of every engine job."""
    with job_run(run_dir, config) as run:
        parent = read_json(run.path.parent / "status.json", {}) or {}
        CALLS.append((run.path.name, config.text, parent.get("message", "")))
        run.write_metrics({"words": len(config.text.split())})
        run.set_status("succeeded", progress=1.0)
        return {"words": len(config.text.split())}


@pytest.fixture(autouse=True)
def no_calls():
    CALLS.clear()


def log_lines(run_dir) -> list[str]:
    return [line.split(" ", 2)[2] for line in (run_dir / "log.txt").read_text().splitlines()]  # without the time stamp


def test_a_stage_with_the_same_config_is_reused_and_a_changed_config_runs_again(tmp_path):
    timings: list[StageTiming] = []
    assert run_stage(tmp_path, "count", count_words, WordsConfig("one two three"), timings) == {"words": 3}
    assert run_stage(tmp_path, "count", count_words, WordsConfig("one two three", runtime=Runtime(device="cuda")), timings) == {"words": 3}
    assert [(t.name, t.reused) for t in timings] == [("count", False), ("count", True)]
    assert timings[1].seconds == read_json(tmp_path / "count" / "stage.json")["seconds"] == timings[0].seconds
    assert run_stage(tmp_path, "count", count_words, WordsConfig("one two"), timings) == {"words": 2}
    assert run_stage(tmp_path, "count", count_words, WordsConfig("one two"), timings, reuse=False) == {"words": 2}
    assert [t.reused for t in timings] == [False, True, False, False]
    assert [c[:2] for c in CALLS] == [("count", "one two three"), ("count", "one two"), ("count", "one two")]


def stopped_after(seconds: float):
    """A job killed ``seconds`` of progress into its run (its status last updated then), to be resumed."""
    def fn(config: WordsConfig, run_dir) -> dict:
        started = read_json(run_dir / "stage.json")["started_at"]
        atomic_write_json(run_dir / "status.json", {"state": "running", "updated_at": started + seconds})
        raise KeyboardInterrupt("killed")
    return fn


def test_a_resumed_stage_counts_the_time_of_its_stopped_runs_and_says_so(tmp_path):
    stages = Stages(RunDir(tmp_path), 1)
    for seconds in (100.0, 20.0):
        with pytest.raises(KeyboardInterrupt):
            stages("count", stopped_after(seconds), WordsConfig("a b"))
    assert stages("count", count_words, WordsConfig("a b")) == {"words": 2}
    assert 120.0 <= stages.timings[-1].seconds < 130.0
    assert read_json(tmp_path / "count" / "stage.json")["segments"] == 3
    assert log_lines(tmp_path)[-1].startswith("stage count: ran (12") and "over 3 runs, resumed" in log_lines(tmp_path)[-1]
    assert run_stage(tmp_path, "again", count_words, WordsConfig("a"), []) and \
        read_json(tmp_path / "again" / "stage.json")["segments"] == 1      # a stage that ran once is one run


def test_a_stage_whose_last_run_did_not_succeed_runs_again(tmp_path):
    run_stage(tmp_path, "count", count_words, WordsConfig("a b"), [])
    RunDir(tmp_path / "count").set_status("failed", message="killed")
    timings: list[StageTiming] = []
    assert run_stage(tmp_path, "count", count_words, WordsConfig("a b"), timings) == {"words": 2}
    assert not timings[0].reused and len(CALLS) == 2


def test_stages_count_progress_log_each_stage_and_rerun_what_reads_a_fresh_stage(tmp_path):
    def plan(first: str) -> Stages:
        stages = Stages(RunDir(tmp_path), total=4)
        stages("first", count_words, WordsConfig(first))
        stages("second", count_words, WordsConfig("x y"), ("first",), note=" (two words)",
               describe=lambda m: f"{m['words']} words")
        stages("third", count_words, WordsConfig("z"))  # reads nothing of the others
        stages.skip(1)
        return stages

    plan("a b c")
    assert CALLS == [("first", "a b c", "stage 1/4: first"), ("second", "x y", "stage 2/4: second (two words)"),
                     ("third", "z", "stage 3/4: third")]
    again = plan("a b c")
    assert [(t.name, t.reused) for t in again.timings] == [("first", True), ("second", True), ("third", True)]
    changed = plan("a b")  # the first stage's config changed: it and the stage after it run, the third is reused
    assert [(t.name, t.reused) for t in changed.timings] == [("first", False), ("second", False), ("third", True)]
    assert [c[:2] for c in CALLS[3:]] == [("first", "a b"), ("second", "x y")]
    assert changed.done == 4 and changed.fresh == {"first", "second"}
    lines = log_lines(tmp_path)
    assert [re.sub(r"\(\d+ s\)", "(N s)", line) for line in lines[-3:]] == [
        "stage first: ran (N s)", "stage second: ran (N s); 2 words", "stage third: reused (N s)"]
    assert read_json(tmp_path / "status.json")["stage"] == "third"


def test_the_report_says_whether_every_planned_stage_has_run(tmp_path):
    stages = Stages(RunDir(tmp_path), total=2)
    stages("count", count_words, WordsConfig("a b"))
    base = ModelReport("base", "b/checkpoint", 0, 0.5, 0.25, {"verbosity": 0.25}, {})
    partial = stages.write_report([base])
    assert read_json(tmp_path / "report.json")["complete"] is False
    stages.skip(1)
    new = ModelReport("retrained", "r/checkpoint", 2, 0.75, 0.125, {"verbosity": 0.125}, {})
    result = stages.write_report([base, new], {"lowest_loss": {"inversions": 2}})
    report = read_json(tmp_path / "report.json")
    assert report["complete"] is True and partial.models == [base]
    assert report["models"][1] == {"name": "retrained", "checkpoint": "r/checkpoint", "augment_pairs": 2,
                                   "clean_accuracy": 0.75, "mean_drop": 0.125, "drops": {"verbosity": 0.125},
                                   "indicators": {}, "intervals": {}, "n_pairs": 0}
    no_ends = {f"{c}_{e}": None for c in ("clean_accuracy", "mean_drop", "drop_vs_base", "accuracy_change") for e in ("low", "high")}
    assert report["summary"] == result.summary_rows() == [
        {"model": "base", "n_pairs": 0, "clean_accuracy": 0.5, "mean_drop": 0.25, "drop_vs_base": 1.0, "accuracy_change": 0.0,
         "augment_pairs": 0, **no_ends},
        {"model": "retrained", "n_pairs": 0, "clean_accuracy": 0.75, "mean_drop": 0.125, "drop_vs_base": 0.5,
         "accuracy_change": 0.25, "augment_pairs": 2, **no_ends}]
    assert report["drops"] == [{"model": "base", "perturbation": "verbosity", "drop": 0.25, "low": None, "high": None},
                               {"model": "retrained", "perturbation": "verbosity", "drop": 0.125, "low": None, "high": None}]
    assert report["variants"] == {"lowest_loss": {"inversions": 2}} and report["report_path"] == str(tmp_path / "report.json")
    assert [s["name"] for s in report["stages"]] == ["count"]


def test_a_model_report_is_read_from_robustness_metrics():
    metrics = {"clean_win_rate": 0.75, "mean_drop": 0.125, "indicators": None,
               "per_perturbation": [{"name": "verbosity", "drop": 0.25}, {"name": "capitalization", "drop": 0.0}]}
    assert ModelReport.from_robustness("reform", "ckpt", 3, metrics) == ModelReport(
        "reform", "ckpt", 3, 0.75, 0.125, {"verbosity": 0.25, "capitalization": 0.0}, {})
    assert ComparisonResult([], [], {}, 0.0, "r").summary_rows() == []


def test_scratch_repeats_the_base_recipe_and_finetune_continues_the_base_with_replay():
    base = TrainRewardConfig(data="d.jsonl", train_rows="0:6", lr=1e-3, epochs=2, max_steps=10, runtime=Runtime(seed=3, device="cpu"),
                             eval_data="e.jsonl", eval_rows="6:", save_every=5)
    same = dict(data="d.jsonl", train_rows="0:6", runtime=Runtime(seed=3, device="cpu"), augment_data="a.jsonl")
    assert retrain_config(base, "scratch", "base/checkpoint", "a.jsonl") == TrainRewardConfig(
        **same, lr=1e-3, epochs=2, max_steps=10)
    assert retrain_config(base, "finetune", "base/checkpoint", "a.jsonl", finetune_epochs=3, replay=4) == TrainRewardConfig(
        **same, lr=1e-3, epochs=3, init_from="base/checkpoint", train_sample=4)
    other = retrain_config(base, "finetune", "b", "", finetune_lr=1e-4, data="o.jsonl", runtime=Runtime(threads=2))
    assert (other.lr, other.augment_data, other.data, other.runtime.threads, other.epochs) == (1e-4, "", "o.jsonl", 2, 1)
    with pytest.raises(ValueError, match=r"retrain mode 'sometimes'; use one of \('scratch', 'finetune'\)"):
        retrain_config(base, "sometimes", "b", "a.jsonl")


def test_bad_retrain_knobs_are_refused_with_the_config_field_named():
    with pytest.raises(ValueError, match=r"^mode='often'; use one of \('scratch', 'finetune'\)$"):
        check_retrain("mode", "often", 1, 0.0, 0)
    for epochs, lr, replay in ((0, 0.0, 0), (1, -1e-4, 0), (1, 0.0, -1)):
        with pytest.raises(ValueError, match="finetune_epochs must be >= 1, finetune_lr >= 0"):
            check_retrain("retrain", "finetune", epochs, lr, replay)
    with pytest.raises(ValueError, match="finetune_lr >= 0"):
        PipelineConfig(retrain=RetrainRecipe(finetune_lr=-1.0))
    check_retrain("retrain", "scratch", 1, 0.0, 0)


def test_pipeline_and_retrain_job_retrain_a_base_with_one_recipe(tmp_path):
    pipeline = PipelineConfig(base=TrainRewardConfig(data="d.jsonl", train_rows="0:6", lr=1e-3, epochs=2),
                              runtime=Runtime(seed=3, device="cpu"),
                              retrain=RetrainRecipe(mode="finetune", finetune_epochs=2, replay=4))
    checkpoint = tmp_path / "base" / "checkpoint"
    checkpoint.mkdir(parents=True)
    atomic_write_json(tmp_path / "base" / "config.json", pipeline.train_config())  # as the pipeline's base stage writes it
    for mode in ("scratch", "finetune"):
        pipeline.retrain = dataclasses.replace(pipeline.retrain, mode=mode)
        job = RetrainConfig(base_rm=str(checkpoint), augment_data="a.jsonl",
                            retrain=RetrainRecipe(mode=mode, finetune_epochs=2, replay=4), runtime=Runtime(device="cpu"))
        assert job.training_config() == pipeline.retrain_config(str(checkpoint), "a.jsonl")


def schema(report: dict) -> dict:
    """The keys of a report.json, level by level."""
    return {"top": sorted(report), **{part: sorted({k for row in report[part] for k in row})
                                      for part in ("models", "stages", "summary", "drops")}}


def test_report_json_of_pipeline_and_retrain_has_one_schema(tmp_path, toy_pairs):
    model = str(save_tiny_model(tmp_path / "m", seed=1, ascii_only=True))
    write_jsonl(tmp_path / "d.jsonl", [p.to_trl() for p in toy_pairs])
    write_jsonl(tmp_path / "approved.jsonl", [{"prompt": "Hi?", "chosen": "Hello, how can I help?", "rejected": "What."}])
    run_pipeline(PipelineConfig(base=TrainRewardConfig(data=str(tmp_path / "d.jsonl"), train_rows="0:6",
                                                       model=RewardModelSpec(base_model=model, lora_layers=None, max_length=128),
                                                       batch_size=4, lr=5e-3, epochs=1),
                                eval_rows="6:",
                                variants=GenerateVariantsConfig(reward_model="", policy=model, fraction=0.5,
                                                                decoding=DecodingConfig(k=2, max_new_tokens=2), batch_size=2),
                                approved=str(tmp_path / "approved.jsonl"),
                                robustness=RobustnessConfig(reward_model="", perturbations="verbosity"), ablate_random=False,
                                runtime=Runtime(device="cpu")), tmp_path / "pipe")
    run_retrain(RetrainConfig(base_rm=str(tmp_path / "pipe" / "base" / "checkpoint"),
                              augment_data=str(tmp_path / "approved.jsonl"), eval_rows="6:",
                              robustness=RobustnessConfig(reward_model="", perturbations="verbosity"),
                              runtime=Runtime(device="cpu")), tmp_path / "re")
    pipe, re_ = read_json(tmp_path / "pipe" / "report.json"), read_json(tmp_path / "re" / "report.json")
    assert schema(pipe) == schema(re_) == {
        "top": ["complete", "drops", "models", "report_path", "rounds", "seconds", "stages", "summary", "variants"],
        "models": ["augment_pairs", "checkpoint", "clean_accuracy", "drops", "indicators", "intervals", "mean_drop", "n_pairs",
                   "name"],
        "stages": ["name", "reused", "seconds"],
        "summary": sorted(["accuracy_change", "augment_pairs", "clean_accuracy", "drop_vs_base", "mean_drop", "model", "n_pairs"]
                          + [f"{c}_{e}" for c in ("clean_accuracy", "mean_drop", "drop_vs_base", "accuracy_change")
                             for e in ("low", "high")]),
        "drops": ["drop", "high", "low", "model", "perturbation"]}
    for report, arm in ((pipe, "reform"), (re_, "retrained")):   # every model's intervals from its per-pair rewards
        base, other = report["models"]
        assert base["n_pairs"] == other["n_pairs"] == other["intervals"]["clean_accuracy"]["n"] > 0 and other["name"] == arm
        assert "vs_base" not in base["intervals"] and set(other["intervals"]["vs_base"]) == {"clean_accuracy", "mean_drop", "drop_ratio", "drops"}
        assert other["intervals"]["mean_drop"]["estimate"] == pytest.approx(other["mean_drop"])
    assert [m["name"] for m in pipe["models"]] == ["base", "reform"] and [m["name"] for m in re_["models"]] == ["base", "retrained"]
    assert pipe["complete"] is True and re_["complete"] is True and re_["variants"] == {} and pipe["rounds"] == re_["rounds"] == []
    assert set(pipe["variants"]) == {"lowest_loss"}
    # both evaluate the same base on the same held-out rows: one number
    assert pipe["models"][0]["clean_accuracy"] == re_["models"][0]["clean_accuracy"]


def test_a_stage_run_with_another_seed_is_not_reused_whatever_its_placement(tmp_path):
    timings: list[StageTiming] = []
    run_stage(tmp_path, "count", count_words, WordsConfig("a b", runtime=Runtime(seed=1)), timings)
    run_stage(tmp_path, "count", count_words, WordsConfig("a b", runtime=Runtime(seed=1, threads=3, dtype="bfloat16")), timings)
    run_stage(tmp_path, "count", count_words, WordsConfig("a b", runtime=Runtime(seed=2)), timings)
    assert [t.reused for t in timings] == [False, True, False]


def test_a_model_report_carries_intervals_from_its_per_pair_rewards_paired_against_the_base(tmp_path):
    from reform_engine.perturbations import PERTURBATIONS
    from reform_engine.robustness import SCORES_FILE, PairScores

    assert PERTURBATIONS["verbosity"].side == "rejected"

    def write(name: str, chosen, rejected, verbose) -> None:
        (tmp_path / name).mkdir()
        rows = PairScores([f"p{i}" for i in range(len(chosen))], chosen, rejected, {"verbosity": verbose}).to_rows()
        (tmp_path / name / SCORES_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))

    # base: 4 of 4 right, verbosity (padding the rejected side) flips 2; reform: 4 right, verbosity flips 1
    write("robustness_base", [1.0] * 4, [0.0] * 4, [2.0, 2.0, -1.0, -1.0])
    write("robustness_reform", [1.0] * 4, [0.0] * 4, [2.0, -1.0, -1.0, -1.0])
    metrics = {"clean_win_rate": 1.0, "mean_drop": 0.25, "n_pairs": 4,
               "per_perturbation": [{"name": "verbosity", "drop": 0.25}], "indicators": None}
    m = ModelReport.from_robustness("reform", "c", 3, metrics, tmp_path / "robustness_reform", tmp_path / "robustness_base")
    assert m.n_pairs == 4 and m.intervals["clean_accuracy"]["estimate"] == 1.0 and m.intervals["clean_accuracy"]["n"] == 4
    assert m.intervals["drops"]["verbosity"]["estimate"] == 0.25
    assert m.intervals["vs_base"]["mean_drop"]["estimate"] == -0.25 and m.intervals["vs_base"]["drop_ratio"]["estimate"] == 0.5
    assert list(m.intervals["vs_base"]["drops"]) == ["verbosity"]  # each perturbation's drop, paired: 0.25 - 0.5
    assert m.intervals["vs_base"]["drops"]["verbosity"]["estimate"] == -0.25 and m.intervals["vs_base"]["drops"]["verbosity"]["n"] == 4
    base = ModelReport.from_robustness("base", "b", 0, metrics, tmp_path / "robustness_base", tmp_path / "robustness_base")
    assert "vs_base" not in base.intervals and base.intervals["mean_drop"]["estimate"] == 0.5
    older = ModelReport.from_robustness("reform", "c", 3, metrics, tmp_path / "nowhere", tmp_path / "robustness_base")
    assert older.intervals == {}
    row = ComparisonResult([base, m], [], {}, 0.0, "").summary_rows()[1]
    assert row["drop_vs_base_low"] <= 0.5 <= row["drop_vs_base_high"] and row["n_pairs"] == 4


@dataclass
class WordsConfigLater(WordsConfig):
    """WordsConfig after the engine gained a setting (and one in its runtime's place: a nested config)."""
    lowercase: bool = False


def test_a_stage_saved_before_a_setting_existed_is_reused_while_the_setting_holds_its_default(tmp_path):
    timings: list[StageTiming] = []
    run_stage(tmp_path, "count", count_words, WordsConfig("a b"), timings)
    saved = read_json(tmp_path / "count" / "config.json")
    del saved["runtime"]["trunk_cache"]  # a runtime setting added since, too
    atomic_write_json(tmp_path / "count" / "config.json", saved)
    run_stage(tmp_path, "count", count_words, WordsConfigLater("a b"), timings)
    run_stage(tmp_path, "count", count_words, WordsConfigLater("a b", lowercase=True), timings)  # the new setting used: another config
    assert [t.reused for t in timings] == [False, True, False]
    saved = read_json(tmp_path / "count" / "config.json")
    del saved["lowercase"]
    saved["retired"] = 1  # a setting the engine no longer has: the stage was another config
    atomic_write_json(tmp_path / "count" / "config.json", saved)
    run_stage(tmp_path, "count", count_words, WordsConfigLater("a b"), timings)
    assert [t.reused for t in timings] == [False, True, False, False]
