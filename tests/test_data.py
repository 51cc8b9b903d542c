"""Data sources: each corpus's official layout, the class set, and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from loralens.precompute.data import DataSpecError, load_corpus, parse_emotions


def _wav(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(1600, dtype=np.float32), 16000)


def test_emodb_codes(tmp_path):
    for name in ["03a01Wa.wav", "03a01Fa.wav", "08b02Lb.wav", "10a04Tc.wav", "16b10Nb.wav", "notes.wav"]:
        _wav(tmp_path / "wav" / name)
    corpus = load_corpus(f"emodb:{tmp_path}")
    assert [(u.emotion, u.speaker) for u in corpus.utterances] == [
        ("happiness", "03"), ("anger", "03"), ("sadness", "10"), ("neutral", "16")]
    assert corpus.skipped["label boredom not in class set"] == 1
    assert sum(corpus.skipped.values()) == 2
    assert len(load_corpus(f"emodb:{tmp_path}", None).emotions) == 5


def test_ravdess_layout(tmp_path):
    _wav(tmp_path / "Actor_01" / "03-01-05-01-01-01-01.wav")
    _wav(tmp_path / "Actor_02" / "03-01-03-02-01-01-02.wav")
    _wav(tmp_path / "Actor_02" / "03-02-03-02-01-01-02.wav")  # song: skipped
    corpus = load_corpus(f"ravdess:{tmp_path}")
    assert [(u.emotion, u.speaker) for u in corpus.utterances] == [("anger", "actor01"), ("happiness", "actor02")]


def test_cremad_layout(tmp_path):
    _wav(tmp_path / "AudioWAV" / "1001_DFA_ANG_XX.wav")
    _wav(tmp_path / "AudioWAV" / "1002_IEO_SAD_HI.wav")
    _wav(tmp_path / "AudioWAV" / "1002_IEO_FEA_HI.wav")
    corpus = load_corpus(f"cremad:{tmp_path}")
    assert [(u.emotion, u.speaker) for u in corpus.utterances] == [("anger", "1001"), ("sadness", "1002")]


def test_iemocap_layout_and_excitement(tmp_path):
    session = tmp_path / "Session1"
    labels = session / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    labels.parent.mkdir(parents=True)
    labels.write_text(
        "% header\n\n"
        "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]\n"
        "C-E2:\tNeutral;\t()\n"
        "[10.0 - 12.0]\tSes01F_impro01_M001\texc\t[3.0, 3.0, 3.0]\n"
        "[13.0 - 14.0]\tSes01F_impro01_F002\tfru\t[3.0, 3.0, 3.0]\n")
    for turn in ("Ses01F_impro01_F000", "Ses01F_impro01_M001", "Ses01F_impro01_F002"):
        _wav(session / "sentences" / "wav" / "Ses01F_impro01" / f"{turn}.wav")
    corpus = load_corpus(f"iemocap:{tmp_path}")
    assert [(u.emotion, u.speaker) for u in corpus.utterances] == [("neutral", "Ses01F"), ("happiness", "Ses01M")]
    kept = load_corpus(f"iemocap:{tmp_path}", None, merge_excitement=False)
    assert "excitement" in kept.emotions and "frustration" in kept.emotions


def test_csv_relative_paths_and_split(tmp_path):
    _wav(tmp_path / "a" / "x.wav")
    (tmp_path / "m.csv").write_text("path,emotion,speaker,split\na/x.wav,Angry,s1,TRAIN\n")
    (u,) = load_corpus(f"csv:{tmp_path / 'm.csv'}").utterances
    assert u.path == tmp_path / "a" / "x.wav" and u.emotion == "anger" and u.split == "train"


def test_errors_name_what_was_given(tmp_path):
    with pytest.raises(DataSpecError, match="accepted: emodb:PATH"):
        load_corpus("foo:bar")
    with pytest.raises(DataSpecError, match="directory not found"):
        load_corpus(f"emodb:{tmp_path / 'nope'}")
    with pytest.raises(DataSpecError, match="no usable utterances"):
        load_corpus(f"emodb:{tmp_path}")
    (tmp_path / "bad.csv").write_text("file,label\n")
    with pytest.raises(DataSpecError, match="missing column"):
        load_corpus(f"csv:{tmp_path / 'bad.csv'}")


def test_wrong_layout_is_one_short_line_per_reason(tmp_path):
    """A directory of another corpus counts its files by reason and names a few, not every file."""
    for i in range(50):
        _wav(tmp_path / f"speaker_{i:02d}_angry.wav")
    with pytest.raises(DataSpecError) as error:
        load_corpus(f"emodb:{tmp_path}")
    message = str(error.value)
    assert "skipped 50 file name(s) not an EmoDB code like 03a01Wa.wav" in message
    assert "speaker_00_angry.wav" in message and "speaker_03_angry.wav" not in message
    assert "csv:FILE" in message and len(message) < 400
    _wav(tmp_path / "03a01Wa.wav")
    _wav(tmp_path / "03a04Lc.wav")
    corpus = load_corpus(f"emodb:{tmp_path}")
    assert corpus.skipped == {"file name(s) not an EmoDB code like 03a01Wa.wav": 50,
                              "label boredom not in class set": 1}
    assert corpus.describe_skipped().startswith("50 file name(s) not an EmoDB code")


def test_parse_emotions():
    assert parse_emotions(None) == ("anger", "happiness", "neutral", "sadness")
    assert parse_emotions("all") is None
    assert parse_emotions("angry, sad") == ("anger", "sadness")
    with pytest.raises(DataSpecError):
        parse_emotions("anger")


def test_real_emodb_four_classes(emodb):
    corpus = load_corpus(f"emodb:{emodb}")
    assert len(corpus.utterances) == 339 and len(corpus.speakers) == 10
    assert len(load_corpus(f"emodb:{emodb}", None).utterances) == 535
