"""The ``evaluation:`` section: where the global model is evaluated after every round, and what it generates."""
from __future__ import annotations

import enum
from dataclasses import dataclass

from privfed.config.fields import check, described


class EvaluationSite(enum.Enum):
    """Where the global model is evaluated after every round."""

    SERVER = "server"  # on the config's held-out data, by the server
    CLIENTS = "clients"  # by the round's clients, each on its own held-out records; the server learns the totals
    BOTH = "both"


@dataclass(frozen=True)
class EvaluationConfig:
    generations: int = described("chat and prompt_response data: held-out prompts answered greedily after every round "
                                 "and saved in generations.jsonl (0 = none)", default=3)
    max_new_tokens: int = described("tokens generated per answer", default=48)
    where: EvaluationSite = described("server | clients | both: clients evaluate the global model after every "
                                      "round on their own held-out records (data.validation_fraction of each "
                                      "client's examples), and their loss and correct counts are summed through the "
                                      "run's aggregation (under secagg the server learns only the federation's "
                                      "totals)",
                                      default=EvaluationSite.SERVER)

    def __post_init__(self) -> None:
        """The section's own rules (rules across sections: :mod:`privfed.config.rules`)."""
        check(self.generations >= 0, "evaluation.generations", "must be >= 0 (0 = none)")
        check(self.max_new_tokens >= 1, "evaluation.max_new_tokens", "must be >= 1")
