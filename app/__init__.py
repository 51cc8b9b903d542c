"""The Streamlit explorer over a loralens store."""

if __name__ != "loralens.app":  # one name per module: the checkout's folders install as loralens.*
    raise ImportError(f"import loralens.app, not {__name__}: the package installs under one name "
                      "(pip install -e . in the checkout)")
