import dataclasses
import json

import pytest

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
