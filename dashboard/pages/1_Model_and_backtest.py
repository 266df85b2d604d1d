"""Dashboard page: the Phoenix 95 model's provenance and the last backtest."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # streamlit puts only the page's folder on sys.path
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboard.model_view import backtest_dir, backtest_view, model_path, model_view  # noqa: E402
from shared.settings import ConfigError, get_settings  # noqa: E402


def main() -> None:
    st.title("Phoenix 95 model and backtest")
    try:
        configured = get_settings().phoenix_95.model_path
    except ConfigError as exc:
        st.error(str(exc))
        return
    path = model_path(configured)
    view = model_view(path)
    st.header("Model in use")
    if view is None:
        st.error(f"cannot read the model file {path}")
    else:
        p = view.provenance
        st.markdown(f"`{p['version']}` from `{path.name}` — **{p['shipped']}**, base rate "
                    f"{p['base_rate']:.4f}, fitted {p['trained_at']}, history "
                    f"{(p.get('period') or {}).get('from')} … {(p.get('period') or {}).get('to')}")
        st.caption(f"libraries: {p.get('libraries')}")
        st.subheader("Data files (SHA-256)")
        st.dataframe(view.data, hide_index=True, use_container_width=True)
        st.subheader("Walk-forward, out of sample")
        st.dataframe(view.scores, hide_index=True, use_container_width=True)
    st.header("Last backtest")
    bt = backtest_view(backtest_dir())
    if bt is None:
        st.info("no backtest yet: run scripts/backtest.py --data ../shared/data/klines")
        return
    st.caption(f"run {bt.meta.get('run_at')}, model {bt.meta.get('model')}, "
               f"initial equity {bt.meta.get('initial')}")
    st.dataframe(bt.table, hide_index=True, use_container_width=True)
    if bt.png is not None:
        st.image(str(bt.png))


main()
