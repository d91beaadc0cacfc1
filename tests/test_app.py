"""Every page renders without exceptions and its main action works, on tiny models (AppTest, in process)."""
import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app_support import APP, ROOT, app_env, no_thread_outlives_the_tests, settle  # noqa: F401  (a fixture)
from reform_engine.data import upload_file_name
from pages._draw import WAIT
from reform_engine.reward_model import DEMO_RM_PATH, RewardModelSpec, build_reward_model
from reform_engine.runtime import Runtime
from reform_engine.tiny import save_tiny_model



@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """An ASCII-only tiny policy and two tiny RMs on it (a REFORM checkpoint each)."""
    root = tmp_path_factory.mktemp("app-models")
    policy = str(save_tiny_model(root / "policy", seed=1, ascii_only=True))
    rms = []
    for i, seed in enumerate((3, 4)):
        rm = build_reward_model(RewardModelSpec(base_model=policy, finetune="full", max_length=256), device="cpu", seed=seed)
        rms.append(str(rm.save(root / f"rm{i}")))
    return {"policy": policy, "rm": rms[0], "rm2": rms[1]}


@pytest.fixture()
def env(tiny_setup, tmp_path, monkeypatch):
    app_env(monkeypatch, tmp_path / "project", policy=tiny_setup["policy"], reward_model=tiny_setup["rm"])
    return tiny_setup


def metrics(at: AppTest) -> dict:
    return {m.label: m.value for m in at.metric}


def test_home_shows_models_data_and_rm_accuracy_with_length_baselines(env):
    at = settle(AppTest.from_file(APP, default_timeout=120))
    assert at.title[0].value == "REFORM workbench"
    m = metrics(at)
    assert m["Pairs"] == "165"
    assert m["RM accuracy"].endswith("%") and m["Always the longer"].endswith("%") and m["Always the shorter"].endswith("%")
    assert float(m["Always the longer"].rstrip("%")) + float(m["Always the shorter"].rstrip("%")) == pytest.approx(100, abs=0.2)
    assert any(env["policy"] in md.value for md in at.markdown)


def test_home_labels_each_accuracy_with_the_rows_it_is_measured_on(env, monkeypatch, tmp_path):
    from reform_engine.data import DEMO_PATH
    from reform_engine.runs import RunDir
    from reform_engine.training import TrainRewardConfig

    run = RunDir(tmp_path / "run")  # an RM trained here on rows 0:132 of the demo set (its run's config.json says so)
    build_reward_model(RewardModelSpec(base_model=env["policy"], finetune="head"), device="cpu").save(run.checkpoint_path)
    run.write_config(TrainRewardConfig(data=str(DEMO_PATH), train_rows="0:132", model=RewardModelSpec(base_model=env["policy"])))
    monkeypatch.setenv("REFORM_REWARD_MODEL", str(run.checkpoint_path))
    monkeypatch.setenv("REFORM_ROWS", "120:140")
    at = settle(AppTest.from_file(APP, default_timeout=120))
    labels = [md.value for md in at.markdown if "accuracy**" in md.value]
    assert labels == ["**Held-out accuracy**: rows `120:140` of the data in use outside its training rows `0:132` (8 pairs it never saw).",
                      "**Training accuracy**: its training rows `0:132` (12 pairs it learnt from; this measures fit, not "
                      "generalisation)."]
    assert [m.label for m in at.metric].count("RM accuracy") == 2

    monkeypatch.setenv("REFORM_REWARD_MODEL", env["rm"])  # trained elsewhere: its training rows are unknown
    at = settle(AppTest.from_file(APP, default_timeout=120))
    assert any(md.value.startswith("On rows `120:140` of the data in use (20 pairs). The RM's training rows are unknown")
               for md in at.markdown)


def test_home_switches_data_and_reports_bad_input_on_the_page(env, tmp_path):
    at = settle(AppTest.from_file(APP, default_timeout=120))
    at.radio(key="home_data_kind").set_value("Local path")
    at.text_input(key="home_data_text").set_value(str(tmp_path / "missing.jsonl"))
    at.get("form_submit_button")[0].click()  # "Use this data"
    at = settle(at)
    assert any("no such file" in e.value for e in at.error), [e.value for e in at.error]

    good = tmp_path / "pairs.jsonl"
    good.write_text("".join(json.dumps({"prompt": f"Q{i}?", "chosen": "A good, helpful answer.", "rejected": "No."}) + "\n"
                            for i in range(6)))
    at.text_input(key="home_data_text").set_value(str(good))
    at.text_input(key="home_rows").set_value("bad rows")
    at.get("form_submit_button")[0].click()
    at = settle(at)
    assert any("start:end" in e.value for e in at.error)
    at.text_input(key="home_rows").set_value("1:5")
    at.get("form_submit_button")[0].click()
    at = settle(at)
    assert metrics(at)["Pairs"] == "4" and not at.error


