"""Every page renders without exceptions and its main action works, on tiny models (AppTest, in process)."""
import json
import math
import re
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from reform_engine.reward_model import DEMO_RM_PATH, RewardModelSpec, build_reward_model
from reform_engine.runtime import Runtime
from reform_engine.tiny import save_tiny_model

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")


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
    monkeypatch.setenv("REFORM_POLICY", tiny_setup["policy"])
    monkeypatch.setenv("REFORM_REWARD_MODEL", tiny_setup["rm"])
    monkeypatch.setenv("REFORM_PROJECT_DIR", str(tmp_path / "project"))
    monkeypatch.setenv("REFORM_DEVICE", "cpu")
    for name in ("REFORM_DATA", "REFORM_ROWS", "REFORM_COMPARE_RM"):
        monkeypatch.delenv(name, raising=False)
    return tiny_setup


@pytest.fixture(scope="module", autouse=True)
def no_thread_outlives_the_tests():
    """A test that fails mid-load must not leave a model loading while the interpreter exits."""
    yield
    from reform_engine.background import wait_all
    wait_all()


def loading(at: AppTest) -> bool:
    return any("⏳" in el.value for el in at.info) or any("⏳" in el.proto.text for el in at.get("progress"))


def settle(at: AppTest, page: str | None = None, tries: int = 200) -> AppTest:
    """Run (or switch to ``page``) and re-run while a background load is still drawing its progress."""
    (at.switch_page(page) if page else at).run()
    for _ in range(tries):
        if not loading(at):
            break
        time.sleep(0.05)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not loading(at), "a background load never finished"
    return at


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


def test_decoding_page_reports_a_bad_knob_on_the_page(env):
    at = settle(AppTest.from_file(APP, default_timeout=120), "pages/decoding.py")
    at.slider(key="decoding_max_tokens").set_value(256)  # the tiny RM reads 256 tokens: no room left for a prompt
    at.button(key="decoding_run").click()
    at = settle(at)
    assert any("Decoding did not run" in e.value and "max_length" in e.value for e in at.error)


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


def test_keys_that_pages_share_are_spelt_once_in_pages_keys():
    from pages import _keys

    shared = [v for k, v in vars(_keys).items() if k.isupper()]
    for path in (ROOT / "pages").glob("*.py"):
        if path.name != "_keys.py":
            text = path.read_text()
            assert not [key for key in shared if f'"{key}"' in text], path.name


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
    assert any(c.value.startswith("Scored on the data in use (5 pairs;") for c in at.caption)
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
