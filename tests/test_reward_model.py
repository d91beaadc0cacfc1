import pytest
import torch

from reform_engine.models import ModelError, load_tokenizer
from reform_engine.reward_model import (CausalRewardModel, RewardModelSpec, SequenceClassifierRewardModel, build_reward_model,
                                        last_token_index, load_causal_reward_model, load_reward_model)
from reform_engine.scoring import collate, encode, reward_trace, score_sequences
from reform_engine.tiny import build_tiny_tokenizer


def test_last_token_index_for_both_padding_sides():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 4, 0]
    assert last_token_index(left).tolist() == [4, 4, 4]


def test_pad_token_is_set_from_eos_when_missing(tmp_path):
    tok = build_tiny_tokenizer()
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.pad_token == "<|im_end|>" and loaded.pad_token_id == 2


def _seqs(rm):
    texts = ["Short.", "A considerably longer response with many more tokens in it.", "Mid-length answer here."]
    return [encode(rm.tokenizer, [{"role": "user", "content": "Q?"}], t, max_length=256).ids for t in texts]


@pytest.mark.parametrize("side", ["left", "right"])
def test_identical_text_scores_identically_in_any_batch_and_padding(tiny_rm, side):
    seqs = _seqs(tiny_rm)
    alone = [tiny_rm.score(*collate([s], 2, side)).item() for s in seqs]
    ids, mask = collate(seqs, tiny_rm.tokenizer.pad_token_id, side)
    batched = tiny_rm.score(ids, mask).tolist()
    ids2, mask2 = collate(seqs[::-1] + seqs, tiny_rm.tokenizer.pad_token_id, side)
    shuffled = tiny_rm.score(ids2, mask2).tolist()
    assert batched == pytest.approx(alone, abs=1e-5)
    assert shuffled[:3] == pytest.approx(alone[::-1], abs=1e-5) and shuffled[3:] == pytest.approx(alone, abs=1e-5)


def test_left_and_right_padding_agree(tiny_rm):
    seqs = _seqs(tiny_rm)
    left = tiny_rm.score(*collate(seqs, 2, "left"))
    right = tiny_rm.score(*collate(seqs, 2, "right"))
    torch.testing.assert_close(left, right, atol=1e-5, rtol=0)


def test_pad_token_equal_to_eos_inside_text_does_not_move_the_score(tiny_rm):
    """SmolLM's pad token is its eos: a response containing it must still be read at its true end."""
    seq = list(_seqs(tiny_rm)[0]) + [tiny_rm.tokenizer.pad_token_id, 70, 71]
    alone = tiny_rm.score(*collate([seq], 2, "right"))
    padded = tiny_rm.score(*collate([seq, seq + [5] * 7], 2, "right"))[0]
    assert padded.item() == pytest.approx(alone.item(), abs=1e-5)


@pytest.mark.parametrize("finetune", ["lora", "head", "full", "top"])
def test_save_and_load_reproduce_scores(tiny_model_dir, tmp_path, finetune):
    rm = build_reward_model(RewardModelSpec(base_model=tiny_model_dir, finetune=finetune, max_length=128), device="cpu", seed=3)
    with torch.no_grad():  # move weights off their init so the checkpoint carries real information
        for p in rm.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    rm.eval()
    seqs = _seqs(rm)
    before = score_sequences(rm, seqs)
    rm.save(tmp_path / "ckpt")
    loaded = load_reward_model(str(tmp_path / "ckpt"), device="cpu")
    assert isinstance(loaded, CausalRewardModel) and loaded.spec.finetune == finetune
    torch.testing.assert_close(score_sequences(loaded, seqs), before, atol=1e-5, rtol=0)
    trainable = load_causal_reward_model(tmp_path / "ckpt", device="cpu", trainable=True)
    assert any(p.requires_grad for p in trainable.parameters())


