"""Phoenix 95 Streamlit dashboard: ``app`` (layout), ``data`` (reads), ``charts`` (figures)."""
