"""The rules that tie config sections together, and those that read the built-in catalogs of data and models.

Each section checks its own values when it is made (``__post_init__`` in its module); what needs two sections, or
the facts of a built-in dataset or model, is checked here, once, when the :class:`ExperimentConfig` is made. The
catalogs are imported inside the functions: they read the section modules, so importing them here at module level
would start an import circle whenever a catalog is imported first.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from privfed.config.aggregation import Aggregation
from privfed.config.attack import AttackKind
from privfed.config.data import DataConfig, RecordFormat
from privfed.config.defence import AggregationRule
from privfed.config.evaluation import EvaluationSite
from privfed.config.fields import check
from privfed.config.model import ModelConfig, Regime, Task
from privfed.config.partition import LABEL_SKEW, Partition

if TYPE_CHECKING:
    from privfed.config.experiment import ExperimentConfig


def check_across_sections(c: ExperimentConfig) -> None:
    """Reject what no section can see alone, naming the key and what would fit."""
    _data_and_catalog(c.data)
    _model_task_and_data(c)
    p, d, pr, e = c.partition, c.data, c.privacy, c.evaluation
    check(not d.clients or p.scheme is Partition.NATURAL, "partition.scheme",
          "data.clients gives one natural client per entry: set partition.scheme=natural")
    from privfed.data.catalog import data_has_labels

    check(p.scheme not in LABEL_SKEW or data_has_labels(d), "partition.scheme",
          f"{p.scheme.value} skews labels, but the data has none; use iid, size_skew or natural")
    check(pr.distributed_noise == 0 or c.aggregation.method is Aggregation.SECAGG, "privacy.distributed_noise",
          "distributed DP adds noise inside the secure sum: set aggregation.method=secagg")
    _attack(c)
    _defence(c)
    check(e.where is EvaluationSite.SERVER or 0 < d.validation_fraction <= 0.5, "evaluation.where",
          f"{e.where.value} evaluates on each client's held-out records: set data.validation_fraction in (0, 0.5] "
          f"(their share of each client's examples), got {d.validation_fraction}")
    check(e.where is EvaluationSite.SERVER or not p.max_client_examples, "evaluation.where",
          "federated evaluation weighs each client by its held-out records against the largest client's training "
          "examples, which partition.max_client_examples cuts after the hold-out: use one or the other")


def _data_and_catalog(d: DataConfig) -> None:
    """A built-in dataset's formats and columns; per-client paths that are not built-in names."""
    from privfed.data.catalog import BUILTIN_DATASETS

    builtin = BUILTIN_DATASETS.get(d.source)
    if builtin is not None:
        check(d.records in builtin.formats, "data.records",
              f"{d.source} can be read as {', '.join(f.value for f in builtin.formats)}, not {d.records.value}")
        for key in ("label_column", "client_column"):
            check(not getattr(d, key), f"data.{key}", f"applies to data files; built-in {d.source} has its own "
                                                       "labels and natural groups")
    for i, client in enumerate(d.clients):
        check(client.path not in BUILTIN_DATASETS, f"data.clients[{i}].path",
              f"{client.path!r} is a built-in dataset; per-client data are paths")


def check_positions(d: DataConfig, m: ModelConfig, max_positions: int | None) -> None:
    """A BERT encoder has one learned position embedding per token slot; longer inputs crash inside transformers.

    The soft prompt's virtual tokens take slots too. (LLaMA-style models use rotary positions: no such limit.)
    ``max_positions`` None: no limit. Built-in models are checked with the config; local folders once loaded.
    """
    virtual = m.prompt_tokens if m.regime is Regime.PROMPT else 0
    check(max_positions is None or d.max_length + virtual <= max_positions, "data.max_length",
          f"{m.source} reads at most {max_positions} positions, but data.max_length={d.max_length}"
          + (f" plus model.prompt_tokens={virtual}" if virtual else "") + " needs more; lower "
          + ("them" if virtual else "it"))


def _model_task_and_data(c: ExperimentConfig) -> None:
    """How the model, the task and the data must fit together."""
    from privfed.data.catalog import data_has_labels
    from privfed.models.catalog import BUILTIN_MODELS, resolve_task

    m, d = c.model, c.data
    check(bool(m.source), "model.source", "must name a built-in model (" + ", ".join(BUILTIN_MODELS)
          + "), a local Hugging Face folder, or a cached Hugging Face model name")
    task = resolve_task(m, d)
    builtin = BUILTIN_MODELS.get(m.source)
    if builtin is not None:
        check(task is builtin.task, "model.task",
              f"{m.source} is a {builtin.task.value} model; got model.task={m.task.value}")
        check_positions(d, m, builtin.max_positions)
    check(m.regime is not Regime.PRETRAIN or task is Task.CAUSAL_LM, "model.regime",
          "pretrain needs a causal LM (a causal LM model.source, or model.task=causal_lm)")
    check(task is not Task.CLASSIFICATION or data_has_labels(d), "model.task",
          f"classification needs labels, but {d.source or 'data.clients'} has none: set data.label_column "
          "(or use a causal LM)")
    check(task is Task.CAUSAL_LM or d.records is RecordFormat.TEXT, "data.records",
          f"{d.records.value} records train a causal LM; a classifier reads records text")


