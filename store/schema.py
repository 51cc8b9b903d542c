"""The store's schema: every group, array, dimension order, dtype, chunking and attribute key.

Layout (Zarr v3)::

    /                                   attrs: format, schema_version, versions, created
    /utterances/<column>                the shared utterance table, one row per utterance
    /runs/<run>/<checkpoint>/<array>    traces of one checkpoint (``trained``, ``random_twin``) of one run
                                        attrs: see CHECKPOINT_ATTRS

A checkpoint's arrays are of two kinds (see ``slotted``). The per-frame arrays kept for a sample of the rows
(``ArraySpec.sampled``) and the ``written`` marks have ``utterance`` as their first dimension, one utterance per
chunk (the sampled ones also one layer per chunk). Every other array is slot-major: its first dimension is ``slot``,
``SLOT_ROWS`` slots per chunk, every layer of a row in that chunk; a write of up to ``SLOT_ROWS`` rows stores one
chunk per array instead of one per row and layer (see ``slots_of``). A checkpoint's ``written`` array is each row's
commit mark, its slot + 1 (0: not written): set last, after every other array of that row; readers see only rows
whose mark is set and find their values through it. Writers of disjoint rows never share a chunk: a write's slots
are keyed by its own rows. Version 4 and 5 stores hold every array per utterance (``utterance`` first, marks 1).
The utterance table's scalar columns are chunked in blocks of rows (see ``table_chunks``).
The utterance table's ``id`` column is its rows' commit mark in the same way: written after every other
column, audio and log-mel; readers stop at the first empty id (rows a killed ``loralens trace`` cut off).
A checkpoint group's attributes are written after its arrays; a group without them was cut off while
being created and holds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SAMPLE_RATE = 16_000
"""Whisper's input rate, and so the rate of every clip the store holds and every analysis and model reads."""

FORMAT = "loralens-store"
SCHEMA_VERSION = 7
"""Bumped on any change a reader of the previous version would misread (2: the block update per frame; 3: LoRA
gradients in float32, whose values after training lie below float16's normal range; 4: the sampled per-frame
arrays may hold only some rows, see ``sampled``, and runs carry a ``summary`` group; 5 and 7: ``RETIRED`` arrays
are no longer written; 6: slot-major arrays, see ``slotted``)."""
RETIRED: dict[int, tuple[str, ...]] = {4: ("layer_input_pooled", "attention_pooled", "mlp_pooled", "residual"),
                                       5: ("residual",), 6: ("residual",)}
"""Arrays an older schema version wrote that this one does not, which no figure read. Version 4's pooled layer
inputs, attention and MLP outputs (about 5 GB a checkpoint at whisper-large-v2 x IEMOCAP); versions 4 to 6's
per-frame residual of the sampled rows (``residual_pooled`` serves every figure; at large-v2 it was 22 MB of a
sampled row's 74, and the whole of a frozen run's sampled arrays). Readers skip them."""
READS = (4, 5, 6, SCHEMA_VERSION)
"""The schema versions this loralens reads; it writes only ``SCHEMA_VERSION``."""
UPGRADES = (6,)
"""Versions whose stores become this one by dropping their ``RETIRED`` arrays (``loralens validate --upgrade``);
4 and 5 lay arrays out otherwise (one utterance per chunk)."""

Checkpoint = Literal["trained", "random_twin"]
CHECKPOINTS: tuple[Checkpoint, ...] = ("trained", "random_twin")

