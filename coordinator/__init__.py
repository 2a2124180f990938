"""The coordinator: ``exo-spec coordinator`` on the head node.

Finds workers (discovery: mDNS and ``--peer``), watches them (registry:
heartbeats, READY and LOST), decides where a model goes (planner: pure, no
I/O), runs jobs on placements (scheduler, with job and placement records), and
serves the public ``exo_spec.v1.Inference`` API (api, server, main).
"""
