import dataclasses
import json
from pathlib import Path

import pytest
import torch

from reform_engine.data import write_jsonl
from reform_engine.decoding import DecodingConfig
from reform_engine.inversions import GenerateVariantsConfig
from reform_engine.pipeline import PipelineConfig, run_pipeline
from reform_engine.reward_model import RewardModelSpec
from reform_engine.robustness import RobustnessConfig
from reform_engine.runtime import Runtime
from reform_engine.stages import RetrainRecipe
from reform_engine.tiny import save_tiny_model
from reform_engine.training import TrainRewardConfig


@pytest.fixture()
def setup(tmp_path, toy_pairs):
    model = str(save_tiny_model(tmp_path / "m", seed=1, ascii_only=True))
    write_jsonl(tmp_path / "d.jsonl", [p.to_trl() for p in toy_pairs])
    write_jsonl(tmp_path / "approved.jsonl", [{"prompt": "Hi?", "chosen": "Hello, how can I help?", "rejected": "What."},
                                              {"prompt": "Help?", "chosen": "Sure, tell me more.", "rejected": "No!!"}])
    cfg = dict(base=TrainRewardConfig(data=str(tmp_path / "d.jsonl"), train_rows="0:6",
                                      model=RewardModelSpec(base_model=model, lora_layers=None, max_length=128), batch_size=4,
                                      lr=5e-3, epochs=1),
               eval_rows="6:",
               variants=GenerateVariantsConfig(reward_model="", policy=model, fraction=0.5,
                                               decoding=DecodingConfig(k=3, max_new_tokens=4), batch_size=2),
               approved=str(tmp_path / "approved.jsonl"),
               robustness=RobustnessConfig(reward_model="", perturbations="verbosity,capitalization"),
               runtime=Runtime(device="cpu"))
    return tmp_path, cfg


def with_k(cfg: dict, k: int) -> dict:
    """cfg with another number of decoding candidates."""
    return {**cfg, "variants": dataclasses.replace(cfg["variants"], decoding=DecodingConfig(k=k, max_new_tokens=4))}


def test_pipeline_end_to_end_on_a_tiny_model_then_resumes_from_its_stages(setup):
    tmp_path, cfg = setup
    result = run_pipeline(PipelineConfig(**cfg, retrain=RetrainRecipe(mode="finetune", replay=4)), tmp_path / "run")
    names = [m.name for m in result.models]
    assert names[0] == "base" and "reform" in names and names[-1] == "no_aug"
    reform = next(m for m in result.models if m.name == "reform")
    assert reform.augment_pairs == 2 and set(reform.drops) == {"verbosity", "capitalization"}
    assert reform.mean_drop == pytest.approx(sum(reform.drops.values()) / 2)
    ran = [t.name for t in result.stages]
    assert ran[:6] == ["base", "influence", "robustness_base", "variants_lowest_loss", "retrain_reform", "robustness_reform"]
    assert ran[-2:] == ["retrain_no_aug", "robustness_no_aug"]
    assert not any(t.reused for t in result.stages)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [r["model"] for r in report["summary"]] == names and report["summary"][0]["accuracy_change"] == 0
    assert report["complete"] is True
    assert {(r["model"], r["perturbation"]) for r in report["drops"]} == {(n, p) for n in names for p in reform.drops}
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "succeeded" and status["progress"] == 1.0

    again = run_pipeline(PipelineConfig(**cfg, retrain=RetrainRecipe(mode="finetune", replay=4)), tmp_path / "run")
    assert all(t.reused for t in again.stages) and again.summary_rows() == result.summary_rows()
    # a changed decoding knob re-runs the variants and what was built from them, nothing else
    changed = run_pipeline(PipelineConfig(**with_k(cfg, 2), retrain=RetrainRecipe(mode="finetune", replay=4)), tmp_path / "run")
    reran = {t.name for t in changed.stages if not t.reused}
    assert {"variants_lowest_loss", "retrain_reform", "robustness_reform"} <= reran
    assert not reran & {"base", "influence", "robustness_base", "retrain_no_aug", "robustness_no_aug"}


def test_pipeline_scratch_mode_has_no_no_aug_arm_and_bad_knobs_fail_early(setup):
    tmp_path, cfg = setup
    with pytest.raises(ValueError, match="retrain"):
        PipelineConfig(**cfg, retrain=RetrainRecipe(mode="sometimes"))
    with pytest.raises(ValueError, match="k="):
        PipelineConfig(**with_k(cfg, 0))
    result = run_pipeline(PipelineConfig(**cfg, ablate_random=False), tmp_path / "scratch")
    assert [m.name for m in result.models] == ["base", "reform"]
    retrain = json.loads((tmp_path / "scratch" / "retrain_reform" / "config.json").read_text())
    assert retrain["init_from"] == "" and retrain["epochs"] == 1 and retrain["augment_data"].endswith("approved.jsonl")


