"""Base models: built-in ones fetched from PyPI (hub.py) and loading + fingerprinting (load.py)."""
