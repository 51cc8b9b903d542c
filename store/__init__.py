"""The Zarr store of captured traces: schema, writer and reader."""

if __name__ != "loralens.store":  # one name per module: the checkout's folders install as loralens.*
    raise ImportError(f"import loralens.store, not {__name__}: the package installs under one name "
                      "(pip install -e . in the checkout)")