def test_trainable_parameters_follow_the_finetune_mode(tiny_model_dir):
    counts = {}
    for mode in ("head", "lora", "full", "top"):
        rm = build_reward_model(RewardModelSpec(base_model=tiny_model_dir, finetune=mode, lora_layers=1), device="cpu")
        counts[mode] = sum(p.numel() for p in rm.parameters() if p.requires_grad)
    assert counts["head"] == 32 + 1
    assert counts["head"] < counts["lora"] < counts["top"] < counts["full"]


def test_top_trains_every_weight_of_the_top_layers_and_the_final_norm_only(tiny_model_dir, tmp_path):
    from reform_engine.trunk_cache import trunk_split

    rm = build_reward_model(RewardModelSpec(base_model=tiny_model_dir, finetune="top", lora_layers=1), device="cpu")
    layer1 = {n for n, _ in rm.backbone.named_parameters() if n.startswith("layers.1.")}
    trained = {n for n, p in rm.backbone.named_parameters() if p.requires_grad}
    assert layer1 and trained == layer1 | {"norm.weight"}
    assert trunk_split(rm) == (1, "")  # layer 0 is the base's: its output can be cached
    with torch.no_grad():
        dict(rm.backbone.named_parameters())["layers.1.mlp.up_proj.weight"].add_(0.1)
    ckpt = rm.save(tmp_path / "ckpt")
    assert not (ckpt / "backbone").exists()  # the top layers only, beside a reference to the base
    loaded = load_causal_reward_model(ckpt, device="cpu")
    assert trunk_split(loaded) == (1, "") and not any(p.requires_grad for p in loaded.parameters())
    base = build_reward_model(RewardModelSpec(base_model=tiny_model_dir, finetune="head"), device="cpu")
    got, want = dict(loaded.backbone.named_parameters()), dict(rm.backbone.named_parameters())
    assert torch.equal(got["layers.1.mlp.up_proj.weight"], want["layers.1.mlp.up_proj.weight"])
    assert not torch.equal(got["layers.1.mlp.up_proj.weight"], dict(base.backbone.named_parameters())["layers.1.mlp.up_proj.weight"])
    trainable = load_causal_reward_model(ckpt, device="cpu", trainable=True)
    assert {n for n, p in trainable.backbone.named_parameters() if p.requires_grad} == layer1 | {"norm.weight"}


def test_a_top_checkpoint_with_a_changed_layer_count_is_refused_with_the_fix(tiny_model_dir, tmp_path):
    import json

    ckpt = build_reward_model(RewardModelSpec(base_model=tiny_model_dir, finetune="top", lora_layers=1),
                              device="cpu").save(tmp_path / "ckpt")
    spec = json.loads((ckpt / "reward_model.json").read_text())
    (ckpt / "reward_model.json").write_text(json.dumps({**spec, "lora_layers": 2}))
    with pytest.raises(ModelError, match="missing .*lora_layers in .* must be the number it was trained with"):
        load_reward_model(str(ckpt), device="cpu")
    (ckpt / "top_layers.safetensors").unlink()
    with pytest.raises(ModelError, match="top_layers.safetensors is missing or unreadable"):
        load_reward_model(str(ckpt), device="cpu")


def test_lora_layers_limits_adapters_to_top_layers(tiny_model_dir):
    rm = build_reward_model(RewardModelSpec(base_model=tiny_model_dir, finetune="lora", lora_layers=1), device="cpu")
    names = [n for n, p in rm.named_parameters() if p.requires_grad and "lora_" in n]
    assert names and all(".layers.1." in n for n in names)


@pytest.mark.parametrize("kwargs,needle", [({"finetune": "qlora"}, "finetune='qlora'"), ({"lora_r": 0}, "lora_r=0"),
                                           ({"max_length": 4}, "max_length=4"), ({"lora_layers": 0}, "lora_layers=0")])