# Root attribute keys.
ROOT_ATTRS = ("format", "schema_version", "versions", "created")
# Checkpoint group attribute keys (all written by the writer when the checkpoint is created).
CHECKPOINT_ATTRS = (
    "run",             # the run's name in this store
    "checkpoint",      # trained | random_twin
    "method",          # lora | frozen
    "model",           # the --model SPEC
    "data",            # the --data SPEC
    "window",          # trim | full
    "emotions",        # class names in label order
    "rank", "alpha", "targets",
    "modules",         # LoRA module names in order of the ``module`` dimension, e.g. "layer_0.v_proj"
    "n_layers", "d_model",
    "train_config",    # the run's config.json
    "metrics",         # the run's metrics.json
    "capture",         # what was captured (CaptureOptions as a dict)
    "complete",        # set by commit once every row of the run is written
)
# Checkpoint group attribute keys that ``loralens trace`` adds once the run's rows are committed (absent before).
TRACE_ATTRS = (
    "fingerprint",           # the training it traced: digests of its config and of each fold's weights and metrics
                             # (``precompute.checkpoints.run_fingerprint``), checked by every later trace and intervene
    "prediction_agreement",  # trained: how many stored predictions equal the run's predictions.csv, and the
                             # precision of the trace and of training (see ``precompute.trace.Tracer.agreement``)
    "intruders",             # this checkpoint's intruder dimensions from the run's weights alone (top-k singular
                             # values and similarities per fold and module, ``analysis.intruders.Intruders.to_json``);
                             # also written into older stores by ``loralens intruders RUN --store``
)


@dataclass(frozen=True)
class ArraySpec:
    """One array of the schema."""

    dims: tuple[str, ...]
    """Dimension names, in order; the first is always ``utterance``."""
    dtype: str
    """NumPy dtype (``str`` for text)."""
    description: str
    """What it holds."""
    lora_only: bool = False
    """Present only in checkpoints of LoRA runs."""
    optional: bool = False
    """May be left out by the capture options (``per_frame_b``)."""
    sampled: bool = False
    """Per-frame and wide: kept only for the rows whose ``sampled`` mark is set (``--per-frame-sample``)."""

    @property
    def per_frame(self) -> bool:
        """Whether it has a ``frame`` dimension (padded; ``utterances/n_frames`` says how much is real)."""
        return "frame" in self.dims


UTTERANCE_ARRAYS: dict[str, ArraySpec] = {
    "id": ArraySpec(("utterance",), "str", "data set and utterance id, unique in the store"),
    "dataset": ArraySpec(("utterance",), "str", "the data set's scheme (emodb, synthetic, ...)"),
    "source": ArraySpec(("utterance",), "str", "the audio file it was read from"),
    "speaker": ArraySpec(("utterance",), "str", "speaker id"),
    "emotion": ArraySpec(("utterance",), "str", "the true emotion"),
    "duration": ArraySpec(("utterance",), "float32", "seconds of audio"),
    "n_samples": ArraySpec(("utterance",), "int32", "real samples in ``audio``"),
    "n_frames": ArraySpec(("utterance",), "int32", "real encoder frames (50 per second)"),
    "audio": ArraySpec(("utterance", "sample"), "int16", "16 kHz mono PCM, zero-padded"),
    "log_mel": ArraySpec(("utterance", "mel", "mel_frame"), "float16",
                         "the model's log-mel input over the real frames (2 per encoder frame), zero-padded"),
}