def test_the_filtered_arm_drops_exactly_the_pairs_whose_variant_is_judged_inappropriate(setup):
    from reform_engine.appropriateness import AppropriatenessConfig
    from reform_engine.reward_model import build_reward_model

    tmp_path, cfg = setup
    # an untrained base (its head at seed 2) that the decoder inverts easily, and a judge apart from it (seed 4)
    for name, seed in (("rm", 2), ("judge", 4)):
        build_reward_model(dataclasses.replace(cfg["base"].model, finetune="head"), device="cpu", seed=seed).save(tmp_path / name)
    judged = dataclasses.replace(cfg["variants"], decoding=DecodingConfig(k=4, alpha=0.1, max_new_tokens=6),
                                 appropriateness=AppropriatenessConfig(source="judge", judge_rm=str(tmp_path / "judge")),
                                 lower_persona="none", raise_persona="none")  # the constructed case: the policy's own prompt
    cfg = {**cfg, "approved": "", "variants": judged, "base_rm": str(tmp_path / "rm")}
    with pytest.raises(ValueError, match="variants.appropriateness.source"):
        PipelineConfig(**{**cfg, "variants": dataclasses.replace(judged, appropriateness=AppropriatenessConfig())},
                       filter_inappropriate=True)
    with pytest.raises(ValueError, match="curated file"):
        PipelineConfig(**{**cfg, "approved": str(tmp_path / "approved.jsonl")}, ablate_appropriateness=True)
    result = run_pipeline(PipelineConfig(**cfg, ablate_random=False, ablate_appropriateness=True), tmp_path / "run")
    records = [json.loads(line) for line in open(tmp_path / "run" / "variants_lowest_loss" / "variants.jsonl")]
    inversions = [r for r in records if r["is_inversion"]]
    flagged = [r for r in inversions if r["appropriate"] is False]
    assert (len(records), len(inversions), len(flagged)) == (6, 6, 2)  # the judge fails 2 of the 3 lower variants
    assert {m.name: m.augment_pairs for m in result.models} == {"base": 0, "reform": 6, "reform_filtered": 4}
    filtered = json.loads((tmp_path / "run" / "retrain_reform_filtered" / "config.json").read_text())["augment_data"]
    assert [json.loads(line) for line in open(filtered)] == [r["new_pair"] for r in inversions if r["appropriate"] is not False]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [r["model"] for r in report["summary"]] == ["base", "reform", "reform_filtered"]
    # the filter on: the reform arm trains on the 4 kept pairs and the ablation is the unfiltered one
    on = run_pipeline(PipelineConfig(**cfg, ablate_random=False, filter_inappropriate=True, ablate_appropriateness=True),
                      tmp_path / "run_on")
    assert {m.name: m.augment_pairs for m in on.models} == {"base": 0, "reform": 4, "reform_unfiltered": 6}


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.2])
def test_the_fraction_p_is_one_pipeline_setting_that_the_influence_and_variants_stages_both_use(fraction):
    from reform_engine.configs import flags
    from reform_engine.data import PreferencePair
    from reform_engine.influence import ScoredPair, select_influential

    cfg = PipelineConfig(variants=GenerateVariantsConfig(reward_model="", fraction=fraction, variants_per_pair=3))
    variants = cfg.variants_config("lowest_loss", "rm")
    assert cfg.influence_config("rm").fraction == variants.fraction == fraction and variants.variants_per_pair == 3
    assert [variants.decoding_for(d).persona for d in ("lower", "raise")] == ["aligned", "compliant"]
    assert {"variants.fraction", "variants.variants_per_pair", "variants.lower_persona", "variants.raise_persona"} <= \
        {f.dest for f in flags(PipelineConfig)}
    scored = [ScoredPair(PreferencePair(f"p{i}", ({"role": "user", "content": "q"},), "a", "b"), 0.0, 0.0, i / 100, i + 1)
              for i in range(100)]
    assert len(select_influential(scored, fraction)) == {0.05: 5, 0.1: 10, 0.2: 20}[fraction]


