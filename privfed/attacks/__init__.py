"""Poisoning attacks and what they achieve: malicious clients on the real runtime and protocols (``attack``
section), the server's defences (``defence`` section, :mod:`privfed.server.combiner`), the attack metrics, and the
attack grid (``privfed attack-grid``)."""
