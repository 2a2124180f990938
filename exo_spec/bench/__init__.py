"""``exo-spec bench``: plain and speculative decoding side by side, exo-spec beside mlx-lm.

``inputs`` loads the models and prompts, ``timing`` times one generation,
``runners`` runs one row's way of decoding (mlx-lm, the engine, a local group),
``rows`` lists the rows, ``report`` makes the table and the JSON, ``suite`` runs
them all (the flags are ``commands.bench``'s).
"""
