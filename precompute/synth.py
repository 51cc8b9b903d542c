"""``loralens data synth``: an offline acted corpus synthesised with espeak-ng (through the espeakng-loader wheel).

Emotions differ in three ways, following what the literature on vocal affect reports:

- Prosody (Banse & Scherer 1996, Table 6; Scherer 2003, Table 2): espeak-ng's rate, pitch, pitch range and volume.
  Hot anger fast and loud, its pitch raised and varied; happiness (elation) the highest and most varied pitch,
  moderately fast; sadness slow, low, flat and soft; neutral in between. Anger and happiness are close in prosody
  in those studies too, so prosody alone leaves them confused (a first version of this corpus showed it).
- Rhythm (Scherer 2003: sadness with more and longer pauses; anger with fewer): espeak-ng's gap between words.
- Voice quality and spectral tilt (Gobl & Ni Chasaide 2003, "The role of voice quality in communicating emotion,
  mood and attitude", Speech Communication 40; Banse & Scherer 1996, the energy above 1 kHz): anger tense and
  harsh, with a flat spectral slope (more energy high up); happiness slightly bright; sadness lax and breathy, a
  steep slope (little energy high up); neutral modal. Applied to espeak-ng's output with scipy.signal: a
  first-order pre-emphasis for a flatter slope, a first-order low-pass for a steeper one, a soft saturation for
  tension, low-passed noise under the speech envelope for breath.

Every utterance's parameters are drawn around its emotion's centre with seeded noise, and every speaker (a voice
variant) has its own pitch and rate offset, so classes overlap as in acted speech. The same seed gives the same
corpus.
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
from scipy import signal
from tqdm.auto import tqdm

from loralens.store.schema import UserError

log = logging.getLogger(__name__)

CORPUS_VERSION = 2
"""Changes whenever the same seed would give other audio (2: rhythm and voice quality added), so caches renew."""

# Centre of each emotion's prosody: espeak-ng's rate (words/min), pitch (0-100), range (0-100), volume (0-200) and
# gap between words (units of 10 ms at the default rate).
PROSODY = {
    "neutral": {"rate": 160, "pitch": 45, "range": 40, "volume": 100, "wordgap": 1},
    "anger": {"rate": 215, "pitch": 52, "range": 65, "volume": 175, "wordgap": 0},
    "happiness": {"rate": 180, "pitch": 78, "range": 95, "volume": 125, "wordgap": 1},
    "sadness": {"rate": 118, "pitch": 30, "range": 12, "volume": 65, "wordgap": 7},
}
SPREAD = {"rate": 12, "pitch": 5, "range": 8, "volume": 12, "wordgap": 1}
"""Standard deviation of the per-utterance variation around the emotion's centre."""
QUALITY = {
    "neutral": {"tilt": 0.0, "tension": 0.0, "breath": 0.0},
    "anger": {"tilt": 0.75, "tension": 3.0, "breath": 0.0},
    "happiness": {"tilt": 0.3, "tension": 0.5, "breath": 0.0},
    "sadness": {"tilt": -0.8, "tension": 0.0, "breath": 0.05},
}
"""Voice quality of each emotion (see ``voice_quality``): spectral tilt (positive flatter, negative steeper),
tension (drive of the soft saturation) and breath (noise level against the speech's RMS)."""
QUALITY_SPREAD = {"tilt": 0.1, "tension": 0.3, "breath": 0.01}
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
_PARAMETERS = {"rate": 1, "volume": 2, "pitch": 3, "range": 4, "wordgap": 7}  # espeak_PARAMETER
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_INITIALIZE_DONT_EXIT = 0x8000
_LOCK = threading.Lock()  # espeak-ng keeps global state


class SynthError(UserError):
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

    def speak(self, text: str, voice: str, rate: int, pitch: int, range_: int, volume: int, wordgap: int = 0,
              seed: int = 0) -> np.ndarray:
        """Synthesise ``text``; returns float32 samples at ``self.rate`` Hz (the same for the same seed)."""
        with _LOCK:
            self._libc.srand(ctypes.c_uint(seed))
            self.lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))  # espeak-ng's own generator (pitch flutter, noise)
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise SynthError(f"espeak-ng has no voice {voice!r}")
            for name, value in (("rate", rate), ("pitch", pitch), ("range", range_), ("volume", volume),
                                ("wordgap", wordgap)):
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
    wordgap: int = 0
    tilt: float = 0.0
    tension: float = 0.0
    breath: float = 0.0


