"""Generated gRPC stubs of proto/exo_spec/v1 (python proto/generate.py)."""
