"""One model over an mx.distributed group: pipeline stages, rank 0's target, the followers."""