def test_home_upload_is_validated_and_used(env):
    at = settle(AppTest.from_file(APP, default_timeout=120))
    at.radio(key="home_data_kind").set_value("Upload a file")
    at.get("form_submit_button")[0].click()
    at = settle(at)
    assert any("no file chosen" in e.value for e in at.error)

    rows = "".join(json.dumps({"prompt": f"Q{i}?", "chosen": "A careful answer.", "rejected": "No."}) + "\n" for i in range(3))
    at.file_uploader(key="home_upload").set_value(("../../my pairs.exe", rows.encode(), "application/octet-stream"))
    at.get("form_submit_button")[0].click()
    at = settle(at)
    assert any("unknown file type" in e.value for e in at.error)
    at.file_uploader(key="home_upload").set_value(("../../my pairs.jsonl", b"not json\n", "application/json"))
    at.get("form_submit_button")[0].click()
    at = settle(at)
    assert any("not valid JSON" in e.value for e in at.error), [e.value for e in at.error]  # validated like any file
    at.file_uploader(key="home_upload").set_value(("../../my pairs.jsonl", rows.encode(), "application/json"))
    at.get("form_submit_button")[0].click()
    at = settle(at)
    kept = Path(at.session_state["app_settings"].data)
    assert kept.name.endswith("-my_pairs.jsonl") and kept.parent.name == "uploads" and metrics(at)["Pairs"] == "3"
    more = rows + json.dumps({"prompt": "Q3?", "chosen": "Another answer.", "rejected": "No."}) + "\n"
    at.file_uploader(key="home_upload").set_value(("../../my pairs.jsonl", more.encode(), "application/json"))
    at.get("form_submit_button")[0].click()
    at = settle(at)
    second = Path(at.session_state["app_settings"].data)
    assert second != kept and kept.read_text() == rows and metrics(at)["Pairs"] == "4"  # the first upload is untouched


def test_home_refuses_broken_data_and_keeps_the_data_in_use(env):
    at = settle(AppTest.from_file(APP, default_timeout=120))
    before = at.session_state["app_settings"].data
    at.radio(key="home_data_kind").set_value("Upload a file")
    at.file_uploader(key="home_upload").set_value(("broken.jsonl", b"not json\n[1, 2]\n", "application/json"))
    at.get("form_submit_button")[0].click()  # "Use this data"
    at = settle(at)
    assert at.session_state["app_settings"].data == before and metrics(at)["Pairs"] == "165"
    assert len(at.error) == 1, [e.value for e in at.error]
    error = at.error[0].value
    assert error.startswith("Not switched: ") and "every row was invalid" in error and "Fix: " in error
    assert error.count("broken.jsonl") == 1
    assert not [b for b in at.button if b.key and b.key.startswith("app_retry")]

    csv = b"question,good,bad\nQ?,A fine answer.,No.\n"
    at.file_uploader(key="home_upload").set_value(("pairs.csv", csv, "text/csv"))
    at.get("form_submit_button")[0].click()
    at = settle(at)
    assert at.session_state["app_settings"].data == before and metrics(at)["Pairs"] == "165"
    assert [e.value for e in at.error] == [
        f"Not switched: {at.session_state['app_settings'].project_dir}/uploads/{upload_file_name('pairs.csv', csv)}, "
        "row 1: missing column(s) \\['chosen', 'rejected'\\]; found \\['bad', 'good', 'question'\\]. Fix: map the file's "
        "columns to prompt, chosen and rejected under 'Column mapping' (beside the file, on Home or the Data page), then use "
        "the data again."]


def test_home_column_mapping_renames_the_files_columns_for_every_page(env):
    at = settle(AppTest.from_file(APP, default_timeout=120))
    at.radio(key="home_data_kind").set_value("Upload a file")
    at.file_uploader(key="home_upload").set_value(("pairs.csv", b"question,good,bad\nQ1?,A fine answer.,No.\n"
                                                               b"Q2?,Another answer.,Go away.\n", "text/csv"))
    for ours, theirs in (("prompt", "question"), ("chosen", "good"), ("rejected", "bad")):
        at.text_input(key=f"home_column_{ours}").set_value(theirs)
    at.get("form_submit_button")[0].click()
    at = settle(at)
    assert not at.error, [e.value for e in at.error]
    mapped = Path(at.session_state["app_settings"].data)
    assert mapped.name.endswith("-pairs.mapped.jsonl") and metrics(at)["Pairs"] == "2"
    assert [json.loads(line) for line in mapped.read_text().splitlines()] == [
        {"prompt": "Q1?", "chosen": "A fine answer.", "rejected": "No."},
        {"prompt": "Q2?", "chosen": "Another answer.", "rejected": "Go away."}]


def test_home_without_a_reward_model_says_how_to_train_one(env, monkeypatch, tmp_path):
    monkeypatch.setenv("REFORM_REWARD_MODEL", str(tmp_path / "nothing-here"))
    at = settle(AppTest.from_file(APP, default_timeout=120))
    assert any("train-rm" in c.value for c in at.code)
    assert any("No reward model" in w.value for w in at.warning)
    # a bad model switch is refused with a message, not an exception
    at.text_input(key="home_rm").set_value("/no/such/rm")
    at.get("form_submit_button")[1].click()
    at = settle(at)
    assert any("no reward model at `/no/such/rm`" in e.value for e in at.error)


