"""Everything a run needs before round 1: the data split into clients, the model in its regime on its device, and
each client's DP calibration.

The training pool is tokenised once; a client is a :class:`~privfed.client.state.ClientState` holding the indices
of its examples, and the one model lives in the :class:`~privfed.client.runtime.ClientRuntime`.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import TensorDataset
from transformers import PreTrainedTokenizerBase

from privfed.client.device import resolve_device
from privfed.client.runtime import ClientRuntime
from privfed.client.state import ClientState
from privfed.config import DpMode, ExperimentConfig, Partition, Regime, Task
from privfed.data.chat import require_chat_template
from privfed.data.partition import describe, natural_owners, partition
from privfed.data.records import Chat
from privfed.data.sources import load_data
from privfed.data.tokenize import tokenize
from privfed.errors import ConfigError
from privfed.federation.vectors import derive_seed, flatten
from privfed.models.catalog import resolve_task
from privfed.models.checks import check_before_training
from privfed.models.inputs import explicit_inputs
from privfed.models.local import load_initial_weights
from privfed.models.regimes import apply_regime, trainable_parameters
from privfed.models.sources import load_model
from privfed.privacy.accounting import calibrate_noise, epsilon_of_history
from privfed.privacy.dpsgd import DpSettings, poisson_sample_rate

log = logging.getLogger(__name__)


@dataclass
class Federation:
    config: ExperimentConfig
    task: Task
    clients: list[ClientState]
    runtime: ClientRuntime  # the one model: trains every client and evaluates the global state
    pool: TensorDataset  # the tokenised training examples of all clients; a client holds indices into it
    test_data: TensorDataset
    partition_summary: list[dict]
    trainable_names: list[str]
    initial_vector: np.ndarray  # the global trainable state before round 1
    tokenizer: PreTrainedTokenizerBase  # the model's: renders the prompts of generations
    test_owners: np.ndarray | None = None  # natural partitions: the client owning each held-out example's group
    test_chats: tuple[Chat, ...] = ()  # chat data: the held-out chats, in test_data's order (text data: none)
    label_names: tuple[str, ...] = ()  # the classes labels index (unlabelled data: none)
    validation_data: TensorDataset | None = None  # data.validation_fraction of each client's examples (tuning)
    client_held_out: tuple[np.ndarray, ...] = ()  # the same, per client: indices into the pool (federated evaluation)

    def held_out(self, client: int) -> TensorDataset:
        """Client ``client``'s own held-out records (federated evaluation), from the tokenised pool."""
        index = torch.from_numpy(self.client_held_out[client])
        return TensorDataset(*(t[index] for t in self.pool.tensors))

    @property
    def num_trainable(self) -> int:
        return self.initial_vector.size

    def shard(self, client: ClientState) -> TensorDataset:
        """The client's examples (a copy of its rows of the pool: small, and made only while it trains)."""
        index = torch.from_numpy(client.shard)
        return TensorDataset(*(t[index] for t in self.pool.tensors))


