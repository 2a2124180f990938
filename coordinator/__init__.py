"""The coordinator: ``exo-spec coordinator`` on the head node.

Finds workers (discovery: mDNS and ``--peer``), watches them (registry:
heartbeats, READY and LOST), decides where a model goes (placement_plan: pure, no
I/O), loads and releases models on them (placement_lifecycle, with the records of
placement_record), runs jobs on those placements (scheduler, with the records of
job), and serves the public ``exo_spec.v1.Inference`` API (api). The states of
those records are in states; server builds and connects the parts
(``exo_spec.commands.coordinator`` runs it).
"""