MISTYPED_ID = "smollm2-135m-instrct"  # the default model's name with a letter missing: a hub id nobody has cached


def test_a_mistyped_model_id_is_refused_by_the_models_form_at_once_offline(env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    at = settle(AppTest.from_file(APP, default_timeout=120))
    at.text_input(key="home_policy").set_value(MISTYPED_ID)
    at.get("form_submit_button")[1].click()  # "Use these models"
    at.run()  # no settle: the refusal is on the page of this very run, before any model load starts
    assert at.session_state["app_settings"].policy == env["policy"]
    assert [e.value for e in at.error] == [
        f"Not switched: {MISTYPED_ID} is not a local directory, and as a hub id it is not in the local Hugging Face cache "
        "while the model hub cannot be reached (HF_HUB_OFFLINE is set); check the spelling, or give a local model "
        "directory (the default model is smollm2-135m-instruct)."]


def test_a_mistyped_backbone_is_refused_before_a_training_job_starts(env, monkeypatch, tmp_path):
    from reform_engine.store import Store

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("REFORM_REWARD_MODEL", str(tmp_path / "nothing-here"))
    at = settle(AppTest.from_file(APP, default_timeout=120))
    at.text_input(key="home_train_model").set_value(MISTYPED_ID)
    at.button(key="home_train").click().run()
    assert any(e.value.startswith(f"Not started: {MISTYPED_ID} is not a local directory") for e in at.error), \
        [e.value for e in at.error]
    assert Store(Path(at.session_state["app_settings"].project_dir) / "reform.duckdb").list_jobs().empty


def test_a_policy_task_with_a_mistyped_id_fails_without_taking_the_model_lock(env, monkeypatch):
    from pages import _loading
    from reform_engine.models import ModelError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with _loading._LOAD_LOCK:  # another model is loading: a typo must not wait for it
        task = _loading._policy_task.__wrapped__(MISTYPED_ID, "cpu", False)
        task.wait(30)  # generous: it only has to refuse a name; taking the lock it would never finish
        assert task.state == "failed" and isinstance(task.error, ModelError)
    assert "check the spelling" in str(task.error)


def test_influential_page_selects_lowest_loss_share_and_queues_pairs(env):
    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/influential.py")
    table = at.dataframe[0].value
    assert len(table) == math.ceil(0.05 * 165)
    assert list(table["loss"]) == sorted(table["loss"])  # lowest loss first
    assert list(table["rank"]) == list(range(1, len(table) + 1))
    at.slider(key="influential_p").set_value(10).run()
    assert len(at.dataframe[0].value) == math.ceil(0.10 * 165)
    at.radio(key="influential_strategy").set_value("highest_loss").run()
    high = at.dataframe[0].value
    assert list(high["loss"]) == sorted(high["loss"], reverse=True)
    assert high["loss"].min() >= table["loss"].max()
    at.multiselect(key="influential_pick").set_value(list(high["pair_id"][:2])).run()
    at.button(key="influential_send").click()
    at = settle(at)
    assert at.session_state["influential_targets"] == list(high["pair_id"][:2])
    assert at.title[0].value == "Controlled decoding"  # switched to the decoding page


def test_influential_keeps_the_pick_across_strategies_and_shows_the_rewards_first(env):
    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/influential.py")
    table = at.dataframe[0].value
    assert list(table.columns[:3]) == ["r+", "r−", "loss"]
    pick = list(table["pair_id"][1:3])
    at.multiselect(key="influential_pick").set_value(pick).run()
    at.radio(key="influential_strategy").set_value("highest_loss").run()
    assert at.multiselect(key="influential_pick").value == pick  # not in this selection, still picked
    at.radio(key="influential_strategy").set_value("lowest_loss").run()
    assert at.multiselect(key="influential_pick").value == pick and not at.exception


def test_decoding_page_runs_judges_inspects_and_queues_a_variant(env):
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["influential_targets"] = ["demo_pairs.jsonl:3"]
    at = settle(at, "pages/decoding.py")
    assert at.selectbox(key="decoding_pair").value == "demo_pairs.jsonl:3"
    assert any(c.value.startswith("Policy:") for c in at.sidebar.caption)  # the page ran inside app.py's frame
    at.slider(key="decoding_k").set_value(3)
    at.slider(key="decoding_max_tokens").set_value(6)
    at.button(key="decoding_run").click()
    at = settle(at)
    last = at.session_state["decoding_last"]
    v = last["variant"]
    assert len(v.steps) <= 6 and v.text and last["plain"] is not None
    verdict = [el.value for el in at.success] + [el.value for el in at.warning]
    assert any(("True inversion" in x) == v.is_inversion and ("inversion" in x.lower()) for x in verdict)
    assert any(v.text in c.value for c in at.code)
    cand = next(d.value for d in at.dataframe if "log π" in d.value.columns)
    assert len(cand) == 3 and list(cand["chosen"]).count("✓") == 1
    if len(v.steps) > 1:
        at.slider(key="decoding_step").set_value(2).run()
        assert any(md.value.startswith("**Step 2**") for md in at.markdown)
    at.button(key="decoding_send").click()
    at = settle(at)
    pending = at.session_state["curation_pending"]
    assert len(pending) == 1 and pending[0]["text"] == v.text and pending[0]["is_inversion"] == v.is_inversion


def decoded(text: str, ids: list[int], r_variant: float, perplexity: float, plain: float, stopped: str = "eos"):
    """A judged variant of demo pair 3 (r+ = -0.5, r- = -1.743, the issue's threshold) as the page keeps it."""
    from conftest import make_pair
    from reform_engine.decoding import DecodingResult, StepRecord
    from reform_engine.influence import ScoredPair
    from reform_engine.inversions import make_variant

    source = ScoredPair(make_pair(3, "How do I boil water?", "Heat it in a pot.", "Figure it out."), -0.5, -1.743, 0.3, 1)
    steps = [StepRecord(i, [t, 0], ["x", "y"], [-0.5, -2.0], [r_variant, 0.0], [0.0, 0.0], 0, t, "x", r_variant, False)
             for i, t in enumerate(ids)]
    result = DecodingResult(source.pair.prompt, "lower", "shared", ids, text, steps, r_variant, perplexity, stopped)
    return make_variant(source, result, r_variant, plain)


def test_decoding_page_flags_gibberish_and_judges_and_sends_the_plain_continuation(env):
    from reform_engine.decoding import DecodingConfig

    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/decoding.py")
    assert at.number_input(key="decoding_fluency").value == 20.0
    gibberish = decoded("Hagai Kamerman H.Pomoderitametakomoronit", [5, 6, 7], -3.0, 63.75, 2.5)
    plain = decoded("You can boil water in a kettle.", [8, 9, 10], -2.765, 2.5, 2.5)
    at.session_state["decoding_last"] = {"pair_id": "demo_pairs.jsonl:3", "config": DecodingConfig(k=10, alpha=0.0), "seed": 0,
                                         "variant": gibberish, "plain": plain}
    at.run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any("Not a true inversion" in e and "(by 1.257), but it is not fluent" in e for e in errors), errors
    notes = [c.value for c in at.caption]
    assert any("**Not fluent**: perplexity 63.75, 25.5× the plain policy's 2.50" in c for c in notes), notes
    # the plain continuation: -2.765 < r- = -1.743 is a true inversion, said so, and it can be sent
    assert any("True inversion" in s.value and "the plain continuation -2.765" in s.value and "(by 1.022)" in s.value
               for s in at.success)
    at.button(key="decoding_send_plain").click()
    at = settle(at)
    pending = at.session_state["curation_pending"]
    assert [(r["text"], r["is_inversion"], r["fluent"]) for r in pending] == [("You can boil water in a kettle.", True, True)]

    # cut at the limit mid-sentence: flagged; one token: not sent
    at.session_state["decoding_last"] = {**at.session_state["decoding_last"],
                                         "variant": decoded("Well, you could", [5, 6, 7], -3.0, 3.0, 2.5, "max_new_tokens")}
    at.run()
    assert any("**Truncated**: cut mid-sentence at the token limit" in c.value for c in at.caption)
    assert any("True inversion" in s.value and "this variant" in s.value for s in at.success)
    at.session_state["decoding_last"] = {**at.session_state["decoding_last"], "variant": decoded("No", [5], -3.0, 3.0, 2.5)}
    at.run()
    assert at.button(key="decoding_send").disabled and not at.button(key="decoding_send_plain").disabled
    assert any("Cannot be sent to curation: it is 1 token long; a variant needs at least 2." in c.value for c in at.caption)
    assert any("Not a true inversion" in e.value and "it is 1 token long" in e.value for e in at.error)


def test_decoding_page_reports_a_bad_knob_on_the_page(env):
    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/decoding.py")
    at.slider(key="decoding_max_tokens").set_value(256)  # the tiny RM reads 256 tokens: no room left for a prompt
    at.button(key="decoding_run").click()
    at = settle(at)
    assert any("Decoding did not run" in e.value and "max_length" in e.value for e in at.error)


def test_a_new_decoding_run_clears_the_last_verdict_and_its_send_button(env):
    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/decoding.py")
    at.slider(key="decoding_max_tokens").set_value(4)
    at.button(key="decoding_run").click()
    at = settle(at)
    assert any("inversion" in el.value.lower() for el in [*at.success, *at.warning]) and at.button(key="decoding_send")
    at.slider(key="decoding_max_tokens").set_value(256)  # this run fails: no room left for the prompt
    at.button(key="decoding_run").click()
    at = settle(at)
    assert any("Decoding did not run" in e.value for e in at.error)
    assert not [el.value for el in [*at.success, *at.warning] if "inversion" in el.value.lower()]
    assert "decoding_send" not in [b.key for b in at.button] and "decoding_last" not in at.session_state


def test_reward_explorer_traces_perturbs_and_compares_two_rms(env):
    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/explorer.py")
    assert "Reward" in metrics(at) and len(at.get("plotly_chart")) == 1
    base = metrics(at)["Reward"]
    at.selectbox(key="explorer_perturbation").set_value("capitalization").run()
    assert any("BOIL FRESH WATER" in c.value for c in at.code)
    assert "Perturbed" in metrics(at) and metrics(at)["Reward"] == base
    at.text_input(key="explorer_compare_rm").set_value(env["rm2"])
    at = settle(at)
    assert len(at.get("plotly_chart")) == 2 and len([m for m in at.metric if m.label == "Reward"]) == 2
    at.text_area(key="explorer_response").set_value("   ").run()
    assert any("response is empty" in e.value for e in at.error) and not at.exception
    at.text_area(key="explorer_response").set_value("Fine.")
    at.text_input(key="explorer_compare_rm").set_value("/no/such/rm").run()
    assert any("No reward model at `/no/such/rm`" in e.value for e in at.error)


def widget_shares(at: AppTest) -> dict[str, float]:
    """Each keyed widget's share of the page's width: the product of the column weights it sits in."""
    from streamlit.testing.v1.element_tree import Column

    shares = {}

    def walk(node, share: float) -> None:
        for child in getattr(node, "children", {}).values():
            inner = share * child.weight if isinstance(child, Column) else share
            if getattr(child, "key", None):
                shares[child.key] = inner
            walk(child, inner)
    walk(at.main, 1.0)
    return shares


def test_reward_explorer_aligns_the_perturbed_trace_by_token_and_gives_the_picker_a_row(env):
    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/explorer.py")
    assert widget_shares(at)["explorer_perturbation"] == 1.0
    at.selectbox(key="explorer_perturbation").set_value("prompt_echo").run()
    echo = 'You asked: "How do I make a good cup of tea?" '  # what prompt_echo puts before the response
    n = len(at.text_area(key="explorer_response").value)  # the tiny tokenizer: one token per byte
    original, perturbed = json.loads(at.get("plotly_chart")[0].proto.spec)["data"]
    assert original["x"] == list(range(len(echo) + 1, len(echo) + n + 1))  # each token faces its perturbed self
    assert perturbed["x"] == list(range(1, len(echo) + n + 1))
    tokens = next(d.value for d in at.dataframe if "perturbed reward" in d.value.columns)
    assert len(tokens) == len(echo) + n and tokens["original"].tolist()[: len(echo)] == [""] * len(echo)
    assert tokens["perturbed"].tolist()[len(echo):] == tokens["original"].tolist()[len(echo):] and not at.exception


ROW_CHARS = 90  # label characters a full row holds at 14 px in a ~650 px wide main area (a laptop window)


def test_checkbox_and_toggle_labels_fit_the_columns_they_stand_in(env):
    tight = {}
    for page in ("pages/retrain.py", "pages/adversarial.py", "pages/curation.py", "pages/decoding.py"):
        at = settle(AppTest.from_file(APP, default_timeout=120), page)
        shares = widget_shares(at)
        boxes = [*at.checkbox, *at.toggle]
        assert boxes, page
        tight.update({box.label: round(shares[box.key], 3) for box in boxes
                      if len(box.label) + 4 > ROW_CHARS * shares[box.key]})  # + the box or switch itself
    assert tight == {}


def test_reward_explorer_loads_a_pair_of_the_data(env):
    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/explorer.py")
    at.radio(key="explorer_side").set_value("rejected")
    at.button(key="explorer_load_pair").click()
    at = settle(at)
    assert at.text_area(key="explorer_prompt").value.startswith("Human:")
    assert at.text_area(key="explorer_response").value and not at.error


def test_data_page_shows_pairs_and_reports_a_bad_path(env):
    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/data_browser.py")
    assert len(at.dataframe) == 1
    at.text_input(key="data_path").set_value("/nonexistent/pairs.jsonl").run()
    assert not at.exception and "no such file" in at.error[0].value


def test_data_page_asks_for_a_path_when_the_path_is_empty(env):
    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/data_browser.py")
    at.text_input(key="data_path").set_value("   ").run()
    assert not at.exception and not at.error
    assert [i.value for i in at.info] == ["Enter a path to a data file above (or a hub dataset id) to browse it."]


def length_slider(at: AppTest):
    return next(sl for sl in at.slider if sl.label.startswith("Response length"))


def test_data_page_filters_pairs_and_shows_one_in_full_as_text(env, tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "How do I boil an egg?", "chosen": "Put it in boiling water for 8 minutes.", "rejected": "No."},
            {"prompt": "Tell me a joke.", "chosen": f"Sure: {BEACON} # not a heading", "rejected": "Go away."},
            {"prompt": "Where is Paris?", "chosen": "In France.", "rejected": "On the moon, next to the big cheese."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/data_browser.py")
    at.text_input(key="data_path").set_value(str(path)).run()
    assert len(at.dataframe[0].value) == 3 and length_slider(at).value == (0, 50)
    at.text_input(key="data_contains").set_value("PARIS").run()
    assert list(at.dataframe[0].value["id"]) == ["pairs.jsonl:2"] and "1 of 3 pairs" in [c.value for c in at.caption]
    at.text_input(key="data_contains").set_value("").run()
    length_slider(at).set_value((40, 50)).run()
    assert list(at.dataframe[0].value["id"]) == ["pairs.jsonl:1"]
    assert at.selectbox(key="data_pair").options == ["pairs.jsonl:1"]
    assert [c.value for c in at.code] == ["Human: Tell me a joke.", f"Sure: {BEACON} # not a heading", "Go away."]
    assert not rendered_markup(at)
    at.text_input(key="data_contains").set_value("no such words").run()
    assert len(at.dataframe[0].value) == 0 and "No pair matches the filters." in [i.value for i in at.info]


def test_data_page_switches_the_data_in_use_only_after_checking_it(env, tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text("not json\n")
    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/data_browser.py")
    before = at.session_state["app_settings"].data
    at.text_input(key="data_path").set_value(str(broken)).run()
    assert any("every row was invalid" in e.value for e in at.error) and "data_use" not in [b.key for b in at.button]

    good = tmp_path / "pairs.csv"
    good.write_text("question,good,bad\nQ1?,A fine answer.,No.\nQ2?,Another answer.,Go away.\nQ3?,Yes.,Nope.\n")
    at.text_input(key="data_path").set_value(str(good)).run()
    assert [e.value for e in at.error] == [f"{good}, row 1: missing column(s) \\['chosen', 'rejected'\\]; found "
                                           "\\['bad', 'good', 'question'\\]. Fix: map the file's columns to prompt, chosen "
                                           "and rejected under 'Column mapping' (beside the file, on Home or the Data page), "
                                           "then use the data again."]
    for ours, theirs in (("prompt", "question"), ("chosen", "good"), ("rejected", "bad")):
        at.text_input(key=f"data_column_{ours}").set_value(theirs)
    at.run()
    assert len(at.dataframe[0].value) == 3 and not at.error
    at.text_input(key="data_rows").set_value("5:9").run()
    at.button(key="data_use").click().run()
    assert at.session_state["app_settings"].data == before
    assert any(e.value.startswith("Not switched: ") and "no valid pairs in rows '5:9'" in e.value for e in at.error)
    at.text_input(key="data_rows").set_value("1:3").run()
    at.button(key="data_use").click().run()
    s = at.session_state["app_settings"]
    assert Path(s.data).name.endswith("-pairs.mapped.jsonl") and s.rows == "1:3" and not at.error
    assert any(m.value.startswith("Now in use on every page:") for m in at.success)
    at = settle(at, "pages/home.py")
    assert metrics(at)["Pairs"] == "2"


def test_a_policy_that_cannot_load_is_a_message_with_retry_not_a_traceback(env, monkeypatch, tmp_path):
    monkeypatch.setenv("REFORM_POLICY", str(tmp_path / "no-such-policy"))
    at = settle(AppTest.from_file(APP, default_timeout=120))
    assert any("no model directory" in e.value for e in at.error), [e.value for e in at.error]
    at.button(key="app_retry_policy").click()
    at = settle(at)
    assert any("no model directory" in e.value for e in at.error)
    at = settle(at, "pages/decoding.py")  # a page that needs the policy stops with the same message
    assert any("no model directory" in e.value for e in at.error) and not at.get("plotly_chart")


def test_settings_come_from_the_environment():
    from pages._settings import default_settings

    s = default_settings({"REFORM_POLICY": "/m/policy", "REFORM_PROJECT_DIR": "/p", "REFORM_ROWS": "0:10"})
    assert (s.policy, s.reward_model, s.project_dir, s.rows, s.device) == ("/m/policy", str(DEMO_RM_PATH), "/p", "0:10", "auto")
    assert default_settings({}).data.endswith("data/demo_pairs.jsonl") and default_settings({}).policy == "smollm2-135m-instruct"
    assert (default_settings({}).trust_remote_code, default_settings({}).score_max_length) == (False, 1024)
    s = default_settings({"REFORM_TRUST_REMOTE_CODE": "1", "REFORM_SCORE_MAX_LENGTH": "2048"})
    assert (s.trust_remote_code, s.score_max_length) == (True, 2048)


def test_the_default_rm_is_the_shipped_demo_rm_until_the_project_trains_its_own(tmp_path):
    from pages._settings import default_settings

    assert (DEMO_RM_PATH / "reward_model.json").is_file()  # the default points at a checkpoint that exists
    assert default_settings({"REFORM_PROJECT_DIR": str(tmp_path)}).reward_model == str(DEMO_RM_PATH)
    own = tmp_path / "runs" / "base-rm" / "checkpoint"
    build_reward_model(RewardModelSpec(base_model=str(save_tiny_model(tmp_path / "m")), finetune="head"), device="cpu").save(own)
    assert default_settings({"REFORM_PROJECT_DIR": str(tmp_path)}).reward_model == str(own)


def test_a_bad_row_range_is_refused_by_the_settings_themselves():
    from pages._settings import default_settings

    with pytest.raises(ValueError, match="rows='first half'; write 'start:end'"):
        default_settings({"REFORM_ROWS": "first half"})
    assert default_settings({}).runtime(seed=4) == Runtime(device="auto", seed=4)


def test_every_page_that_decodes_draws_the_same_decoding_controls(env):
    """One widget: the limits are DecodingConfig's (decoding.LIMITS), the defaults its own defaults."""
    from reform_engine.decoding import LIMITS, DecodingConfig

    default = DecodingConfig()
    for page, key in (("pages/decoding.py", "decoding"), ("pages/curation.py", "curation_gen"), ("pages/retrain.py", "pipeline")):
        at = settle(AppTest.from_file(APP, default_timeout=120), page)
        for knob, name in (("k", "k"), ("alpha", "alpha"), ("temperature", "temperature"), ("max_new_tokens", "max_tokens")):
            slider = at.slider(key=f"{key}_{name}")
            assert (slider.min, slider.max, slider.value) == (*LIMITS[knob], getattr(default, knob)), (page, knob)


def test_the_retrain_forms_keep_their_values_when_the_user_leaves_the_page_until_the_settings_change(env):
    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/retrain.py")
    typed = {"retrain_eval_rows": "1:9", "pipeline_train_rows": "0:50", "robustness_rows": "2:5"}
    for key, value in typed.items():
        at.text_input(key=key).set_value(value)
    at.number_input(key="pipeline_p").set_value(20.0)
    at.slider(key="pipeline_k").set_value(3)
    at.checkbox(key="pipeline_ablate_random").set_value(False)
    at.multiselect(key="robustness_perturbations").set_value(["verbosity"])
    at = settle(at)
    at = settle(at, "pages/explorer.py")
    at = settle(at, "pages/retrain.py")
    assert {key: at.text_input(key=key).value for key in typed} == typed
    assert (at.number_input(key="pipeline_p").value, at.slider(key="pipeline_k").value) == (20.0, 3)
    assert at.checkbox(key="pipeline_ablate_random").value is False
    assert at.multiselect(key="robustness_perturbations").value == ["verbosity"]
    at.session_state["app_settings"] = dataclasses.replace(at.session_state["app_settings"], rows="0:40")  # as Home does
    at = settle(at, "pages/explorer.py")
    at = settle(at, "pages/retrain.py")
    assert at.text_input(key="robustness_rows").value == "0:40" and at.number_input(key="pipeline_p").value == 5.0


def test_keys_that_pages_share_are_spelt_once_in_pages_keys():
    from pages import _keys

    shared = [v for k, v in vars(_keys).items() if k.isupper()]
    for path in (ROOT / "pages").glob("*.py"):
        if path.name != "_keys.py":
            text = path.read_text()
            assert not [key for key in shared if f'"{key}"' in text], path.name


def test_pages_draw_no_emoji_which_show_as_boxes_without_an_emoji_font():
    """Debian's chromium has no emoji font: pages use Material icons (:material/name:) instead."""
    emoji = re.compile("[\U0001F000-\U0001FAFF\u2300-\u23FF\u2600-\u26FF\u2705\u274C\u2728\uFE0F]")
    found = {path.name: emoji.findall(path.read_text()) for path in [*(ROOT / "pages").glob("*.py"), ROOT / "app.py"]}
    assert {name: chars for name, chars in found.items() if chars} == {}


BEACON = "![x](http://evil/beacon.png)"


def rendered_markup(at: AppTest) -> list[str]:
    """Images, links and heading lines that the page's markdown would render (code spans draw their
    text as typed, so they are left out)."""
    found = []
    for el in [*at.markdown, *at.caption, *at.info, *at.warning, *at.error, *at.success, *at.sidebar.caption]:
        outside = re.sub(r"(`+).*?\1", "", el.value, flags=re.S)
        found += re.findall(r"(?<!\\)\[[^\]]*(?<!\\)\]\(", outside) + re.findall(r"(?m)^ {0,3}#{1,6} ", outside)
    return found


def test_data_and_file_names_are_drawn_as_text_not_markdown(env, monkeypatch, tmp_path):
    evil = f"{BEACON}\n# Heading\nSure."
    path = tmp_path / "![x](beacon.png) # notes.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Q{i}? {BEACON}", "chosen": evil if i == 1 else "Fine.", "rejected": "No."})
                            + "\n" for i in range(3)))
    monkeypatch.setenv("REFORM_DATA", str(path))
    at = settle(AppTest.from_file(APP, default_timeout=120))
    assert metrics(at)["Pairs"] == "3" and not rendered_markup(at)
    assert any(str(path) in md.value for md in at.markdown)  # the name is shown, inside a code span
    at = settle(at, "pages/decoding.py")
    pair_id = f"{path.name}:1"
    at.selectbox(key="decoding_pair").set_value(pair_id)
    at = settle(at)
    assert not rendered_markup(at), rendered_markup(at)
    assert evil in [c.value for c in at.code] and f"Human: Q1? {BEACON}" in [c.value for c in at.code]
    assert not any(BEACON in el.value or "# Heading" in el.value for el in [*at.markdown, *at.caption])


