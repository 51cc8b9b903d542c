"""``loralens data synth``: an offline acted corpus synthesised with espeak-ng (through the espeakng-loader wheel).

Emotions are rendered through prosody, following what the literature on vocal affect reports (Scherer 2003;
Banse & Scherer 1996): anger and happiness higher in pitch, wider in range, faster and louder; sadness lower,
narrower, slower and softer; neutral in between. Every utterance's parameters are drawn around its emotion's
centre with seeded noise, and every speaker (a voice variant) has its own pitch and rate offset, so classes
overlap as in acted speech. The same seed gives the same corpus.
"""

from __future__ import annotations

import csv
import ctypes
import json
import logging
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

# Centre of each emotion's prosody: espeak-ng's rate (words/min), pitch (0-100), range (0-100), volume (0-200).
PROSODY = {
    "neutral": {"rate": 165, "pitch": 48, "range": 45, "volume": 100},
    "anger": {"rate": 195, "pitch": 58, "range": 75, "volume": 150},
    "happiness": {"rate": 188, "pitch": 68, "range": 85, "volume": 130},
    "sadness": {"rate": 128, "pitch": 36, "range": 18, "volume": 72},
}
SPREAD = {"rate": 14, "pitch": 6, "range": 10, "volume": 14}
"""Standard deviation of the per-utterance variation around the emotion's centre."""
SPEAKERS = {  # id -> espeak-ng voice (language + variant): 4 English, 4 German; female and male variants
    "en_f1": "en-us+f2", "en_m1": "en-us+m1", "en_f2": "en+f4", "en_m2": "en+m3",
    "de_f1": "de+f2", "de_m1": "de+m1", "de_f2": "de+f3", "de_m2": "de+m4",
}
SENTENCES = {
    "en": ["The towel is lying on the fridge.", "Tonight I could tell him.", "The old newspapers are on the table.",
           "We will meet at the station at seven.", "The paper bag is in the kitchen.",
           "She put the keys next to the window.", "They are going upstairs now.",
           "In seven hours it will be over.", "The car is parked behind the house.",
           "He wrote the letter this morning."],
    "de": ["Der Lappen liegt auf dem Eisschrank.", "Heute Abend könnte ich es ihm sagen.",
           "Die alten Zeitungen liegen auf dem Tisch.", "Wir treffen uns um sieben am Bahnhof.",
           "Die Tüte liegt in der Küche.", "Sie hat die Schlüssel neben das Fenster gelegt.",
           "Sie gehen jetzt nach oben.", "In sieben Stunden wird es vorbei sein.",
           "Das Auto steht hinter dem Haus.", "Er hat den Brief heute Morgen geschrieben."],
}
_PARAMETERS = {"rate": 1, "volume": 2, "pitch": 3, "range": 4}  # espeak_PARAMETER
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_INITIALIZE_DONT_EXIT = 0x8000
_LOCK = threading.Lock()  # espeak-ng keeps global state


class SynthError(RuntimeError):
    """espeak-ng could not be loaded or could not speak."""


class Espeak:
    """espeak-ng through ctypes, from the espeakng-loader wheel (library and voice data included)."""

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError as e:
            raise SynthError("the synthetic corpus needs espeak-ng: pip install 'loralens[bundled]' "
                             "(or pip install espeakng-loader)") from e
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                          ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        root = str(Path(espeakng_loader.get_data_path()).parent).encode()
        self.rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, root, _INITIALIZE_DONT_EXIT)
        if self.rate <= 0:
            raise SynthError(f"espeak-ng failed to initialise (data at {root.decode()})")
        self._libc = ctypes.CDLL(None)  # espeak-ng's noise sources draw from libc's rand()
        self._chunks: list[np.ndarray] = []
        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
        self._callback = callback_type(self._collect)  # kept referenced: espeak calls it later
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, n, events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def speak(self, text: str, voice: str, rate: int, pitch: int, range_: int, volume: int,
              seed: int = 0) -> np.ndarray:
        """Synthesise ``text``; returns float32 samples at ``self.rate`` Hz (the same for the same seed)."""
        with _LOCK:
            self._libc.srand(ctypes.c_uint(seed))
            self.lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))  # espeak-ng's own generator (pitch flutter, noise)
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise SynthError(f"espeak-ng has no voice {voice!r}")
            for name, value in (("rate", rate), ("pitch", pitch), ("range", range_), ("volume", volume)):
                self.lib.espeak_SetParameter(_PARAMETERS[name], int(value), 0)
            self._chunks = []
            data = text.encode("utf-8") + b"\0"
            buffer = ctypes.create_string_buffer(data)
            if self.lib.espeak_Synth(buffer, len(data), 0, 1, 0, _CHARS_UTF8, None, None) != 0:
                raise SynthError(f"espeak-ng failed to speak {text!r} with {voice}")
            self.lib.espeak_Synchronize()
            samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)
        return samples.astype(np.float32) / 32768.0


