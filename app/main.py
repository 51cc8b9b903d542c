"""The loralens explorer: ``loralens app --store PATH`` (or ``LORALENS_STORE``) starts it."""

from __future__ import annotations

import logging
from pathlib import Path

import streamlit as st

from loralens.app import cache
from loralens.store.reader import StoreError

log = logging.getLogger("loralens.app")
st.set_page_config(page_title="loralens", page_icon="🎧", layout="wide")


def problem_page(message: str) -> None:
    """The one page shown when the store cannot be used: what is wrong and the command that fixes it."""
    st.title("loralens")
    st.error(message)
    st.markdown("Start the explorer on a store:\n\n```bash\nloralens app --store PATH\n```\n\n"
                "No store yet? `loralens demo` builds one offline; or train and trace your own:\n\n"
                "```bash\nloralens train --model bundled:base --data emodb:DIR --out runs/lora\n"
                "loralens trace --run runs/lora --store runs/store.zarr\n```")


path = cache.store_path()
try:
    if path is None:
        raise StoreError("No store configured: start the app with loralens app --store PATH "
                         f"(or set {cache.STORE_ENV}).")
    if not cache.runs(path):
        raise StoreError(f"{path} holds no traced run yet; run loralens trace --run RUN_DIR --store {path}")
except StoreError as e:
    message = str(e)
    st.navigation([st.Page(lambda: problem_page(message), title="loralens", default=True)]).run()
    st.stop()

sections = Path(__file__).parent / "sections"  # not "pages": Streamlit would list that folder itself
overview = st.Page(sections / "overview.py", title="Overview", icon=":material/table_view:", default=True,
                   url_path="runs")  # served at "/": the default page's own name is no address


def overview_by_name() -> None:
    """/overview, the Overview page's name, opens it (Streamlit serves a default page at "/" only)."""
    st.switch_page(overview, query_params=st.query_params.to_dict())


navigation = st.navigation([
    overview,
    st.Page(overview_by_name, title="Overview", url_path="overview", visibility="hidden"),
    st.Page(sections / "utterance.py", title="Utterance", icon=":material/graphic_eq:", url_path="utterance"),
    st.Page(sections / "clusters.py", title="Clusters", icon=":material/scatter_plot:", url_path="clusters"),
    st.Page(sections / "dynamics.py", title="LoRA dynamics", icon=":material/stacked_line_chart:", url_path="dynamics"),
    st.Page(sections / "contributions.py", title="Contributions", icon=":material/stacks:", url_path="contributions"),
    st.Page(sections / "causal.py", title="Causal", icon=":material/science:", url_path="causal"),
    st.Page(sections / "upload.py", title="Upload", icon=":material/upload:", url_path="upload"),
])
try:
    navigation.run()
except StoreError as e:  # damaged data under this view: say so, keep the other pages serving
    st.error(f"This view cannot be drawn: {e}")
    st.caption("The rest of the store is intact: other pages and utterances still work.")
except Exception as e:  # a bug (Streamlit's own stop and rerun are no Exception): one line here, the traceback logged
    log.exception("the %s page failed", navigation.title)
    st.error(f"This page failed ({type(e).__name__}: {e}). The other pages still work; the details are in the "
             "server's log (the terminal running loralens app): please report them.")
