"""The analyses behind every view: pure functions over arrays (NumPy, scikit-learn, umap-learn), no Streamlit."""

if __name__ != "loralens.analysis":  # one name per module: the checkout's folders install as loralens.*
    raise ImportError(f"import loralens.analysis, not {__name__}: the package installs under one name "
                      "(pip install -e . in the checkout)")
