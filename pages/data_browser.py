"""Browse a preference set: filter its pairs, read one in full, and make it the data in use."""
import dataclasses

import pandas as pd
import streamlit as st

from pages._controls import column_mapping
from pages._draw import md_code, md_escape, show_error
from pages._loading import load_data, validate_data
from pages._routes import through_router
from pages._settings import file_stamp, settings, update_settings
from reform_engine.data import DataError, PreferencePair, column_map_of

FLASH_KEY = "data_flash"


@st.cache_resource(show_spinner="Reading the data", max_entries=4)
def _browse(path: str, stamp: int, column_map: tuple):
    """The file as the app loads it; read again when the file is replaced (``stamp``). Never mutated."""
    return load_data(path, dict(column_map))


def _response_chars(pair: PreferencePair) -> int:
    return max(len(pair.chosen), len(pair.rejected))


def _keep(pair: PreferencePair, needle: str, low: int, high: int) -> bool:
    text = f"{pair.prompt_text}\n{pair.chosen}\n{pair.rejected}".lower()
    return needle.lower() in text and low <= _response_chars(pair) <= high


through_router()
st.title("Preference data")
s = settings()
message = st.session_state.pop(FLASH_KEY, None)
if message:
    st.success(message)
path = st.text_input("Data file (.jsonl, .jsonl.gz, .json, .parquet, .csv) or hub dataset id", value=s.data,
                     key="data_path").strip()
columns = column_mapping("data")
if not path:
    st.info("Enter a path to a data file above (or a hub dataset id) to browse it.")
    st.stop()
try:
    column_map = column_map_of(**columns)
    data = _browse(path, file_stamp(path), tuple(sorted(column_map.items())))
except DataError as exc:
    show_error(exc)
    st.stop()
if data.report.skipped:
    st.warning(f"{len(data.report.skipped)} invalid rows skipped; first: row {data.report.skipped[0][0]}: "
               f"{md_escape(data.report.skipped[0][1])}")

c_use, c_rows = st.columns([1, 3], vertical_alignment="bottom")
rows = c_rows.text_input("Rows to work on (optional, 0-based 'start:end')", key="data_rows",
                         help="the whole file (or these rows) becomes the data in use; the filters below only browse")
if c_use.button("Use this data", type="primary", key="data_use", help="make this file the data of every page"):
    try:
        dataclasses.replace(s, rows=rows.strip())  # refuses bad rows before anything changes
        with st.spinner("Checking the data"):
            source = validate_data(path, rows.strip(), column_map, s.project_dir)
        update_settings(data=source, rows=rows.strip())
        st.session_state[FLASH_KEY] = f"Now in use on every page: {md_code(source)}" + (f" rows {md_code(rows.strip())}"
                                                                                         if rows.strip() else "")
        st.rerun()
    except (DataError, ValueError) as exc:  # the data in use stays as it was
        show_error(exc, "Not switched")

st.subheader("Filter")
c_text, c_len = st.columns([2, 1])
needle = c_text.text_input("Contains (in the prompt, chosen or rejected; any case)", key="data_contains")
longest = max(_response_chars(p) for p in data.pairs)
low, high = c_len.slider("Response length in characters (the longer of the two)", 0, longest, (0, longest),
                         key=f"data_length_{longest}")  # a new file's range starts afresh
shown = [p for p in data.pairs if _keep(p, needle, low, high)]
st.caption(f"{len(shown)} of {len(data.pairs)} pairs")
frame = pd.DataFrame([{"id": p.pair_id, "prompt": p.prompt[-1]["content"], "turns": len(p.prompt), "chosen": p.chosen,
                       "rejected": p.rejected} for p in shown], columns=["id", "prompt", "turns", "chosen", "rejected"])
st.dataframe(frame, width="stretch", hide_index=True)

st.subheader("One pair in full")
if not shown:
    st.info("No pair matches the filters.")
    st.stop()
by_id = {p.pair_id: p for p in shown}
pick = st.selectbox("Pair", list(by_id), key="data_pair")
pair = by_id[pick]
# st.code draws the text as it is: a response holding markdown or a link shows its characters, nothing renders
st.caption("Prompt")
st.code(pair.prompt_text.strip(), language=None, wrap_lines=True)
c_chosen, c_rejected = st.columns(2)
with c_chosen:
    st.caption(f"Chosen · {len(pair.chosen)} characters")
    st.code(pair.chosen, language=None, wrap_lines=True)
with c_rejected:
    st.caption(f"Rejected · {len(pair.rejected)} characters")
    st.code(pair.rejected, language=None, wrap_lines=True)
