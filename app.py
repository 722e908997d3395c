"""RobustMDiff web app: `make run` (or `streamlit run app.py`); `make run CHECKPOINT=DIR` (RMD_CHECKPOINT=DIR)
opens a model of your own, RMD_DATA=DIR the data its demo cases come from (core/open_model.py).

Sets up the page and navigates over the files in pages/; all work happens in `core`, and the model is
loaded once for every session (pages/common.py).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import streamlit as st  # noqa: E402

st.set_page_config(page_title="RobustMDiff", page_icon=":material/radiology:", layout="wide")

pages = [
    st.Page("pages/case_explorer.py", title="Case explorer", icon=":material/radiology:", default=True),
    st.Page("pages/robustness_lab.py", title="Robustness lab", icon=":material/monitoring:"),
    st.Page("pages/review.py", title="Explanation review", icon=":material/rate_review:"),
    st.Page("pages/model_card.py", title="Model card", icon=":material/description:"),
]
# Navigation first: until st.navigation runs, Streamlit lists every file of pages/ (common.py included), which a
# deep link opened while the model loads would show.
page = st.navigation(pages)
# The first run of a new server imports torch and loads the model (about 10–20 s): say so instead of a blank page.
with st.spinner("Starting RobustMDiff: loading the model (about 20 s on first start)…"):
    from core.errors import RobustMDiffError
    from pages.common import get_service, model_sidebar

    try:
        get_service()
    except RobustMDiffError as e:  # RMD_CHECKPOINT or RMD_DATA that cannot be opened: say which and why
        st.error(f"**The model cannot be opened.** {e}")
        st.stop()
model_sidebar()
st.sidebar.markdown("**RobustMDiff** · multimodal diagnosis that stays accurate when data is missing, says how "
                    "confident it is in what it synthesized, and shows why.")
st.sidebar.caption("Research software, not a medical device.")
page.run()