def test_an_over_long_pair_is_skipped_with_a_count_on_home_and_influential(env, monkeypatch, tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"Q{i}?", "chosen": "A careful answer.", "rejected": "No."} for i in range(5)]
    rows.insert(2, {"prompt": "Q?", "chosen": "y " * 600, "rejected": "No."})  # 1200 tokens: over the 1024 limit
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("REFORM_DATA", str(path))
    at = settle(AppTest.from_file(APP, default_timeout=120))
    assert metrics(at)["Pairs"] == "6" and metrics(at)["RM accuracy"].endswith("%") and not at.error
    assert [w.value for w in at.warning if "not scored" in w.value] == [
        "1 pair(s) not scored: a response longer than the scoring limit of 1024 tokens (first: `pairs.jsonl:2`). "
        "Raise the limit under Home > Models to score them."]
    assert any(m.value.startswith("On all rows of the data in use (5 pairs).") for m in at.markdown)  # the 5 scored
    at = settle(at, "pages/influential.py")
    assert len(at.dataframe[0].value) == 1 and any("1 pair(s) not scored" in w.value for w in at.warning)
    assert metrics(at)["Selected pairs"] == "1 of 5"


def test_the_scoring_limit_and_remote_code_are_settings_with_a_warning_while_allowed(env):
    at = settle(AppTest.from_file(APP, default_timeout=120))
    assert at.session_state["app_settings"].trust_remote_code is False and not at.sidebar.warning
    at.number_input(key="home_score_max_length").set_value(512)
    at.toggle(key="home_trust_remote_code").set_value(True)
    at.get("form_submit_button")[1].click()  # "Use these models"
    at = settle(at)
    s = at.session_state["app_settings"]
    assert (s.score_max_length, s.trust_remote_code) == (512, True)
    assert any(w.value.startswith("Remote code is allowed") for w in at.sidebar.warning)


