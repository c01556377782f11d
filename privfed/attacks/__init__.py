"""Poisoning attacks and what they achieve: malicious clients on the real runtime and protocols (``attack``
section), the server's defences (``defence`` section, :mod:`privfed.server.combiner`), the attack metrics, and the
attack grid's cells (``privfed attack-grid`` runs them: :mod:`privfed.runners.attack_grid`)."""
