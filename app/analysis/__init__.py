"""The analyses behind every view: pure functions over arrays (NumPy, scikit-learn, umap-learn), no Streamlit."""
