"""The runner: one process per placement and rank, started by the worker
(``python -m exo_spec.worker.runner``). It loads its share of the model once and
serves jobs over frames on its stdin and stdout (``process``)."""
