"""The Streamlit explorer over a loralens store."""
