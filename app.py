"""REFORM workbench: entry point. Routes to the pages and shows what the tool is working on."""
from __future__ import annotations

import streamlit as st

from reform_engine.data import DEMO_PATH, load_preferences
from reform_engine.models import DEFAULT_MODEL, converted_default_dir

st.set_page_config(page_title="REFORM workbench", layout="wide")


@st.cache_data
def dataset_summary(path: str) -> dict:
    data = load_preferences(path)
    pairs = data.pairs
    return {"pairs": len(pairs), "multi_turn": sum(len(p.prompt) > 1 for p in pairs),
            "chosen_longer": sum(len(p.chosen) > len(p.rejected) for p in pairs) / len(pairs)}


def home() -> None:
    st.title("REFORM workbench")
    st.write("Find where your reward model is wrong, curate the evidence, and retrain it. "
             "This build has the engine foundation: data loading, reward-model training and per-token reward traces.")
    summary = dataset_summary(str(DEMO_PATH))
    cols = st.columns(3)
    cols[0].metric("Demo pairs", summary["pairs"])
    cols[1].metric("Multi-turn dialogues", summary["multi_turn"])
    cols[2].metric("Chosen is longer", f"{summary['chosen_longer']:.0%}")
    ready = (converted_default_dir() / "model.safetensors").is_file()
    st.write(f"Default policy and RM backbone: **{DEFAULT_MODEL}** "
             f"({'converted and cached' if ready else 'converted from the packaged GGUF on first use'}).")
    st.code("python -m reform_engine train-rm --run-dir runs/demo-rm", language="bash")


pg = st.navigation([st.Page(home, title="Home", default=True), st.Page("pages/data_browser.py", title="Data")])
pg.run()
