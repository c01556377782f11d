"""Engines run the server side and the client side of a federation: in one process (``inprocess``, the default of
``privfed run``) or on Flower (``flower``: one node per organisation, or Flower's simulation runtime)."""
