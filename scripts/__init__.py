"""Operator scripts: ``up``, ``down``, ``status`` and ``test`` (Python, so Windows works too)."""
