"""Overview: what the tool is, its intended use, and the embedded cohort."""

import streamlit as st

from core.paths import default_cohort_dir

st.title("RobustMDiff")
st.caption("Multimodal diagnosis from a scan, a clinical note and labs that stays accurate when any of them is "
           "missing, says how confident it is in what it had to synthesize, and shows why.")
st.info("Research software, not a medical device: not for diagnosis or treatment decisions.", icon="⚠️")

card = default_cohort_dir() / "DATASET_CARD.md"
if card.exists():
    with st.expander("Embedded cohort: dataset card", expanded=True):
        st.markdown(card.read_text(encoding="utf-8"))
else:
    st.warning("The embedded cohort has not been generated yet: run `make run` or "
               f"`python -m core cohort --out {default_cohort_dir()}`.")
