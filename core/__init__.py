"""RobustMDiff: multimodal diagnosis that stays accurate and honest when data is missing.

`core` is a plain Python library (it never imports Streamlit). The app in `app.py`/`pages/` and the
command line `python -m core` are thin layers over it.
"""

__version__ = "0.1.0"