def voice_quality(audio: np.ndarray, rate: int, tilt: float, tension: float, breath: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Give synthesised speech a voice quality (see the module's notes and ``QUALITY``).

    Args:
        audio: samples in [-1, 1].
        rate: their sample rate.
        tilt: > 0 flattens the spectral slope (a share ``tilt`` of a first-order pre-emphasis, 0.95), < 0 steepens
            it (a share ``-tilt`` of a first-order low-pass at 900 Hz); the RMS is kept.
        tension: drive of a tanh saturation (0: none), its output scaled back to the input's peak.
        breath: low-passed (4 kHz) noise under the speech's envelope, at this share of the speech's RMS.
        rng: the noise's generator.
    """
    if audio.size == 0:
        return audio
    rms = float(np.sqrt(np.mean(audio**2))) or 1.0
    out = audio.astype(np.float64)
    if tilt > 0:
        out = (1 - tilt) * out + tilt * signal.lfilter([1.0, -0.95], [1.0], out)
    elif tilt < 0:
        b, a = signal.butter(1, 900, fs=rate)
        out = (1 + tilt) * out + (-tilt) * signal.lfilter(b, a, out)
    out *= rms / (float(np.sqrt(np.mean(out**2))) or 1.0)
    if tension > 0:
        peak = float(np.abs(out).max()) or 1.0
        out = np.tanh(tension * out / peak) / np.tanh(tension) * peak
    if breath > 0:
        b, a = signal.butter(2, 4000, fs=rate)
        envelope = signal.lfilter(*signal.butter(1, 30, fs=rate), np.abs(out))
        noise = signal.lfilter(b, a, rng.standard_normal(out.size))
        noise *= envelope / (float(np.sqrt(np.mean(envelope**2))) or 1.0)
        out += breath * rms * noise / (float(np.sqrt(np.mean(noise**2))) or 1.0) * 3
    return out.astype(np.float32)


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
        raise UserError(f"sentences={sentences}; expected 1 to 10")
    # espeak-ng keeps synthesis state across calls in a process (its pitch flutter, for one): a fresh
    # interpreter per corpus makes the same seed give the same audio wherever synthesise is called from.
    done = subprocess.run([sys.executable, "-m", "loralens.precompute.synth", str(out), str(seed), str(sentences)],
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
             "range": int(np.clip(p["range"], 0, 100)), "volume": int(np.clip(p["volume"], 30, 200)),
             "wordgap": int(np.clip(round(p["wordgap"]), 0, 20))}
        q = {k: float(v + rng.normal(0, QUALITY_SPREAD[k])) if v else 0.0 for k, v in QUALITY[emotion].items()}
        q = {"tilt": round(float(np.clip(q["tilt"], -0.95, 0.95)), 3), "tension": round(max(q["tension"], 0.0), 3),
             "breath": round(max(q["breath"], 0.0), 4)}
        text = SENTENCES[speaker[:2]][i]
        audio = engine.speak(text, voice, p["rate"], p["pitch"], p["range"], p["volume"], p["wordgap"],
                             seed=seed * 100_003 + n)
        audio = voice_quality(audio, engine.rate, q["tilt"], q["tension"], q["breath"],
                              np.random.default_rng([seed, n]))
        rel = f"wav/{speaker}_{emotion}_{i:02d}.wav"
        sf.write(out / rel, np.clip(audio, -1, 1), engine.rate, subtype="PCM_16")
        rows.append(SynthUtterance(rel, emotion, speaker, voice, text, **p, **q))
    return rows


if __name__ == "__main__":  # the worker process of ``synthesise``: rows as JSON on stdout
    target, seed_arg, sentences_arg = sys.argv[1:4]
    result = _synthesise_all(Path(target), int(seed_arg), int(sentences_arg))
    sys.stdout.write(json.dumps([asdict(r) for r in result]))