def test_bad_spec_is_refused(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        RewardModelSpec(base_model="x", **kwargs)


def test_sequence_classifier_rm_loads_and_scores(tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = build_tiny_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    rm = load_reward_model(str(tmp_path), device="cpu")
    assert isinstance(rm, SequenceClassifierRewardModel) and not rm.is_causal
    seqs = _seqs(rm)
    batched = score_sequences(rm, seqs)
    alone = torch.cat([score_sequences(rm, [s]) for s in seqs])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
    trace = reward_trace(rm, [{"role": "user", "content": "Q?"}], "Short.")  # slow path: prefixes scored in batches
    assert trace.slow_path and trace.final == pytest.approx(score_sequences(rm, [seqs[0]])[0].item(), abs=1e-5)


def test_unloadable_reward_model_says_what_it_needs(tmp_path):
    with pytest.raises(ModelError, match="no model directory"):
        load_reward_model("./does-not-exist")


@pytest.fixture()
def remote_code_checkpoint(remote_code_model, tiny_model_dir, tmp_path):
    """A full-finetune checkpoint that asks for remote code three ways: its reward_model.json says
    trust_remote_code true, its backbone's config.json has an auto_map naming code shipped beside it,
    and its base model (for the tokenizer) is a directory that does the same. -> (checkpoint, marker)."""
    import json
    import shutil

    directory, marker = remote_code_model
    ckpt = build_reward_model(RewardModelSpec(base_model=tiny_model_dir, finetune="full", max_length=64), device="cpu").save(
        tmp_path / "ckpt")
    shutil.copy(directory / "configuration_marker.py", ckpt / "backbone")
    config = json.loads((ckpt / "backbone" / "config.json").read_text())
    (ckpt / "backbone" / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoConfig": "configuration_marker.MarkerConfig"}}))
    spec = json.loads((ckpt / "reward_model.json").read_text())
    (ckpt / "reward_model.json").write_text(json.dumps({**spec, "base_model": str(directory), "trust_remote_code": True}))
    return ckpt, marker


def _refused_naming_every_file(call, ckpt, base):
    with pytest.raises(ModelError, match="remote code is not allowed") as refused:
        call()
    message = str(refused.value)
    assert f"{ckpt / 'reward_model.json'} (trust_remote_code: true)" in message
    assert f"{ckpt / 'backbone' / 'config.json'} (auto_map: configuration_marker.MarkerConfig)" in message
    assert f"{base / 'config.json'} (auto_map: " in message and "--trust-remote-code" in message


def test_a_checkpoint_cannot_grant_itself_remote_code(remote_code_checkpoint, remote_code_model):
    ckpt, marker = remote_code_checkpoint
    _refused_naming_every_file(lambda: load_reward_model(str(ckpt), device="cpu"), ckpt, remote_code_model[0])
    _refused_naming_every_file(lambda: load_causal_reward_model(ckpt, device="cpu", trainable=True), ckpt, remote_code_model[0])
    with pytest.raises(ModelError, match=f"{remote_code_model[0] / 'config.json'}"):
        build_reward_model(RewardModelSpec(base_model=str(remote_code_model[0]), trust_remote_code=True), device="cpu")
    assert not marker.exists()


def test_init_from_and_retrain_refuse_a_checkpoint_that_asks_for_remote_code(remote_code_checkpoint, remote_code_model,
                                                                             toy_pairs, tmp_path):
    from reform_engine.data import write_jsonl
    from reform_engine.retrain import RetrainConfig, run_retrain
    from reform_engine.robustness import RobustnessConfig
    from reform_engine.runtime import Runtime
    from reform_engine.stages import RetrainRecipe
    from reform_engine.training import TrainRewardConfig, train_reward_model

    ckpt, marker = remote_code_checkpoint
    data = tmp_path / "toy.jsonl"
    write_jsonl(data, [p.to_trl() for p in toy_pairs])
    init = TrainRewardConfig(data=str(data), init_from=str(ckpt), max_steps=1, model=RewardModelSpec(max_length=64),
                             runtime=Runtime(device="cpu"))
    _refused_naming_every_file(lambda: train_reward_model(init, tmp_path / "init-run"), ckpt, remote_code_model[0])
    for mode in ("finetune", "scratch"):
        config = RetrainConfig(base_rm=str(ckpt), augment_data=str(data), data=str(data), train_rows="0:6", eval_rows="6:",
                               retrain=RetrainRecipe(mode=mode),
                               robustness=RobustnessConfig(reward_model="", max_length=64), runtime=Runtime(device="cpu"))
        with pytest.raises(ModelError, match=f"{remote_code_model[0] / 'config.json'}.*remote code is not allowed"):
            run_retrain(config, tmp_path / f"retrain-{mode}")
    assert not marker.exists()


def test_a_checkpoint_records_remote_code_only_when_its_model_asks_for_it(tiny_model_dir):
    rm = build_reward_model(RewardModelSpec(base_model=tiny_model_dir, finetune="head", trust_remote_code=True), device="cpu",
                            trust_remote_code=True)
    assert rm.spec.trust_remote_code is False  # allowing it does not make every later load of this checkpoint need leave


def test_the_spec_defaults_are_the_training_recipes_and_old_spec_files_still_load(tmp_path):
    import json

    from reform_engine.reward_model import read_spec
    from reform_engine.training import TrainRewardConfig

    assert TrainRewardConfig().model == RewardModelSpec()
    assert (RewardModelSpec().max_length, RewardModelSpec().lora_layers) == (320, 8)
    old = {"base_model": "m", "finetune": "lora", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "lora_layers": None,
           "use_chat_template": True, "max_length": 512, "trust_remote_code": False}  # as checkpoints wrote it before
    (tmp_path / "reward_model.json").write_text(json.dumps(old))
    assert read_spec(tmp_path) == RewardModelSpec(base_model="m", lora_layers=None, max_length=512)


@pytest.mark.parametrize("finetune", ["lora", "head", "top"])
def test_a_checkpoint_names_its_backbone_and_is_refused_on_other_weights(tmp_path, finetune):
    import json

    from reform_engine.tiny import save_tiny_model

    base = save_tiny_model(tmp_path / "base", seed=1)
    rm = build_reward_model(RewardModelSpec(base_model=str(base), finetune=finetune, max_length=128), device="cpu", seed=3)
    ckpt = rm.save(tmp_path / "ckpt")
    recorded = json.loads((ckpt / "backbone.json").read_text())
    assert recorded["base_model"] == str(base) and recorded["dtype"] == "float32"
    assert recorded["parameters"] == sum(p.numel() for p in load_reward_model(str(ckpt), device="cpu").backbone.parameters())
    assert not (ckpt / "backbone").exists()  # a reference, not a copy
    if finetune == "lora":
        assert json.loads((ckpt / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
        assert sorted(f.name for f in (ckpt / "adapter").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    save_tiny_model(base, seed=2)  # same shapes, other weights under the same name
    with pytest.raises(ModelError, match=r"was trained on another backbone .*weights sha256 .*Give the model it was trained on"):
        load_reward_model(str(ckpt), device="cpu")


def test_a_checkpoint_on_a_backbone_of_other_shapes_says_which_shapes_differ(tmp_path):
    from reform_engine.tiny import build_tiny_causal_lm, save_tiny_model

    base = save_tiny_model(tmp_path / "base", seed=1)
    ckpt = build_reward_model(RewardModelSpec(base_model=str(base), finetune="head"), device="cpu").save(tmp_path / "ckpt")
    build_tiny_causal_lm(len(build_tiny_tokenizer()), seed=1, hidden=48).save_pretrained(base, safe_serialization=True)
    with pytest.raises(ModelError, match=r"hidden_size 32 vs 48"):
        load_reward_model(str(ckpt), device="cpu")