def test_a_checkpoint_asking_for_remote_code_is_refused_on_the_page(env, monkeypatch, tmp_path):
    from conftest import write_remote_code_model

    marker = tmp_path / "MARKER"
    base = write_remote_code_model(tmp_path / "base", marker)
    rm = build_reward_model(RewardModelSpec(base_model=env["policy"], finetune="head", max_length=64), device="cpu")
    ckpt = rm.save(tmp_path / "ckpt")
    spec = json.loads((ckpt / "reward_model.json").read_text())
    (ckpt / "reward_model.json").write_text(json.dumps({**spec, "base_model": str(base), "trust_remote_code": True}))
    monkeypatch.setenv("REFORM_REWARD_MODEL", str(ckpt))
    at = settle(AppTest.from_file(APP, default_timeout=120))
    refusals = [e.value for e in at.error if "remote code is not allowed" in e.value]
    assert len(refusals) == 1 and str(ckpt / "reward_model.json") in refusals[0] and str(base / "config.json") in refusals[0]
    monkeypatch.setenv("REFORM_REWARD_MODEL", env["rm"])
    monkeypatch.setenv("REFORM_COMPARE_RM", str(ckpt))  # the second RM of the explorer goes the same way
    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/explorer.py")
    assert any("remote code is not allowed" in e.value and str(ckpt / "reward_model.json") in e.value for e in at.error)
    assert not marker.exists()