@pytest.fixture()
def invertible(setup):
    """The setup with an untrained base (its head at seed 2) that the decoder inverts easily, every inversion
    counted (no curated file), and a judge RM apart from it (seed 9)."""
    from reform_engine.reward_model import build_reward_model

    tmp_path, cfg = setup
    for name, seed in (("rm", 2), ("judge", 9)):
        build_reward_model(dataclasses.replace(cfg["base"].model, finetune="head"), device="cpu", seed=seed).save(tmp_path / name)
    variants = dataclasses.replace(cfg["variants"], decoding=DecodingConfig(k=4, alpha=0.1, max_new_tokens=6),
                                   lower_persona="none", raise_persona="none")
    return tmp_path, {**cfg, "approved": "", "variants": variants, "base_rm": str(tmp_path / "rm")}


def lines(path) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def test_the_highest_loss_arm_decodes_from_the_highest_loss_pairs_and_the_retrain_mode_arm_retrains_the_same_pairs(invertible):
    tmp_path, cfg = invertible
    config = PipelineConfig(**cfg, ablate_random=False, ablate_highest_loss=True, ablate_retrain_mode=True)
    assert config.arms() == ["reform", "reform_finetune", "highest_loss", "no_aug"]
    result = run_pipeline(config, tmp_path / "run")
    run = tmp_path / "run"
    assert [m.name for m in result.models] == ["base", "reform", "reform_finetune", "highest_loss", "no_aug"]
    # highest_loss: its own variants stage, decoded from the half of the pairs with the highest loss under the base
    decoded = json.loads((run / "variants_highest_loss" / "config.json").read_text())
    assert (decoded["strategy"], decoded["scored"]) == ("highest_loss", str(run / "influence" / "scored.jsonl"))
    ranked = sorted(lines(run / "influence" / "scored.jsonl"), key=lambda r: -r["rank"])
    assert {v["pair_id"] for v in lines(run / "variants_highest_loss" / "variants.jsonl")} == {r["pair_id"] for r in ranked[:3]}
    assert {v["pair_id"] for v in lines(run / "variants_lowest_loss" / "variants.jsonl")} == {r["pair_id"] for r in ranked[3:]}
    highest = json.loads((run / "retrain_highest_loss" / "config.json").read_text())
    assert highest["augment_data"] == str(run / "variants_highest_loss" / "augment.jsonl")
    added = {m.name: m.augment_pairs for m in result.models}
    assert added["highest_loss"] == len(lines(highest["augment_data"])) > 0
    # reform_finetune: the reform arm's very pairs, fine-tuned from the base instead of retrained from scratch
    reform = json.loads((run / "retrain_reform" / "config.json").read_text())
    finetune = json.loads((run / "retrain_reform_finetune" / "config.json").read_text())
    assert (reform["init_from"], reform["epochs"]) == ("", 1)
    assert (finetune["init_from"], finetune["epochs"], finetune["augment_data"]) == (cfg["base_rm"], 1, reform["augment_data"])
    assert added["reform_finetune"] == added["reform"] > 0
    # a fine-tuned arm brings the no-augmentation fine-tune with it
    no_aug = json.loads((run / "retrain_no_aug" / "config.json").read_text())
    assert (no_aug["init_from"], no_aug["augment_data"]) == (cfg["base_rm"], "")
    # every planned stage ran, none skipped: the total was right
    status = json.loads((run / "status.json").read_text())
    assert status["total"] == len(result.stages) == 1 + 1 + 2 + 4 * 2 and status["progress"] == 1.0
    assert json.loads((run / "report.json").read_text())["complete"] is True


def test_the_equal_count_arm_retrains_on_a_seeded_sample_of_the_random_arms_pairs_at_the_reform_arms_count(invertible):
    tmp_path, cfg = invertible
    write_jsonl(tmp_path / "one.jsonl", [{"prompt": "Hi?", "chosen": "Hello, how can I help?", "rejected": "What."}])
    config = PipelineConfig(**{**cfg, "approved": str(tmp_path / "one.jsonl")}, ablate_equal_count=True)
    assert config.arms() == ["reform", "random", "random_equal"]
    result = run_pipeline(config, tmp_path / "run")
    run = tmp_path / "run"
    added = {m.name: m.augment_pairs for m in result.models}
    random_pairs = lines(run / "variants_random" / "augment.jsonl")
    assert added["reform"] == 1 and added["random"] == len(random_pairs) > 1  # the fixture inverts easily
    equal = json.loads((run / "retrain_random_equal" / "config.json").read_text())
    sample = lines(equal["augment_data"])
    assert added["random_equal"] == len(sample) == 1 and sample[0] in random_pairs
    assert f"random_equal: a seeded 1 of the arm's {len(random_pairs)} pairs" in (run / "log.txt").read_text()
    status = json.loads((run / "status.json").read_text())
    assert status["total"] == len(result.stages) and status["progress"] == 1.0
    again = run_pipeline(config, run)  # the sample is the same file again: nothing re-runs
    assert all(t.reused for t in again.stages)

    # an arm with no more pairs than reform's has no smaller sample: skipped, and the log says why
    write_jsonl(tmp_path / "many.jsonl", [{"prompt": f"Hi {i}?", "chosen": "Hello.", "rejected": "What."} for i in range(50)])
    many = run_pipeline(PipelineConfig(**{**cfg, "approved": str(tmp_path / "many.jsonl")}, ablate_equal_count=True),
                        tmp_path / "many")
    assert "random_equal" not in [m.name for m in many.models]
    assert "no smaller sample to take — skipped" in (tmp_path / "many" / "log.txt").read_text()
    assert json.loads((tmp_path / "many" / "status.json").read_text())["progress"] == 1.0


