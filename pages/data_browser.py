"""Browse a preference set: prompt, chosen and rejected side by side."""
import pandas as pd
import streamlit as st

from pages._draw import md_escape, show_error
from pages._routes import through_router
from pages._settings import settings
from reform_engine.data import DataError, load_preferences

through_router()
st.title("Preference data")
path = st.text_input("Data file (.jsonl, .jsonl.gz, .json, .parquet, .csv)", value=settings().data, key="data_path")
try:
    data = load_preferences(path, skip_invalid=True)
except DataError as exc:
    show_error(exc)
    st.stop()
if data.report.skipped:
    st.warning(f"{len(data.report.skipped)} invalid rows skipped; first: row {data.report.skipped[0][0]}: "
               f"{md_escape(data.report.skipped[0][1])}")
frame = pd.DataFrame([{"id": p.pair_id, "prompt": p.prompt[-1]["content"], "turns": len(p.prompt), "chosen": p.chosen,
                       "rejected": p.rejected} for p in data.pairs])
st.dataframe(frame, width="stretch", hide_index=True)
