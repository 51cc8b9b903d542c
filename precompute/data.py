"""Resolve a ``--data SPEC`` into labelled utterances: the one place that knows corpus layouts.

Schemes: ``emodb:DIR``, ``ravdess:DIR``, ``cremad:DIR``, ``iemocap:DIR``, ``csv:FILE`` and ``synthetic:DIR``.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from loralens.store.schema import UserError

log = logging.getLogger(__name__)

DEFAULT_EMOTIONS = ("anger", "happiness", "neutral", "sadness")
"""The four-class set of the IEMOCAP protocol and of the paper."""

#: Spellings found in corpora and CSVs, mapped to the one name used everywhere.
EMOTION_ALIASES = {
    "ang": "anger", "angry": "anger", "anger": "anger",
    "hap": "happiness", "happy": "happiness", "happiness": "happiness", "joy": "happiness",
    "exc": "excitement", "excited": "excitement", "excitement": "excitement",
    "neu": "neutral", "neutral": "neutral",
    "sad": "sadness", "sadness": "sadness",
    "fea": "fear", "fear": "fear", "fearful": "fear",
    "dis": "disgust", "disgust": "disgust",
    "sur": "surprise", "surprised": "surprise", "surprise": "surprise",
    "fru": "frustration", "frustration": "frustration",
    "bor": "boredom", "boredom": "boredom", "calm": "calm", "oth": "other", "xxx": "undecided",
}
EMODB_CODES = {"W": "anger", "L": "boredom", "E": "disgust", "A": "fear", "F": "happiness", "T": "sadness",
               "N": "neutral"}
RAVDESS_CODES = {"01": "neutral", "02": "calm", "03": "happiness", "04": "sadness", "05": "anger", "06": "fear",
                 "07": "disgust", "08": "surprise"}
SCHEMES = ("emodb", "ravdess", "cremad", "iemocap", "csv", "synthetic")
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3"}


class DataSpecError(UserError):
    """A ``--data SPEC`` that cannot be resolved, or a data set that yields nothing usable."""


class Skip(NamedTuple):
    """A file a loader leaves out: why (one reason shared by all such files) and which."""

    reason: str
    name: str


@dataclass(frozen=True)
class Utterance:
    """One labelled audio file."""

    id: str
    """Stable, unique within the data set: the file's path relative to the data set root, without suffix."""
    path: Path
    """The audio file."""
    emotion: str
    """The canonical emotion name (see ``EMOTION_ALIASES``)."""
    speaker: str
    """The speaker id; cross-validation folds never split a speaker."""
    dataset: str
    """The data set's scheme, e.g. ``emodb``."""
    split: str | None = None
    """A given split (``train``, ``val``, ``test``), where the data set defines one."""


@dataclass
class Corpus:
    """The utterances of a data set inside a class set, and what was left out and why."""

    spec: str
    """The ``--data SPEC`` it came from."""
    emotions: tuple[str, ...]
    """The class set, in label order."""
    utterances: list[Utterance]
    """The kept utterances, sorted by id."""
    skipped: Counter = field(default_factory=Counter)
    """Reasons -> counts of files left out (e.g. ``label boredom not in class set``)."""
    skipped_examples: dict[str, list[str]] = field(default_factory=dict)
    """Reasons -> the first few files left out for it, to name in messages."""

    def describe_skipped(self) -> str:
        """The files left out, one clause per reason with its count and first files, most frequent first."""
        return describe_skipped(self.skipped, self.skipped_examples)

    @property
    def speakers(self) -> list[str]:
        """The speakers, sorted."""
        return sorted({u.speaker for u in self.utterances})

    @property
    def synthetic(self) -> bool:
        """Whether this is synthesised speech (the app labels it so wherever it shows it)."""
        return self.utterances[0].dataset == "synthetic" if self.utterances else False


def describe_skipped(skipped: Counter, examples: dict[str, list[str]]) -> str:
    """``skipped`` (reason -> count) as one line, each reason with its count and first files (``examples``)."""
    return "; ".join(f"{n} {reason} (e.g. {', '.join(examples.get(reason, []))})"
                     for reason, n in skipped.most_common()) or "none"


