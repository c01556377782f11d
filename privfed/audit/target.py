"""The audited client, prepared before round 1: its members and held-out non-members, its inserted secrets, its
canaries.

Members are drawn before training, each of the client's examples independently with probability ½; the others
never enter training and play the non-members, from the same distribution (examples with a copy elsewhere in the
pool train but are left out of the test). Secrets (causal language models) are appended to the training
pool and to the client's shard, each as often as asked. The client's sampling rate and noise multiplier are then
recomputed for its new shard size exactly as :func:`~privfed.federation.setup.build_federation` computes them, so
the accountant describes the client that actually trains.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import TensorDataset

from privfed.audit.canaries import MAX_CANARY_VALUES, CanaryDesign, CanaryInstrument
from privfed.audit.exposure import SecretFormat, draw_secrets
from privfed.audit.reconstruction import VectorLayout, embedding_tensor_name, head_bias_name
from privfed.audit.settings import AuditKind, AuditSettings, MechanismFault
from privfed.client.state import ClientState
from privfed.config import Clipping, Task
from privfed.data.records import TextDataset
from privfed.data.tokenize import tokenize
from privfed.errors import ConfigError
from privfed.federation.setup import Federation, noise_multiplier_for
from privfed.federation.vectors import derive_seed
from privfed.privacy.dpsgd import poisson_sample_rate


@dataclass
class AuditTarget:
    client: int
    members: np.ndarray  # pool indices of the members the membership test scores (all trained on)
    nonmembers: np.ndarray  # pool indices held out of training (their text occurs nowhere else in the pool)
    secrets: dict[int, int]  # secret number -> insertions (0: never inserted, the control)
    secret_format: SecretFormat
    canaries: CanaryDesign | None
    instrument: CanaryInstrument | None

    def member_data(self, fed: Federation) -> TensorDataset:
        return _rows(fed.pool, self.members)

    def nonmember_data(self, fed: Federation) -> TensorDataset:
        return _rows(fed.pool, self.nonmembers)


def _rows(data: TensorDataset, index: np.ndarray) -> TensorDataset:
    rows = torch.from_numpy(np.asarray(index, dtype=np.int64))
    return TensorDataset(*(t[rows] for t in data.tensors))


def prepare_target(fed: Federation, settings: AuditSettings) -> AuditTarget:
    """Split, insert and instrument ``settings.client`` of ``fed`` in place; returns what the audits need."""
    cfg = fed.config
    if not 0 <= settings.client < len(fed.clients):
        raise ConfigError("--client", f"the federation has clients 0..{len(fed.clients) - 1}, got {settings.client}")
    rng = np.random.default_rng(derive_seed(cfg.seed, settings.seed, 0xA0D17))
    client = fed.clients[settings.client]
    _check_one_run(fed, settings, client)
    members, nonmembers, duplicated = _membership_split(fed, client, settings, rng)
    fmt = SecretFormat(digits=settings.secret_digits)
    secrets: dict[int, int] = {}
    trained = np.concatenate([members, duplicated]).astype(np.int64)
    if settings.wants(AuditKind.EXPOSURE) and fed.task is Task.CAUSAL_LM and not fed.test_chats:
        counts = [n for n in settings.secret_insertions for _ in range(settings.secrets_per_count)]
        numbers = draw_secrets(fmt, 2 * len(counts), rng)
        secrets = {**dict(zip(numbers[:len(counts)], counts)), **{n: 0 for n in numbers[len(counts):]}}
        trained = np.concatenate([trained, _insert(fed, fmt, secrets)])
    q = poisson_sample_rate(len(trained), cfg.training.batch_size)
    fed.clients[client.id] = ClientState(client.id, np.sort(trained), q, noise_multiplier_for(cfg, q))
    _check_canary_memory(fed, settings, q)
    canaries = instrument = None
    if settings.wants(AuditKind.ONE_RUN):
        canaries = CanaryDesign.draw(settings.canaries, fed.num_trainable, rng, _read_by_reconstruction(fed, settings))
        instrument = CanaryInstrument(canaries, fed.runtime.params, cfg.privacy.max_grad_norm,
                                      settings.canary_norm, settings.fault, derive_seed(cfg.seed, settings.seed))
        fed.runtime.instruments[client.id] = instrument
    return AuditTarget(client.id, members, nonmembers, secrets, fmt, canaries, instrument)


def _membership_split(fed: Federation, client: ClientState, settings: AuditSettings,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(members, non-members, duplicated): each of the client's examples whose text occurs nowhere else in the pool
    is a member with probability ½ (else it is held out of training); examples with a copy elsewhere — in any
    client's data — train but are left out of the membership test, since a copy would make a held-out example a
    member in all but name. Without the membership audit every example is a member."""
    if not settings.wants(AuditKind.MEMBERSHIP):
        return client.shard.copy(), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    ids = fed.pool.tensors[0].numpy()
    _, inverse, counts = np.unique(ids, axis=0, return_inverse=True, return_counts=True)
    unique = counts[inverse.reshape(-1)][client.shard] == 1
    candidates, duplicated = client.shard[unique], client.shard[~unique]
    inside = rng.random(candidates.size) < 0.5
    members, nonmembers = np.sort(candidates[inside]), np.sort(candidates[~inside])
    if min(members.size, nonmembers.size) < 2:
        raise ConfigError("--client", f"client {client.id} holds {candidates.size} examples with unique text; "
                                      "membership inference needs a few members and a few held out: audit a larger "
                                      "client or drop membership from --audits")
    return members, nonmembers, np.sort(duplicated)


