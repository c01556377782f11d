"""One in-process run with malicious clients: the federation poisoned as it is built, the clients' side given its
attackers, the metrics observed and written to results.json's ``attack``."""
from __future__ import annotations

from privfed.attacks.clients import MaliciousClients, MaliciousProcedure
from privfed.attacks.data import poison_federation
from privfed.attacks.observer import AttackObserver
from privfed.client.procedure import ClientProcedure
from privfed.config import ExperimentConfig
from privfed.federation.setup import Federation, build_federation
from privfed.server.driver import clients_per_round


class AttackSimulation:
    def __init__(self, cfg: ExperimentConfig):
        self.observer = AttackObserver(cfg)
        self.procedure: MaliciousProcedure | None = None  # every client's procedure, attackers wrapped

    def build(self, cfg: ExperimentConfig) -> Federation:
        fed = build_federation(cfg)
        poisoned, triggered = poison_federation(fed)
        plan = MaliciousClients(cfg, poisoned, clients_per_round(cfg, len(fed.clients)))
        self.procedure = MaliciousProcedure(ClientProcedure(cfg, fed), plan)
        self.observer.watch(fed, triggered, plan)
        return fed

    def extra_results(self, results: dict) -> dict:
        return {"attack": self.observer.summary(results)}
