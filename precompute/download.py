"""``loralens data get emodb``: download the official EmoDB archive, check it, unpack it, list it."""

from __future__ import annotations

import hashlib
import logging
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

from loralens.precompute.data import load_corpus
from loralens.store.schema import UserError

log = logging.getLogger(__name__)

EMODB_URL = "http://emodb.bilderbar.info/download/download.zip"


class DownloadError(UserError):
    """The corpus could not be fetched."""


def get_emodb(out: Path, url: str = EMODB_URL) -> Path:
    """Download, verify and unpack EmoDB into ``out``; write ``out/SHA256`` and ``out/manifest.csv``."""
    out.mkdir(parents=True, exist_ok=True)
    archive = out / "download.zip"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            total = int(response.headers.get("Content-Length") or 0)
            digest = hashlib.sha256()
            with open(archive.with_suffix(".part"), "wb") as f, tqdm(total=total or None, unit="B",
                                                                      unit_scale=True, desc="EmoDB") as bar:
                while chunk := response.read(1 << 16):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise DownloadError(f"could not download EmoDB from {url} ({e}); offline, point --data at a local "
                            "copy instead: --data emodb:/path/to/emodb (the folder holding wav/)") from e
    archive.with_suffix(".part").replace(archive)
    try:
        with zipfile.ZipFile(archive) as z:
            if not any(n.startswith("wav/") for n in z.namelist()):
                raise DownloadError(f"{archive}: the archive holds no wav/ folder; is {url} still EmoDB?")
            z.extractall(out)
    except zipfile.BadZipFile as e:
        raise DownloadError(f"{archive}: not a zip archive ({e}); delete it and try again") from e
    (out / "SHA256").write_text(f"{digest.hexdigest()}  download.zip\n")
    corpus = load_corpus(f"emodb:{out}", None)
    rows = ["path,emotion,speaker"] + [f"{u.path.relative_to(out)},{u.emotion},{u.speaker}" for u in corpus.utterances]
    (out / "manifest.csv").write_text("\n".join(rows) + "\n")
    log.info("EmoDB: %d files, sha256 %s", len(corpus.utterances), digest.hexdigest())
    return out