def _check_one_run(fed: Federation, settings: AuditSettings, client: ClientState) -> None:
    """Refuse, before anything is written, settings the one-run audit cannot run with."""
    cfg = fed.config
    if settings.fault is not MechanismFault.NONE and client.noise_multiplier is None:
        raise ConfigError("--fault", "a mechanism fault needs DP-SGD to break: the run has privacy.mode off")
    if settings.wants(AuditKind.ONE_RUN) and cfg.privacy.clipping is Clipping.GHOST and client.noise_multiplier:
        raise ConfigError("privacy.clipping", "the canary audit appends per-sample gradients, which ghost clipping "
                                              "never materialises: audit with per_sample clipping")
    if settings.fault is MechanismFault.SAMPLING_4X and client.sample_rate > 0.25:
        raise ConfigError("--fault", f"sampling_4x needs q <= 1/4 to sample at 4q; client {client.id} samples at "
                                     f"q = {client.sample_rate:.3g}: lower training.batch_size")


def _check_canary_memory(fed: Federation, settings: AuditSettings, q: float) -> None:
    """Canary rows of one step (a generous estimate) times the trainable values must fit the instrument's limit."""
    if not settings.wants(AuditKind.ONE_RUN):
        return
    rate = min(1.0, q * (4 if settings.fault is MechanismFault.SAMPLING_4X else 1))
    expected = settings.canaries / 2 * rate
    rows = expected + 4 * expected ** 0.5 + 1
    if rows * fed.num_trainable > MAX_CANARY_VALUES:
        raise ConfigError("--canaries", f"about {rows:.0f} canaries per step over {fed.num_trainable:,} trainable "
                                        "values would not fit in memory: use fewer canaries or a smaller regime "
                                        "(LoRA), or drop one_run from --audits")


def _read_by_reconstruction(fed: Federation, settings: AuditSettings) -> tuple[slice, ...]:
    """The input embedding and the head's bias, when the reconstruction audit reads them."""
    if not settings.wants(AuditKind.RECONSTRUCTION):
        return ()
    layout = VectorLayout.from_parameters(list(zip(fed.trainable_names, fed.runtime.params)))
    names = (embedding_tensor_name(layout), head_bias_name(layout))
    return tuple(layout.slice_of(name) for name in names if name is not None)


def _insert(fed: Federation, fmt: SecretFormat, secrets: dict[int, int]) -> np.ndarray:
    """Append each inserted secret's copies to the pool; returns their pool indices."""
    texts = [fmt.render(n) for n, copies in secrets.items() for _ in range(copies)]
    longest = max(len(fed.tokenizer(fmt.render(n))["input_ids"]) for n in secrets)
    if longest > fed.config.data.max_length:
        raise ConfigError("data.max_length", f"the secrets take {longest} tokens, longer than data.max_length = "
                                             f"{fed.config.data.max_length}: raise it or use fewer --secret-digits")
    rows = tokenize(TextDataset(tuple(texts), None, ("audit-secret",) * len(texts)), fed.tokenizer,
                    fed.config.data.max_length)
    start = len(fed.pool)
    fed.pool = TensorDataset(*(torch.cat([a, b]) for a, b in zip(fed.pool.tensors, rows.tensors)))
    return np.arange(start, start + len(texts), dtype=np.int64)
