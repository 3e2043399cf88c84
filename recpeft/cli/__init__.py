from recpeft.cli.app import app, main

__all__ = ["app", "main"]
