"""One in-process run with malicious clients: the federation poisoned as it is built, the clients' side given its
attackers, the metrics observed and written to results.json's ``attack``."""
from __future__ import annotations

from privfed.attacks.clients import MaliciousClients
from privfed.attacks.data import poison_federation
from privfed.attacks.observer import AttackObserver
from privfed.config import ExperimentConfig
from privfed.federation.setup import Federation, build_federation
from privfed.server.driver import clients_per_round


class AttackSimulation:
    def __init__(self, cfg: ExperimentConfig):
        self.observer = AttackObserver(cfg)
        self.malicious: MaliciousClients | None = None

    def build(self, cfg: ExperimentConfig) -> Federation:
        fed = build_federation(cfg)
        poisoned, triggered = poison_federation(fed)
        self.malicious = MaliciousClients(cfg, poisoned, clients_per_round(cfg, len(fed.clients)))
        self.observer.watch(fed, triggered, self.malicious)
        return fed

    def extra_results(self, results: dict) -> dict:
        return {"attack": self.observer.summary(results)}
