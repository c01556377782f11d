"""Engines run the server side and the client side of a federation: in one process (the default of
``privfed run``) today."""