def test_in_scratch_mode_the_base_is_the_no_augmentation_model_and_the_log_says_so(setup):
    from safetensors.torch import load_file

    from reform_engine.training import train_reward_model

    tmp_path, cfg = setup
    config = PipelineConfig(**cfg, ablate_random=False)
    result = run_pipeline(config, tmp_path / "run")
    assert [m.name for m in result.models] == ["base", "reform"] and not (tmp_path / "run" / "retrain_no_aug").exists()
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "the base row is the no-augmentation model (none trained)" in log
    # why none is trained: the scratch recipe without new pairs gives the base's weights bit for bit
    base = result.models[0].checkpoint
    again = train_reward_model(config.retrain_config(base, ""), tmp_path / "no_aug").checkpoint
    weights = [{k: v for f in sorted(Path(d).glob("*.safetensors")) for k, v in load_file(f).items()} for d in (base, again)]
    assert weights[0] and weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_best_of_n_stage_per_arm_is_judged_apart_and_the_report_table_shows_its_win_rate(invertible):
    from reform_engine.reports import arm_table

    tmp_path, cfg = invertible
    judge = str(tmp_path / "judge")
    with pytest.raises(ValueError, match="bon_judge_rm.*the judge is RM A or RM B"):
        PipelineConfig(**cfg, bon_judge_rm=cfg["base_rm"])
    with pytest.raises(ValueError, match="n=1"):
        PipelineConfig(**cfg, bon_judge_rm=judge, bon_n=1)
    with pytest.raises(ValueError, match="a checkpoint of this pipeline run"):
        run_pipeline(PipelineConfig(**cfg, bon_judge_rm=str(tmp_path / "run" / "retrain_reform" / "checkpoint")), tmp_path / "run")
    config = PipelineConfig(**cfg, ablate_random=False, bon_judge_rm=judge, bon_prompts=1, bon_n=2)
    result = run_pipeline(config, tmp_path / "run")
    run = tmp_path / "run"
    assert [m.name for m in result.models] == ["base", "reform"]
    assert [t.name for t in result.stages][-1] == "bon_reform"
    bon = json.loads((run / "bon_reform" / "config.json").read_text())
    reform = next(m for m in result.models if m.name == "reform")
    assert (bon["rm_a"], bon["rm_b"], bon["judge_rm"]) == (cfg["base_rm"], reform.checkpoint, judge)
    assert (bon["data"], bon["rows"], bon["prompts"], bon["n"]) == (str(tmp_path / "d.jsonl"), "6:", 1, 2)
    assert bon["samples_dir"] == str(run / "bon_samples") and len(list((run / "bon_samples").glob("*.pt"))) == 1
    won = json.loads((run / "bon_reform" / "metrics.json").read_text())
    assert won["prompts"] + won["skipped"] == 1
    status = json.loads((run / "status.json").read_text())
    assert status["total"] == len(result.stages) == 1 + 1 + 1 + 2 + 1
    # the run's own best-of-N, found without passing any best-of-n job
    table = arm_table(run)
    assert table["arm"].tolist() == ["base", "reform"]
    assert table["bon_win_rate"].tolist() == [None, won["win_rate"]]
    assert (table["bon_win_rate_low"][1], table["bon_win_rate_high"][1], table["bon_prompts"][1]) == (won["low"], won["high"],
                                                                                                      won["prompts"])
    assert table["seconds_eval"][1] == sum(t.seconds for t in result.stages if t.name in ("robustness_reform", "bon_reform"))


