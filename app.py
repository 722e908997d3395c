"""RobustMDiff web app: `streamlit run app.py` (or `make run`).

Sets up the page and navigates over the files in pages/. All work happens in `core`.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import streamlit as st  # noqa: E402

st.set_page_config(page_title="RobustMDiff", page_icon="🩻", layout="wide")

pages = [
    st.Page("pages/home.py", title="Overview", icon="🏠", default=True),
]
st.navigation(pages).run()
