"""``loralens app``: the Streamlit explorer on a store."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from pathlib import Path
from typing import NoReturn

from loralens.cli import options
from loralens.store.schema import UserError

log = logging.getLogger("loralens")


def add(sub: argparse._SubParsersAction) -> None:
    """Add ``loralens app``'s parser to ``sub``."""
    p = sub.add_parser("app", help="open the explorer on a store")
    p.add_argument("--store", default=None, help="a directory or fsspec URL (default: $LORALENS_STORE)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default localhost only)")
    p.add_argument("--port", type=int, default=8501)
    options.add_storage(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``loralens app``; returns its exit status."""
    import os

    store = args.store or os.environ.get("LORALENS_STORE")
    if not store:
        raise UserError("no store given: loralens app --store PATH (or set LORALENS_STORE)")
    return serve(store, args.host, args.port, options.storage(args))


def serve(store: str, host: str, port: int, storage_options: dict | None = None) -> NoReturn:
    """Run the Streamlit explorer on ``store`` until interrupted (``storage_options``: fsspec's, for a URL)."""
    import os

    import loralens.app as app_package
    from loralens.store.probe import probe
    from loralens.store.storage import STORAGE_OPTIONS_ENV

    if not probe(store):  # a bad store fails here, in one line, before a server starts
        from loralens.store.reader import StoreReader

        StoreReader(store, storage_options)
    if storage_options:
        os.environ[STORAGE_OPTIONS_ENV] = json.dumps(storage_options)
    main_script = Path(app_package.__file__).parent / "main.py"
    root = main_script.parents[1]
    log.info("serving %s at http://%s:%d (Ctrl+C stops it)", store, host, port)
    os.environ["LORALENS_STORE"] = store
    if (root / ".streamlit" / "config.toml").is_file():  # the theme and upload limit
        os.chdir(root)
    # scikit-learn (the Causal page's UAR; 0.8 s of imports) before the server listens: imported by the warm-up
    # thread below it held a freshly opened page back by as long (the thread holds the interpreter while importing),
    # and imported by the page itself it made the Causal page's first draw 4 s.
    import sklearn.metrics  # noqa: F401
    # The app's own imports (pandas, Altair, Zarr: over half a second of CPU here) run while the browser loads the
    # page, not after the first visitor connects.
    threading.Thread(target=_warm_imports, args=(host, port), name="loralens-warm-imports", daemon=True).start()
    # Streamlit runs in this process (no child): a signal to it (Ctrl+C, kill, a supervisor's SIGTERM) reaches
    # Streamlit itself and never leaves an orphaned server holding the port.
    from streamlit.web import cli as streamlit_cli

    sys.argv = ["streamlit", "run", str(main_script), "--server.address", host, "--server.port", str(port),
                "--server.headless", "true", "--runner.magicEnabled", "false", "--server.fileWatcherType", "none",
                "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer"]
    streamlit_cli.main()
    sys.exit(0)


def _warm_imports(host: str, port: int) -> None:
    """Import the app's modules once the server listens (not before: they would slow its start)."""
    import importlib
    import socket
    import time

    for _ in range(600):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1" if host in ("0.0.0.0", "") else host, port)) == 0:
                break
        time.sleep(0.05)
    # First what the first page needs, then what the Utterance page adds.
    for name in ("loralens.app.cache", "loralens.app.charts", "loralens.app.widgets", "loralens.app.state",
                 "scipy.special", "PIL.Image"):
        importlib.import_module(name)
