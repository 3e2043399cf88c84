"""Data: every format's loader (formats/), one entry point `load_data`, and the records they produce."""

from recpeft.data.load import load_data

__all__ = ["load_data"]