def canonical_emotion(label: str) -> str:
    """The canonical name of an emotion label (case-insensitive; unknown labels pass through lowercased)."""
    key = label.strip().lower()
    return EMOTION_ALIASES.get(key, key)


def _require_dir(scheme: str, location: str) -> Path:
    path = Path(location).expanduser()
    if not path.is_dir():
        raise DataSpecError(f"--data {scheme}:{location}: directory not found")
    return path


def _audio_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def _uid(root: Path, path: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def _emodb(location: str) -> Iterable[Utterance | Skip]:
    root = _require_dir("emodb", location)
    for path in _audio_files(root):
        m = re.fullmatch(r"(\d\d)[a-z]\d\d([A-Z])[a-z]?", path.stem)
        if not m or m.group(2) not in EMODB_CODES:
            yield Skip("file name(s) not an EmoDB code like 03a01Wa.wav", path.name)
            continue
        yield Utterance(_uid(root, path), path, EMODB_CODES[m.group(2)], m.group(1), "emodb")


def _ravdess(location: str) -> Iterable[Utterance | Skip]:
    root = _require_dir("ravdess", location)
    for path in _audio_files(root):
        parts = path.stem.split("-")
        if len(parts) != 7 or parts[2] not in RAVDESS_CODES:
            yield Skip("file name(s) not a RAVDESS code like 03-01-05-01-01-01-12.wav", path.name)
            continue
        if parts[0] != "03" or parts[1] != "01":
            yield Skip("not audio-only speech (RAVDESS modality 03, vocal channel 01)", path.name)
            continue
        yield Utterance(_uid(root, path), path, RAVDESS_CODES[parts[2]], f"actor{parts[6]}", "ravdess")


def _cremad(location: str) -> Iterable[Utterance | Skip]:
    root = _require_dir("cremad", location)
    for path in _audio_files(root):
        parts = path.stem.split("_")
        if len(parts) != 4 or not parts[0].isdigit():
            yield Skip("file name(s) not a CREMA-D code like 1001_DFA_ANG_XX.wav", path.name)
            continue
        yield Utterance(_uid(root, path), path, canonical_emotion(parts[2]), parts[0], "cremad")


def _iemocap(location: str, merge_excitement: bool = True) -> Iterable[Utterance | Skip]:
    root = _require_dir("iemocap", location)
    sessions = sorted(p for p in root.glob("Session*") if p.is_dir())
    if not sessions:
        raise DataSpecError(f"--data iemocap:{location}: no Session1..Session5 folders; point it at the "
                            "IEMOCAP_full_release directory")
    line = re.compile(r"^\[[\d.]+ - [\d.]+\]\t(\S+)\t(\S+)\t")
    for session in sessions:
        for labels in sorted((session / "dialog" / "EmoEvaluation").glob("*.txt")):
            for text in labels.read_text(errors="replace").splitlines():
                m = line.match(text)
                if not m:
                    continue
                turn, code = m.groups()
                dialog = turn.rsplit("_", 1)[0]
                path = session / "sentences" / "wav" / dialog / f"{turn}.wav"
                if not path.is_file():
                    yield Skip("labelled turn(s) without audio", path.name)
                    continue
                emotion = canonical_emotion(code)
                if emotion == "excitement" and merge_excitement:
                    emotion = "happiness"
                speaker = turn[:5] + turn.rsplit("_", 1)[1][0]  # e.g. Ses01F: session + the turn's speaker
                yield Utterance(_uid(root, path), path, emotion, speaker, "iemocap")


def _csv(location: str, dataset: str = "csv") -> Iterable[Utterance | Skip]:
    path = Path(location).expanduser()
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise DataSpecError(f"--data {dataset}:{location}: {path} not found")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"path", "emotion", "speaker"} - set(reader.fieldnames or [])
        if missing:
            raise DataSpecError(f"{path}: missing column(s) {sorted(missing)}; expected path,emotion,speaker[,split]")
        for row in reader:
            audio = Path(row["path"])
            audio = audio if audio.is_absolute() else path.parent / audio
            uid = Path(row["path"]).with_suffix("").as_posix().lstrip("/")
            yield Utterance(uid, audio, canonical_emotion(row["emotion"]), row["speaker"].strip(), dataset,
                            (row.get("split") or "").strip().lower() or None)


