"""What each view shows, computed from a store, and the tidy frames every chart draws.

Three parts: the queries (``queries``), the causal view (``causal_view``) and the frames (``frames``).
No Streamlit here: the pages, ``loralens report`` and notebooks (``loralens.views``) call these and only draw the
results. Every public name is re-exported here: ``views.lens_of``, ``views.lens_frame``, ...
"""

from __future__ import annotations

from loralens.analysis.views.causal_view import (
    CausalView,
    causal_of,
    trajectories,
)
from loralens.analysis.views.frames import (
    CURVE_POINTS,
    PICK_LIMIT,
    TIME_COLUMNS,
    cka_ab_frame,
    concentration,
    contribution_frame,
    heatmap_frame,
    lens_frame,
    listed,
    rank_table,
    spectra_frame,
    time_blocks,
)
from loralens.analysis.views.queries import (
    LORA_QUANTITIES,
    QUANTITY_LABELS,
    RunInfo,
    cka_a_vs_b,
    common_rows,
    contributions_of,
    fold_groups,
    frozen_partner,
    lens_of,
    lora_matrices,
    map_of,
    pairs,
    placing_map,
    rank_series,
    residual_cka,
    run_info,
    sampled_groups,
    silhouette_of,
    silhouettes,
    spectra_of,
    summary_of,
    utterance_table,
    vectors,
)

__all__ = [
    "CURVE_POINTS",
    "CausalView",
    "LORA_QUANTITIES",
    "PICK_LIMIT",
    "QUANTITY_LABELS",
    "RunInfo",
    "TIME_COLUMNS",
    "causal_of",
    "cka_a_vs_b",
    "cka_ab_frame",
    "common_rows",
    "concentration",
    "contribution_frame",
    "contributions_of",
    "fold_groups",
    "frozen_partner",
    "heatmap_frame",
    "lens_frame",
    "lens_of",
    "listed",
    "lora_matrices",
    "map_of",
    "pairs",
    "placing_map",
    "rank_series",
    "rank_table",
    "residual_cka",
    "run_info",
    "sampled_groups",
    "silhouette_of",
    "silhouettes",
    "spectra_frame",
    "spectra_of",
    "summary_of",
    "time_blocks",
    "trajectories",
    "utterance_table",
    "vectors",
]