CHECKPOINT_ARRAYS: dict[str, ArraySpec] = {
    "written": ArraySpec(("utterance",), "int32",
                         "the row's slot + 1 once every array of the row is written (the commit mark); 0 before"),
    "sampled": ArraySpec(("utterance",), "uint8",
                         "1 where the sampled per-frame arrays (``ArraySpec.sampled``) hold the row"),
    "fold": ArraySpec(("utterance",), "int16", "the fold whose model traced it (the one that held it out)"),
    "label": ArraySpec(("utterance",), "int16", "true class index"),
    "prediction": ArraySpec(("utterance",), "int16", "predicted class index"),
    "logits": ArraySpec(("utterance", "class"), "float32", "the model's final logits"),
    "residual_pooled": ArraySpec(("utterance", "boundary", "d_model"), "float32",
                                 "the residual stream after the input embeddings (boundary 0) and after each layer, "
                                 "mean-pooled over the frames the head pools"),
    "lens_logits": ArraySpec(("utterance", "boundary", "class"), "float32",
                             "logit lens: final layer norm, projector, pooling and classifier on each boundary"),
    "lens_logits_frames": ArraySpec(("utterance", "boundary", "frame", "class"), "float16",
                                    "logit lens per frame (the head without pooling)"),
    "attention_norm_ratio": ArraySpec(("utterance", "layer", "frame"), "float16",
                                      "||attention output|| / ||layer input|| per frame"),
    "attention_cosine": ArraySpec(("utterance", "layer", "frame"), "float16",
                                  "cosine of the attention output with the layer input per frame"),
    "mlp_norm_ratio": ArraySpec(("utterance", "layer", "frame"), "float16",
                                "||MLP output|| / ||layer input|| per frame"),
    "mlp_cosine": ArraySpec(("utterance", "layer", "frame"), "float16",
                            "cosine of the MLP output with the layer input per frame"),
    "block_norm_ratio": ArraySpec(("utterance", "layer", "frame"), "float16",
                                  "||attention + MLP output|| / ||layer input|| per frame (the layer's whole update)"),
    "block_cosine": ArraySpec(("utterance", "layer", "frame"), "float16",
                              "cosine of attention + MLP output with the layer input per frame"),
    "lora_a_activation": ArraySpec(("utterance", "module", "frame", "rank"), "float16",
                                   "LoRA A output (before B) per frame", lora_only=True, sampled=True),
    "lora_a_gradient": ArraySpec(("utterance", "module", "frame", "rank"), "float32",
                                 "d cross-entropy(true label) / d LoRA A output", lora_only=True,
                                 sampled=True),
    "lora_a_pooled": ArraySpec(("utterance", "module", "rank"), "float32",
                               "LoRA A output mean-pooled over real frames", lora_only=True),
    "lora_b_activation": ArraySpec(("utterance", "module", "frame", "d_out"), "float16",
                                   "LoRA B output per frame (the update before the alpha / r scaling)",
                                   lora_only=True, optional=True, sampled=True),
    "lora_b_gradient": ArraySpec(("utterance", "module", "frame", "d_out"), "float32",
                                 "d cross-entropy(true label) / d LoRA B output", lora_only=True, optional=True,
                                 sampled=True),
    "lora_b_pooled": ArraySpec(("utterance", "module", "d_out"), "float32",
                               "LoRA B output mean-pooled over real frames", lora_only=True),
}


CONSOLIDATED_GROUP = "by_layer"
"""Where commit writes layer-major copies of every array but the sampled ones, for reading one layer across all
utterances (one chunk per layer instead of one per utterance; the analyses read this way). The per-utterance
originals serve the other pattern, one utterance across all layers, and hold the sampled per-frame arrays alone
(a layer-major chunk of those would grow with the store: 20 GB for one large-v2 module's B over IEMOCAP). Copies are
valid while the checkpoint's ``consolidated`` attribute equals its ``n_written``; growing the table invalidates
them."""

SUMMARY_GROUP = "summary"
"""``/runs/<run>/summary``: what the explorer's pages draw first, computed from the run's committed rows (see
``analysis.summary``): spectra, CKA, contributions, lens statistics and 2-D maps. Its attributes (``SUMMARY_ATTRS``)
are written after its arrays; ``basis`` says which committed state it was computed from, and a summary whose
basis differs from its checkpoints' ``n_written`` is stale (readers ignore it; ``loralens summarise`` renews it)."""
SUMMARY_VERSION = 2
"""Bumped on any change to what a summary holds; a summary of another version is recomputed (readers ignore it).

2: ``residual_cka`` within each fold model, averaged (1 stacked every fold model's utterances)."""
SUMMARY_ATTRS = (
    "summary_version",  # SUMMARY_VERSION
    "basis",            # checkpoint -> n_written when computed; partner run -> its trained n_written
    "rows",             # the number of utterances it covers
    "seconds",          # what each part took to compute
)


