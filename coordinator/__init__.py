"""The coordinator: ``exo-spec coordinator`` on the head node.

Finds workers (discovery: mDNS and ``--peer``), watches them (registry:
heartbeats, READY and LOST), decides where a model goes (planner: pure, no
I/O), loads and releases models on them (placer, with placement records), runs
jobs on those placements (scheduler, with job records), and serves the public
``exo_spec.v1.Inference`` API (api, server, main).
"""