def split_train_test(n: int, test_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(n)
    n_test = max(1, round(n * test_fraction))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def hold_out_validation(shards: list[np.ndarray], fraction: float, rng: np.random.Generator
                        ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each client's shard less ``fraction`` of its examples (at least one, drawn at random), and each client's
    indices held out: together the validation set that tuning selects on, and each client's own held-out records
    for federated evaluation — carved from the clients' training data, never from the test set. A client left
    without a training example is refused."""
    kept, held = [], []
    for cid, shard in enumerate(shards):
        n_val = max(1, round(fraction * len(shard)))
        if n_val >= len(shard):
            raise ConfigError("data.validation_fraction", f"client {cid} holds {len(shard)} training example(s); "
                              f"holding out {n_val} for validation leaves it none: lower data.validation_fraction "
                              "or give the clients more data")
        chosen = rng.permutation(len(shard))[:n_val]
        mask = np.zeros(len(shard), dtype=bool)
        mask[chosen] = True
        kept.append(shard[~mask])
        held.append(np.sort(shard[mask]))
    return kept, held


def cap_client_examples(shards: list[np.ndarray], cap: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Each shard cut to at most ``cap`` examples drawn at random (``partition.max_client_examples``)."""
    return [np.sort(rng.choice(shard, cap, replace=False)) if len(shard) > cap else shard for shard in shards]


def planned_steps(cfg: ExperimentConfig) -> int:
    """Steps a client takes if sampled in every round: the conservative horizon noise is calibrated for."""
    return cfg.training.rounds * cfg.training.local_steps


def noise_multiplier_for(cfg: ExperimentConfig, sample_rate: float) -> float | None:
    """The client's sigma: None without DP, the configured one, or calibrated to the target for its q."""
    pr = cfg.privacy
    if pr.mode is DpMode.OFF:
        return None
    if pr.mode is DpMode.FIXED_NOISE:
        # the accountant must be able to count this client's planned steps: find out now, not mid-run
        epsilon_of_history([(pr.noise_multiplier, sample_rate, planned_steps(cfg))], pr.delta, pr.accountant)
        return pr.noise_multiplier
    return _calibrated(pr.epsilon, pr.delta, sample_rate, planned_steps(cfg), pr.accountant)


_calibrated = functools.lru_cache(maxsize=256)(calibrate_noise)  # clients of equal q share one bisection


def dp_settings_for(cfg: ExperimentConfig) -> DpSettings | None:
    pr = cfg.privacy
    if pr.mode is DpMode.OFF:
        return None
    return DpSettings(max_grad_norm=pr.max_grad_norm, accountant=pr.accountant, clipping=pr.clipping)


def build_federation(cfg: ExperimentConfig, label_names: tuple[str, ...] | None = None) -> Federation:
    """The federation ``cfg`` describes. ``label_names``: the classes of the whole federation when ``cfg.data``
    is one node's own file, which may hold only some of them (labels then index these, as on the server)."""
    split_seed = cfg.seed if cfg.data.split_seed < 0 else cfg.data.split_seed
    rng = np.random.default_rng(derive_seed(split_seed, 0xDA7A))
    data = load_data(cfg.data)
    if label_names is not None:
        try:
            data = data.relabelled(label_names)
        except ValueError as err:
            raise ConfigError("data.label_column", f"{cfg.data.source}: {err}") from None
    if cfg.data.max_examples and len(data) > cfg.data.max_examples:
        data = data.subset(np.sort(rng.choice(len(data), cfg.data.max_examples, replace=False)))
    train_idx, test_idx = split_train_test(len(data), cfg.data.test_fraction, rng)
    pool, test = data.subset(train_idx), data.subset(test_idx)
    if cfg.data.eval_examples and len(test) > cfg.data.eval_examples:
        test = test.subset(np.sort(rng.choice(len(test), cfg.data.eval_examples, replace=False)))
    client_ids = tuple(c.id for c in cfg.data.clients)
    held_out = [i for i, cid in enumerate(client_ids) if cid not in set(pool.groups)]
    if held_out:
        i = held_out[0]
        raise ConfigError(f"data.clients[{i}].path", f"none of client {client_ids[i]!r}'s examples is left for "
                          f"training (data.test_fraction={cfg.data.test_fraction} held them out, or "
                          f"data.max_examples left them out): give it more examples")
    shards = partition(pool, cfg.partition, rng, client_ids)
    empty = [cid for cid, idx in enumerate(shards) if len(idx) == 0]
    if empty:
        raise ConfigError("partition.num_clients", f"{len(empty)} of {len(shards)} clients got no training example "
                                                   f"({len(pool)} in the pool); use fewer clients or more data")
    held_out: list[np.ndarray] = []
    if cfg.data.validation_fraction > 0:
        shards, held_out = hold_out_validation(shards, cfg.data.validation_fraction, rng)
    if cfg.partition.max_client_examples:
        shards = cap_client_examples(shards, cfg.partition.max_client_examples, rng)
    device = resolve_device(cfg.training.device)

    loaded = load_model(cfg.model, resolve_task(cfg.model, cfg.data), num_labels=max(1, len(data.label_names)),
                        random_init=cfg.model.regime is Regime.PRETRAIN, seed=derive_seed(cfg.seed, 0x30DE1))
    if data.chat:
        require_chat_template(loaded.tokenizer, cfg.model.source)
    if cfg.model.init_weights:
        load_initial_weights(loaded.model, cfg.model.init_weights)
    loaded.model.to(device)  # before get_peft_model (Opacus issue #820: else LoRA never updates under DP)
    explicit = explicit_inputs(loaded.model, cfg.model.regime)
    model = apply_regime(loaded.model, cfg.model, loaded.task, loaded.tokenizer_dir)
    check_before_training(model, cfg, loaded.max_positions)
    names = [n for n, _ in trainable_parameters(model)]
    runtime = ClientRuntime(model, loaded.task, cfg.training, dp_settings_for(cfg), cfg.seed, explicit)

    clients = []
    for cid, idx in enumerate(shards):
        sample_rate = poisson_sample_rate(len(idx), cfg.training.batch_size)
        clients.append(ClientState(cid, np.asarray(idx, dtype=np.int64), sample_rate,
                                   noise_multiplier_for(cfg, sample_rate)))
    owners = natural_owners(pool, shards, test.groups) if cfg.partition.scheme is Partition.NATURAL else None
    tokenized = tokenize(pool, loaded.tokenizer, cfg.data.max_length)
    validation = None if not held_out else TensorDataset(
        *(t[torch.from_numpy(np.sort(np.concatenate(held_out)))] for t in tokenized.tensors))
    return Federation(cfg, loaded.task, clients, runtime, tokenized,
                      tokenize(test, loaded.tokenizer, cfg.data.max_length), describe(pool, shards), names,
                      flatten(runtime.params), loaded.tokenizer, owners,
                      test_chats=test.examples if test.chat else (),  # type: ignore[arg-type]
                      label_names=data.label_names, validation_data=validation, client_held_out=tuple(held_out))