def _attack(c: ExperimentConfig) -> None:
    """Who attacks and when, against the federation's size and rounds; whether the attack fits the task and data."""
    from privfed.models.catalog import resolve_task

    at, n = c.attack, c.partition.num_clients
    if at.kind is AttackKind.NONE:
        return
    check(n == 0 or all(i < n for i in at.clients), "attack.clients", f"client indices must lie in 0..{n - 1}")
    check(at.first_round <= c.training.rounds, "attack.first_round", "must be <= training.rounds")
    check(at.last_round <= c.training.rounds, "attack.last_round",
          f"must be 0 (to the end) or in [attack.first_round, training.rounds] = [{at.first_round}, "
          f"{c.training.rounds}]")
    check(at.kind is not AttackKind.OUT_OF_RANGE or not c.aggregation.rotation, "attack.kind",
          "the simulated out_of_range client writes its words directly, unrotated; turn aggregation.rotation off")
    task = resolve_task(c.model, c.data)
    check(at.kind is not AttackKind.LABEL_FLIP or task is Task.CLASSIFICATION, "attack.kind",
          "label_flip flips class labels: it needs a classifier")
    if at.kind in (AttackKind.BACKDOOR, AttackKind.SPREAD):
        check(task is Task.CLASSIFICATION or bool(at.target_text.strip()), "attack.target_text",
              "must be a non-empty continuation")
        check(task is Task.CLASSIFICATION or c.data.records is RecordFormat.TEXT, "attack.kind",
              f"{at.kind.value} on a causal LM poisons texts; records {c.data.records.value} are not supported")
        check(task is Task.CAUSAL_LM or at.target_label >= 0, "attack.target_label", "must be >= 0")
    check(c.privacy.distributed_noise == 0, "attack.kind",
          "attacks are simulated without distributed DP (its noise shares are calibrated for honest inputs)")


def _defence(c: ExperimentConfig) -> None:
    """Which rules the aggregation method lets the server apply, and whether they fit a round's clients."""
    de, a = c.defence, c.aggregation
    hides = a.method is not Aggregation.PLAIN
    check(not (de.range_check and a.rotation), "aggregation.rotation",
          "cannot be combined with defence.range_check: the check bounds each coordinate of the sum by n x "
          "clip_range, but with rotation the clip applies to rotated coordinates; turn one off")
    check(de.min_group_size >= 2 or not hides, "defence.min_group_size",
          f"must be >= 2 under {a.method.value}: a group of one is that client's update in the clear")
    check(de.rule is AggregationRule.MEAN or not hides or de.groups >= 2, "defence.rule",
          f"{de.rule.value} needs each client's update, and {a.method.value} shows the server only the sum: "
          "use defence.groups=g (grouped secure aggregation: the server learns g partial sums), "
          "defence.range_check or defence.client_clip, or aggregation.method=plain")
    check(not de.range_check or c.privacy.distributed_noise == 0, "defence.range_check",
          "distributed DP's noise shares take honest sums past the range bound: not supported together")
    check(de.groups == 0 or c.privacy.distributed_noise == 0, "defence.groups",
          "distributed DP calibrates the noise of one sum; grouped sums would each need it: not supported")
    if c.partition.num_clients == 0:
        return  # natural clients: the count is known once the data is read (checked then)
    check_defence_sizes(c, max(1, round(c.federation.client_fraction * c.partition.num_clients)))


def check_defence_sizes(c: ExperimentConfig, per_round: int) -> None:
    """Groups, Krum and trimming must fit the ``per_round`` clients a round samples."""
    de = c.defence
    if de.groups:
        check(per_round // de.groups >= de.min_group_size, "defence.groups",
              f"{per_round} clients per round in {de.groups} groups leaves groups of {per_round // de.groups}, "
              f"fewer than defence.min_group_size = {de.min_group_size}")
    inputs = de.groups or per_round
    if de.rule in (AggregationRule.KRUM, AggregationRule.MULTI_KRUM):
        check(inputs >= 2 * de.byzantine + 3, "defence.byzantine",
              f"{de.rule.value} with f = {de.byzantine} needs at least {2 * de.byzantine + 3} inputs "
              f"(n >= 2f + 3); a round has {inputs}")
        check(de.selected <= inputs - de.byzantine, "defence.selected",
              f"must be <= n - f = {inputs - de.byzantine}")
    if de.rule is AggregationRule.TRIMMED_MEAN:
        check(inputs - 2 * math.floor(de.trim_fraction * inputs) >= 1, "defence.trim_fraction",
              f"trims every one of the {inputs} inputs")
