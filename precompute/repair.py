"""``loralens validate --repair``: rows of the utterance table written again from their source audio."""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import WhisperConfig, WhisperFeatureExtractor

from loralens.precompute import windowing
from loralens.precompute.audio import AudioError, load_audio
from loralens.precompute.checkpoints import load_fold_model
from loralens.precompute.config import RunError, completed_folds
from loralens.precompute.data import DataSpecError, Utterance, load_corpus
from loralens.precompute.models import feature_extractor
from loralens.precompute.trace import log_mel_input, store_id
from loralens.store.damage import read_blocks
from loralens.store.writer import StoreWriter, UtteranceRow

log = logging.getLogger(__name__)

_TEXT = ("id", "dataset", "source", "speaker", "emotion")


def restore_utterances(store: str, rows: list[int], recreate: tuple[str, ...] = (),
                       storage_options: dict | None = None) -> tuple[int, list[str]]:
    """Write rows of the utterance table again from their source audio files (their chunks did not decode).

    Audio, log-mel, duration and frames are read again from the source file, as ``prepare`` did; the text
    columns come from the table where they are readable, else from the data sets of the store's runs (by id or
    by source). A row whose source is missing or has changed since it was traced is left as it is, and named.

    Args:
        store: the store's path or URL.
        rows: the table rows to write again (``Report.table_rows``).
        recreate: columns whose zarr.json was unreadable, removed and created anew once every row is read.
        storage_options: fsspec options of ``store``.

    Returns:
        How many rows were written, and one line per row that could not be, saying why and what to do.
    """
    writer = StoreWriter(store, storage_options)
    table = {name: _salvage(writer, name) for name in (*_TEXT, "n_samples") if name not in recreate}
    corpus: dict[str, Utterance] | None = None
    extractor = None
    restored: dict[int, UtteranceRow] = {}
    left = []
    for row in rows:
        text = {name: (table.get(name) or {}).get(row) for name in _TEXT}
        if any(not value for value in text.values()):
            corpus = _corpora(writer) if corpus is None else corpus
            u = corpus.get(text["id"] or "") or corpus.get(text["source"] or "")
            if u is None:
                left.append(f"utterances row {row}: its id and source cannot be read, and no data set of the "
                            "store's runs lists it; trace the runs into a new store")
                continue
            found = {"id": store_id(u), "dataset": u.dataset, "source": str(u.path), "speaker": u.speaker,
                     "emotion": u.emotion}
            text = {name: value or found[name] for name, value in text.items()}
        try:
            audio = load_audio(text["source"])
        except (AudioError, OSError) as e:
            left.append(f"utterances row {row} ({text['id']}): its source audio cannot be read ({e}); put the file "
                        f"back at {text['source']} and run loralens validate --repair {store} again")
            continue
        stored = (table.get("n_samples") or {}).get(row)
        if stored is not None and stored != len(audio):
            left.append(f"utterances row {row} ({text['id']}): {text['source']} has changed since it was traced "
                        f"({len(audio)} samples, the store holds {stored}); trace the runs into a new store")
            continue
        extractor = _extractor(writer, recreate) if extractor is None else extractor
        restored[row] = UtteranceRow(text["id"], text["dataset"], text["source"], text["speaker"], text["emotion"],
                                     audio, windowing.encoder_frames(len(audio)), log_mel_input(extractor, audio))
    if recreate and len(restored) < len(rows):
        left.append(f"utterances/{', '.join(recreate)} left as it is: rebuilding a column needs every row")
        restored = {}
    if restored:
        writer.rewrite_utterances(restored, recreate)
    return len(restored), left


def _salvage(writer: StoreWriter, name: str) -> dict[int, object]:
    """A table column's readable values by row (rows in chunks that do not decode are left out)."""
    array = writer._node(f"utterances/{name}")
    if array is None:
        return {}
    values, _ = read_blocks(array)
    return {row: value for row, value in enumerate(values) if value is not None}


def _corpora(writer: StoreWriter) -> dict[str, Utterance]:
    """The utterances of every data set the store's runs were traced from, by store id and by source path."""
    out: dict[str, Utterance] = {}
    specs = set()
    for run, checkpoints in writer.runs().items():
        for checkpoint in checkpoints:
            attrs = writer.attrs(run, checkpoint)
            specs.add((attrs.get("data"), attrs.get("train_config", {}).get("merge_excitement", True)))
    for spec, merge in sorted(specs, key=str):
        try:
            corpus = load_corpus(spec, None, merge_excitement=merge)
        except (DataSpecError, OSError) as e:
            log.warning("cannot list %s to restore table rows: %s", spec, e)
            continue
        for u in corpus.utterances:
            out[store_id(u)] = out[str(u.path)] = u
    return out


def _extractor(writer: StoreWriter, recreate: tuple[str, ...]) -> WhisperFeatureExtractor:
    """The log-mel extractor the table was written with: its mel bins from the table, else from a run's model."""
    log_mel = writer._node("utterances/log_mel") if "log_mel" not in recreate else None
    if log_mel is not None:
        return feature_extractor(WhisperConfig(num_mel_bins=log_mel.shape[1]))
    for run, checkpoints in writer.runs().items():
        run_dir = Path(writer.attrs(run, checkpoints[0]).get("run_dir", "")) if checkpoints else None
        if run_dir is not None and run_dir.is_dir() and (folds := completed_folds(run_dir)):
            model = load_fold_model(run_dir, folds[0], "trained")
            return feature_extractor(windowing.whisper_of(model).config)
    raise RunError("no run directory of the store's runs is at hand to tell the number of mel bins; rebuild the "
                   "utterance table with loralens trace into a new store")
