"""The worker: ``exo-spec worker`` on every Mac.

Advertises the node by mDNS (advertise), describes it (node), serves
WorkerControl (control), inspects models without loading them (model_info), and
keeps one runner process per placement (placements) that loads its rank once and
serves jobs (runner), both sides speaking the typed messages of ``messages`` in
msgpack frames.
"""