def _synthetic(location: str) -> Iterable[Utterance | Skip]:
    return _csv(location, dataset="synthetic")


_LOADERS: dict[str, Callable[..., Iterable[Utterance | Skip]]] = {
    "emodb": _emodb, "ravdess": _ravdess, "cremad": _cremad, "iemocap": _iemocap, "csv": _csv,
    "synthetic": _synthetic,
}


def parse_emotions(text: str | None) -> tuple[str, ...] | None:
    """Parse ``--emotions``: a comma list (canonicalised), ``all`` (None: every label found), or None (default)."""
    if text is None:
        return DEFAULT_EMOTIONS
    if text.strip().lower() == "all":
        return None
    emotions = tuple(dict.fromkeys(canonical_emotion(e) for e in text.split(",") if e.strip()))
    if len(emotions) < 2:
        raise DataSpecError(f"--emotions {text!r}: need at least two classes, e.g. anger,happiness,neutral,sadness")
    return emotions


def absolute_spec(spec: str) -> str:
    """``spec`` with its path made absolute from the current directory: ``emodb:../x`` -> ``emodb:/abs/x``.

    For a process whose current directory differs (a Ray worker); the utterance ids, relative to the root, stay.
    """
    scheme, sep, location = spec.partition(":")
    return f"{scheme}:{os.path.abspath(location)}" if sep and location else spec


def load_corpus(spec: str, emotions: tuple[str, ...] | None = DEFAULT_EMOTIONS, *,
                merge_excitement: bool = True) -> Corpus:
    """List the utterances of ``spec`` inside the class set ``emotions`` (None: every label found).

    Labels outside the class set are skipped and counted; so are files whose names do not follow the corpus's
    scheme. Raises ``DataSpecError`` on an unknown scheme, a missing path, or when nothing is left.
    """
    scheme, sep, location = spec.partition(":")
    if not sep or scheme not in _LOADERS:
        raise DataSpecError(f"unknown --data {spec!r}; accepted: " + ", ".join(f"{s}:PATH" for s in SCHEMES))
    loader = _LOADERS[scheme]
    items = loader(location, merge_excitement) if scheme == "iemocap" else loader(location)
    kept: list[Utterance] = []
    skipped: Counter = Counter()
    examples: dict[str, list[str]] = {}
    for item in items:
        if isinstance(item, Utterance) and (emotions is None or item.emotion in emotions):
            kept.append(item)
            continue
        if isinstance(item, Utterance):
            item = Skip(f"label {item.emotion} not in class set", item.path.name)
        skipped[item.reason] += 1
        if len(examples.setdefault(item.reason, [])) < 3:
            examples[item.reason].append(item.name)
    if not kept:
        found = f"skipped {describe_skipped(skipped, examples)}" if skipped else "found no audio files"
        raise DataSpecError(f"--data {spec}: no usable utterances; {found}. Check the scheme and the directory "
                            f"(accepted: {', '.join(f'{s}:PATH' for s in SCHEMES)}; csv:FILE takes any layout)")
    ids = Counter(u.id for u in kept)
    if dupes := [i for i, n in ids.items() if n > 1]:
        raise DataSpecError(f"--data {spec}: utterance ids repeat ({dupes[:3]}...); each file may appear once")
    classes = emotions if emotions is not None else tuple(sorted({u.emotion for u in kept}))
    corpus = Corpus(spec, classes, sorted(kept, key=lambda u: u.id), skipped, examples)
    if skipped:
        log.info("%s: skipped %s", spec, corpus.describe_skipped())
    return corpus
