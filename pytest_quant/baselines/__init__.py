"""Baselines: a syrupy JSON extension that compares with per-metric, direction-aware tolerances.

Each test that gates with ``vs="baseline"`` keeps one reviewable JSON file,
``<baseline dir>/<model>/<hardware key>/<test id>.json``. syrupy does the bookkeeping (``--snapshot-update``,
created / updated / failed counts, unused snapshots); ``rules`` says what is compared with which tolerance,
``record`` what a file holds, ``compare`` what a match is, ``extension`` where files live and which a session
may call unused, ``gate`` the check of one test, ``plugin`` the pytest glue.
"""
