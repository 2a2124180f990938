"""Offline training of small models from the Python standard library (``make-models``)."""
