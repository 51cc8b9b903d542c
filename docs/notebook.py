# %% [markdown]
# # loralens from a notebook
#
# The Python API over a traced store: the same functions the explorer and `loralens report` use, so a figure made
# here is the one the app draws. Run it as a script (`python docs/notebook.py STORE [OUT]`) or open it as a
# notebook (the `# %%` cells are Jupyter's, through jupytext or VS Code). A store to try it on:
# `loralens demo --build-only` prints one.

# %%
import os
import sys
from pathlib import Path

import numpy as np

import loralens
from loralens.app import charts  # Altair charts from the views' tidy frames (no Streamlit)

STORE = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("LORALENS_STORE", "runs/store.zarr")
OUT = Path(sys.argv[2] if len(sys.argv) > 2 else "notebook-figures")

# %% [markdown]
# ## The store and its runs

# %%
store = loralens.open_store(STORE)
runs = loralens.runs(store)
for run in runs:
    print(run.label, "| checkpoints:", ", ".join(run.checkpoints), "| UAR", run.metrics.get("uar", {}).get("mean"))
lora = next(r for r in runs if r.method == "lora")
frozen = next((r for r in runs if r.method == "frozen"), None)
table = loralens.views.utterance_table(store, lora.name)  # one row per utterance the run traced
print(table.head())

# %% [markdown]
# ## Logit lens: each layer's mean-pooled residual through the trained head

# %%
series = {r.name: loralens.views.lens_of(store, r.name) for r in (lora, frozen) if r is not None}
lens_frame = loralens.views.lens_frame(series)  # boundary, value, measure, series
print(lens_frame.groupby(["series", "measure"])["value"].agg(["first", "last"]))

# %% [markdown]
# ## Layer contributions (attention and MLP), LoRA against its frozen partner

# %%
partner = loralens.views.frozen_partner(runs, lora)
rows = loralens.views.common_rows(store, lora.name, partner.name) if partner else None
mine = loralens.views.contributions_of(store, lora.name, rows)
theirs = loralens.views.contributions_of(store, partner.name, rows) if partner else None
contribution_frame = loralens.views.contribution_frame(mine, lora.name, theirs)

# %% [markdown]
# ## LoRA dynamics: SVD spectra and effective rank, CKA between A and B

# %%
spectra = loralens.views.spectra_of(store, lora.name, threshold=0.9)
print(loralens.views.rank_table(spectra))
cka = loralens.views.cka_a_vs_b(store, lora.name)
cka_frame = loralens.views.cka_ab_frame(cka)

# %% [markdown]
# ## A 2-D map of one layer's LoRA A activations (`"residual"` for the residual stream)

# %%
layer = lora.n_layers // 2
coordinates, mapped, silhouette = loralens.views.map_of(store, lora.name, "lora_a", layer, "tsne")
print(f"layer {layer}: {len(mapped)} utterances mapped, emotion silhouette {silhouette:.2f}")

# %% [markdown]
# ## Figures: the charts the app draws, saved as files

# %%
OUT.mkdir(parents=True, exist_ok=True)
figures = [*charts.save(charts.lens_curves(lens_frame), OUT, "lens"),
           *charts.save(charts.contributions(contribution_frame), OUT, "contributions"),
           *charts.save(charts.spectra(loralens.views.spectra_frame(spectra), 0.9), OUT, "spectra")]
print("wrote", ", ".join(str(f) for f in figures))

# %% [markdown]
# ## Your own audio through a run's fold model (imports torch)

# %%
run_dir = store.attrs(lora.name).get("run_dir")
if run_dir and Path(run_dir, "config.json").is_file():
    model = loralens.Predictor(Path(run_dir))
    clip = store.audio(int(mapped[0]))  # any 16 kHz mono float32 array, or model.predict_file(path)
    prediction = model.predict(clip, "first mapped utterance")
    print(prediction.prediction, "settles at boundary", prediction.resolution_depth)
    print(np.round(np.array(prediction.probabilities), 3))
else:
    print(f"{lora.name}'s run directory is not on this machine: no model to run")