def test_an_appropriateness_judge_that_is_the_given_base_is_refused_before_anything_runs(invertible):
    from reform_engine.appropriateness import AppropriatenessConfig

    tmp_path, cfg = invertible
    judged = dataclasses.replace(cfg["variants"], appropriateness=AppropriatenessConfig(source="judge", judge_rm=cfg["base_rm"]))
    with pytest.raises(ValueError, match="is the reward model being fixed"):
        PipelineConfig(**{**cfg, "variants": judged})


def test_the_ordered_arms_keep_only_pairs_decoded_from_source_pairs_the_base_orders_right(invertible):
    tmp_path, cfg = invertible
    config = PipelineConfig(**cfg, ablate_highest_loss=True, ablate_ordered=True)
    assert config.arms() == ["reform", "random", "random_ordered", "highest_loss", "highest_loss_ordered"]
    result = run_pipeline(config, tmp_path / "run")
    run, added = tmp_path / "run", {m.name: m.augment_pairs for m in result.models}
    log = (run / "log.txt").read_text()
    for arm in ("random", "highest_loss"):
        variants = [v for v in lines(run / f"variants_{arm}" / "variants.jsonl") if v["is_inversion"]]
        assert len(lines(run / f"variants_{arm}" / "augment.jsonl")) == len(variants) == added[arm] > 0
        # the untrained base inverts only pairs it already orders wrong: each "inversion" is its old mistake again
        assert all(v["r_chosen"] <= v["r_rejected"] for v in variants)
        assert f"{arm}_ordered: none of the arm's pairs comes from a source pair the base orders right — skipped" in log
        assert f"{arm}_ordered" not in added and not (run / f"retrain_{arm}_ordered").exists()
    status = json.loads((run / "status.json").read_text())
    assert status["total"] == len(result.stages) + 2 * 2 and status["progress"] == 1.0


def test_ordered_lines_keep_the_pairs_of_variants_whose_source_pair_the_rm_ordered_right(tmp_path):
    from reform_engine.inversions import Variant
    from reform_engine.pipeline import _ordered_lines

    def variant(pid, direction, text, r_chosen, r_rejected, inversion=True):
        return Variant(pid, direction, ({"role": "user", "content": f"q{pid}"},), "good", "bad", text, 0.0, 0.0, r_chosen,
                       r_rejected, 1.0, 2.0, inversion)

    variants = [variant("a", "raise", "worse", 1.0, -1.0), variant("b", "raise", "worse", -1.0, 1.0),   # b: ordered wrong
                variant("c", "lower", "better", 0.5, 0.0), variant("d", "lower", "x", 2.0, 0.0, inversion=False)]
    write_jsonl(tmp_path / "variants.jsonl", [v.to_record() for v in variants])
    pairs = [v.new_pair().to_trl() for v in variants if v.new_pair()]
    write_jsonl(tmp_path / "augment.jsonl", pairs)
    out = _ordered_lines(str(tmp_path / "augment.jsonl"), str(tmp_path / "variants.jsonl"), tmp_path / "ordered.jsonl")
    assert lines(out) == [pairs[0], pairs[2]]
    assert lines(out)[1] == {"prompt": [{"role": "user", "content": "qc"}], "chosen": "better", "rejected": "bad"}


def test_an_ordered_arm_with_more_pairs_than_reform_retrains_on_a_seeded_sample_at_its_count(invertible, monkeypatch):
    import reform_engine.pipeline as pipeline

    tmp_path, cfg = invertible
    write_jsonl(tmp_path / "one.jsonl", [{"prompt": "Hi?", "chosen": "Hello, how can I help?", "rejected": "What."}])
    monkeypatch.setattr(pipeline, "_ordered_lines", lambda pairs, variants, out: pairs)  # as if the base ordered every source right
    config = PipelineConfig(**{**cfg, "approved": str(tmp_path / "one.jsonl")}, ablate_ordered=True)
    result = run_pipeline(config, tmp_path / "run")
    run, added = tmp_path / "run", {m.name: m.augment_pairs for m in result.models}
    random_pairs = lines(run / "variants_random" / "augment.jsonl")
    sample = lines(json.loads((run / "retrain_random_ordered" / "config.json").read_text())["augment_data"])
    assert added["reform"] == 1 and added["random"] == len(random_pairs) > 1
    assert added["random_ordered"] == len(sample) == 1 and sample[0] in random_pairs
    assert f"random_ordered: a seeded 1 of the arm's {len(random_pairs)} pairs from source pairs" in (run / "log.txt").read_text()
    assert json.loads((run / "status.json").read_text())["progress"] == 1.0