@dataclass
class SynthUtterance:
    """One synthesised utterance and the parameters that made it."""

    path: str
    emotion: str
    speaker: str
    voice: str
    text: str
    rate: int
    pitch: int
    range: int
    volume: int


def synthesise(out: Path, seed: int = 0, sentences: int = 10) -> Path:
    """Write the corpus (WAV files and ``manifest.csv``) into ``out``; return the manifest's path.

    Args:
        out: the corpus directory (created; an existing complete corpus of the same seed is kept).
        seed: the variation's seed.
        sentences: sentences per speaker and emotion (at most 10).
    """
    manifest = out / "manifest.csv"
    if manifest.is_file():
        log.info("%s already holds a corpus; delete it to synthesise again", out)
        return manifest
    if not 1 <= sentences <= 10:
        raise ValueError(f"sentences={sentences}; expected 1 to 10")
    # espeak-ng keeps synthesis state across calls in a process (its pitch flutter, for one): a fresh
    # interpreter per corpus makes the same seed give the same audio wherever synthesise is called from.
    done = subprocess.run([sys.executable, "-m", "precompute.synth", str(out), str(seed), str(sentences)],
                          stdout=subprocess.PIPE, check=False)
    if done.returncode != 0:
        raise SynthError(f"synthesis into {out} failed (exit {done.returncode}); see the messages above")
    rows = [SynthUtterance(**row) for row in json.loads(done.stdout)]
    tmp = manifest.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    tmp.replace(manifest)  # the manifest appears only once every clip is written
    log.info("wrote %d clips of %d speakers to %s", len(rows), len(SPEAKERS), out)
    return manifest


def _synthesise_all(out: Path, seed: int, sentences: int) -> list[SynthUtterance]:
    engine = Espeak()
    rng = np.random.default_rng(seed)
    rows: list[SynthUtterance] = []
    jobs = [(s, v, e, i) for s, v in SPEAKERS.items() for e in PROSODY for i in range(sentences)]
    offsets = {s: {"pitch": rng.normal(0, 6), "rate": rng.normal(0, 8)} for s in SPEAKERS}
    (out / "wav").mkdir(parents=True, exist_ok=True)
    for n, (speaker, voice, emotion, i) in enumerate(tqdm(jobs, desc="synthesising", unit="clip")):
        centre = PROSODY[emotion]
        p = {k: centre[k] + rng.normal(0, SPREAD[k]) + offsets[speaker].get(k, 0.0) for k in centre}
        p = {"rate": int(np.clip(p["rate"], 90, 320)), "pitch": int(np.clip(p["pitch"], 5, 99)),
             "range": int(np.clip(p["range"], 0, 100)), "volume": int(np.clip(p["volume"], 30, 200))}
        text = SENTENCES[speaker[:2]][i]
        audio = engine.speak(text, voice, p["rate"], p["pitch"], p["range"], p["volume"], seed=seed * 100_003 + n)
        rel = f"wav/{speaker}_{emotion}_{i:02d}.wav"
        sf.write(out / rel, np.clip(audio, -1, 1), engine.rate, subtype="PCM_16")
        rows.append(SynthUtterance(rel, emotion, speaker, voice, text, p["rate"], p["pitch"], p["range"],
                                   p["volume"]))
    return rows


if __name__ == "__main__":  # the worker process of ``synthesise``: rows as JSON on stdout
    target, seed_arg, sentences_arg = sys.argv[1:4]
    result = _synthesise_all(Path(target), int(seed_arg), int(sentences_arg))
    sys.stdout.write(json.dumps([asdict(r) for r in result]))
