"""The servers mlbridge's transformers benchmark compares against, and what drives them.

MLServer (with its Hugging Face runtime) and LitServe each run from a venv of
their own under ``~/.cache/mlbridge/peers/<name>`` (``venvs.py`` makes them),
because their pinned transformers and web stacks must not disturb mlbridge's.
The load generator (``load.py``) and the in-process baseline
(``inprocess.py``) run in mlbridge's venv; ``mlserver/`` and
``litserve_api.py`` are loaded by the peers inside theirs.
"""