def test_the_streamlit_config_turns_off_everything_that_would_reach_another_host():
    import tomllib

    text = (ROOT / ".streamlit" / "config.toml").read_text()
    config = tomllib.loads(text)
    assert config["browser"]["gatherUsageStats"] is False        # no telemetry (data.streamlit.io and its events)
    assert config["client"]["showErrorLinks"] is False           # no links that send an error to a search engine
    assert config["server"]["enableStaticServing"] is False
    assert config["server"]["address"] == "localhost"
    assert "theme" not in config and "mapbox" not in config       # no fonts or map tiles from a URL
    assert not re.search(r"(?m)^[^#\n]*https?://", text)          # no option names a remote URL


def test_the_tab_icon_is_a_local_file_so_no_page_icon_is_fetched_from_a_font_cdn(env, monkeypatch):
    """Without a page_icon, Streamlit's frontend makes each page's :material/…: icon the favicon and fetches it
    from fonts.gstatic.com at every page switch (47 failed requests in an offline browser session)."""
    import streamlit as st
    from streamlit.commands.page_config import _get_favicon_string

    icons = []
    real = st.set_page_config
    monkeypatch.setattr(st, "set_page_config", lambda *a, **kw: (icons.append(kw.get("page_icon")), real(*a, **kw))[1])
    settle(AppTest.from_file(APP, default_timeout=120), "pages/data_browser.py")
    assert icons and all(isinstance(i, Path) and i.is_file() and i.suffix == ".png" for i in icons), icons
    assert not _get_favicon_string(icons[0]).startswith((":material", "http"))