INTERVENTIONS_GROUP = "interventions"
"""``/runs/<run>/interventions``: the causal lens (``loralens intervene``, see ``precompute.intervene``): the run's
traced utterances under each condition. Arrays ``probabilities`` ``(condition, utterance, class)`` and
``lens_logits`` ``(condition, utterance, boundary, class)``, one chunk per condition (one process writes a condition
whole), and ``done`` ``(condition,)``, a condition's mark, set after its arrays. Attributes
(``intervention_version``, ``conditions``, ``rows``, ``basis``, ``partner``): the conditions' names in the arrays'
order (``none`` first: the model as trained; a rerun asking for more appends them), the store rows of the utterance
axis, the trained checkpoint's ``n_written`` they were computed from (another means the trace grew: the group is
computed again), and the run whose residuals the ``patch@`` conditions patch in (``partner``, its name in the store,
None: no patching; ``partner_key``, a fingerprint telling it from another run of that name)."""
PATCH_PREFIX = "patch@"
"""Conditions that read the partner run (``partner``): marked undone when it changes."""
INTERVENTION_VERSION = 1
"""Bumped on any change to the interventions group that a reader or writer of the previous version could not read
(adding attributes that default to None is not one); a group of another version is computed again."""


def consolidated_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """All utterances in a chunk, one layer (boundary, module) per chunk."""
    whole = [max(1, n) for n in shape]
    return tuple(whole) if len(shape) <= 2 else (whole[0], 1, *whole[2:])


def consolidates(spec: ArraySpec) -> bool:
    """Whether commit writes a layer-major copy of an array (all but the sampled per-frame ones)."""
    return not spec.sampled


def checkpoint_arrays(lora: bool, per_frame_b: bool) -> dict[str, ArraySpec]:
    """The arrays a checkpoint holds: without LoRA arrays for frozen runs, without per-frame B if skipped."""
    return {name: spec for name, spec in CHECKPOINT_ARRAYS.items()
            if (lora or not spec.lora_only) and (per_frame_b or not spec.optional)}


TABLE_ROWS_PER_CHUNK = 4096
"""Rows per chunk of the utterance table's scalar columns."""


