"""The ``exo-spec`` subcommands, one module each: its flags (``add_parser``) and its
``run``, which imports the work it dispatches to only when it runs, so that
``exo-spec --help`` and the cluster's client commands start without MLX-LM."""
