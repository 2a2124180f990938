"""The worker: ``exo-spec worker`` on every Mac.

Advertises the node by mDNS (advertise), describes it (node), serves
WorkerControl (control), inspects models without loading them (inspect), and
keeps one runner process per placement (placements) that loads its rank once
and serves jobs over msgpack frames (runner, targets, job), with a watchdog on a
group's rank 0 (watchdog).
"""