def table_chunks(spec: ArraySpec, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The utterance table: scalar columns in blocks of rows, audio and log-mel one utterance per chunk.

    Every page reads the whole table, so it is stored in few chunks, not one per row.
    Only ``StoreWriter.add_utterances`` writes the table (``loralens trace`` prepares rows before capturing).
    """
    if len(shape) == 1:
        return (TABLE_ROWS_PER_CHUNK,)
    return chunks(spec, shape)


SLOT_ROWS = 8
"""Slots per chunk of a slot-major array (``slotted``): the rows one write stores in one chunk."""


def slotted(name: str) -> bool:
    """Whether a checkpoint array is slot-major (first dimension ``slot``): all but ``written`` and the sampled ones.

    The sampled per-frame arrays stay one utterance and layer per chunk: a row of them is megabytes, and the
    analyses read them one layer across every sampled row, which a slot chunk would make them read whole.
    """
    return name != "written" and not CHECKPOINT_ARRAYS[name].sampled


def stored_dims(name: str) -> tuple[str, ...]:
    """A checkpoint array's dimension names as stored: ``slot`` first where it is slot-major."""
    dims = CHECKPOINT_ARRAYS[name].dims
    return ("slot", *dims[1:]) if slotted(name) else dims


def checkpoint_chunks(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A checkpoint array's chunks: ``SLOT_ROWS`` slots with every layer where slot-major, else see ``chunks``."""
    if slotted(name):
        return (SLOT_ROWS, *[max(1, n) for n in shape[1:]])
    return chunks(CHECKPOINT_ARRAYS[name], shape)


def compressors(spec: ArraySpec) -> tuple | None:
    """A checkpoint array's compression, chosen by measurement (see docs/benchmarks.md, "Store writes").

    The per-frame arrays of every row: Blosc's LZ4 over shuffled bytes. They are zero-padded to the store's longest
    utterance, which it passes at several times Zstandard's speed for about the same size. The rest: none. Their
    chunks are small (integers, logits) or noise-like floats (pooled), where a compressor saved little disk and its
    own pass cost each chunk a quarter of a millisecond; the sampled per-frame ones end near a row's last frame
    (``FRAME_CHUNK``), and compressing them took most of their write time for about a third less disk.
    """
    from zarr.codecs import BloscCodec

    if spec.per_frame and not spec.sampled:
        return (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),)
    return None


def slots_of(rows: list[int]) -> list[int]:
    """The slots a write of ``rows`` (distinct table rows) stores them in, in the given order.

    The rows, sorted, go ``SLOT_ROWS`` at a time into the chunk of slots keyed by the first of them: chunk ``r``
    holds slots ``r * SLOT_ROWS`` to ``(r + 1) * SLOT_ROWS - 1``. Writes of disjoint rows so never share a chunk,
    with no coordination between writers. A slot-major array has ``SLOT_ROWS`` slots per table row, most of them
    never stored (Zarr stores only the chunks written).
    """
    order = sorted(range(len(rows)), key=lambda i: rows[i])
    out = [0] * len(rows)
    for start in range(0, len(order), SLOT_ROWS):
        key = rows[order[start]]
        for k, i in enumerate(order[start: start + SLOT_ROWS]):
            out[i] = key * SLOT_ROWS + k
    return out


FRAME_CHUNK = 256
"""Frames per chunk of the sampled per-frame arrays (about 5 s of audio): a row stores only the chunks its frames
reach, not its padding to the store's longest utterance."""


def chunks(spec: ArraySpec, shape: tuple[int, ...]) -> tuple[int, ...]:
    """One utterance per chunk; per-frame arrays also one layer (boundary, module) per chunk.

    So an analysis of one layer reads only that layer's frames. The sampled per-frame arrays are also cut every
    ``FRAME_CHUNK`` frames.
    """
    rest = [max(1, n) for n in shape[1:]]
    if spec.per_frame and len(shape) == 4:
        rest[0] = 1
    if spec.sampled:
        rest[1] = min(rest[1], FRAME_CHUNK)
    return (1, *rest)


class UserError(ValueError):
    """A problem the user can fix (a flag, a file, the data, the store), saying what was wrong and what to do.

    The command line prints it as one line; any other exception is a bug and keeps its traceback.
    """


class StoreError(UserError):
    """A store that is missing, not a loralens store, of another schema version, or lacking something."""


def no_store(path: str) -> StoreError:
    """The error for a path that holds no store."""
    return StoreError(f"{path}: no store there; create one with loralens trace --store {path}")


def check_root(path: str, attrs: dict, write: bool = False) -> None:
    """Raise StoreError unless ``attrs`` (a root group's attributes) are a loralens store's of a version it reads.

    ``READS`` to read; with ``write``, the one version it writes.
    """
    if attrs.get("format") != FORMAT:
        raise StoreError(f"{path}: a Zarr group, but not a loralens store (its attributes have no "
                         f"format={FORMAT!r}); point at a store written by loralens trace")
    version = attrs.get("schema_version")
    if version in READS and (version == SCHEMA_VERSION or not write):
        return
    newer = isinstance(version, int) and version > SCHEMA_VERSION
    if newer:
        raise StoreError(f"{path}: store schema version {version}, this loralens reads versions up to "
                         f"{SCHEMA_VERSION}; upgrade loralens (pip install -U loralens)")
    if version in UPGRADES:
        raise StoreError(f"{path}: store schema version {version}, which this loralens reads but writes no more "
                         f"(it writes version {SCHEMA_VERSION}); upgrade it in place with loralens validate {path} "
                         f"--upgrade (it drops {', '.join(RETIRED[version])}, which no figure reads), or trace into "
                         "a new store (loralens trace ... --store NEW_PATH)")
    if version in READS:
        raise StoreError(f"{path}: store schema version {version}, which this loralens reads but writes no more "
                         f"(it writes version {SCHEMA_VERSION}); trace into a new store (loralens trace ... --store "
                         "NEW_PATH), or keep adding to this one with the loralens that made it")
    raise StoreError(f"{path}: store schema version {version}, this loralens reads versions "
                     f"{', '.join(map(str, READS))}; re-trace it with this version (loralens trace ... --store "
                     "NEW_PATH)")
