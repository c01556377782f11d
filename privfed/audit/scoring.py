"""Scoring an audited run: the rows of an :class:`~privfed.audit.report.AuditReport`, each with a verdict against
the accountant's ε for the audited client, from what the :class:`~privfed.audit.observer.AuditObserver` saw and the
final model; and which configs the audits can score. The run itself is driven by :mod:`privfed.runners.audit`."""
from __future__ import annotations

import math

import numpy as np

from privfed.audit import exposure as exposure_audit
from privfed.audit import membership, reconstruction
from privfed.audit.canaries import best_bound
from privfed.audit.observer import AuditObserver, Observation
from privfed.audit.report import AuditRow, Verdict
from privfed.audit.settings import AuditSettings
from privfed.audit.target import AuditTarget
from privfed.config import Aggregation, AttackKind, DpMode, ExperimentConfig, Task
from privfed.errors import ConfigError
from privfed.federation.setup import Federation
from privfed.federation.vectors import derive_seed

RECORD_LEVEL = ("DP-SGD protects each record; a client's vocabulary and label mix are properties of all its records "
                "together, which record-level DP does not hide: only the sum over many clients or user-level DP does")
MEMBERSHIP_NOTE = ("membership: members drawn with probability ½ among the client's examples with unique text, the "
                   "rest held out; TPR interval Clopper–Pearson; 'DP allows' is min(e^ε·FPR + δ, 1 − e^−ε(1 − δ − "
                   "FPR)) at the FPR's upper confidence limit, shown beside the TPR, not tested: the scores of one "
                   "model are not independent trials (the one-run audit is the test)")
F_DP_NOTE = ("f-DP bound (Mahloujifar et al.): falsifies the Gaussian trade-off curve with this (ε, δ); reported "
             "beside Steinke et al.'s bound, which alone decides the verdict (it holds for any (ε, δ)-DP mechanism)")


def check_auditable(cfg: ExperimentConfig) -> None:
    """Refuse (ConfigError) a config the audits cannot score, before anything runs."""
    if cfg.attack.kind is not AttackKind.NONE:
        raise ConfigError("attack.kind", "an audit measures what honest clients leak; run attacks with privfed run "
                                         "or privfed attack-grid")
    if cfg.defence.groups:
        raise ConfigError("defence.groups", "the audits read one sum per round; grouped aggregation shows the server "
                                            "smaller sums, which they do not score yet")


def claimed_epsilon(cfg: ExperimentConfig, results: dict, client: int) -> float:
    if cfg.privacy.mode is DpMode.OFF:
        return math.inf
    return float(next(c["epsilon"] for c in results["privacy"]["clients"] if c["client"] == client))


def _observations(cfg: ExperimentConfig, observer: AuditObserver, client: int) -> list[tuple[str, Observation]]:
    """The client's own update; the server's reading of its upload (when the back-end hides it); the sum."""
    seen = [(f"client {client}'s update (a plain upload)", observer.upload)]
    if cfg.aggregation.method is not Aggregation.PLAIN:
        seen.append((f"client {client}'s upload as the server reads it ({cfg.aggregation.method.value})",
                     observer.server_view))
    seen.append(("the aggregate (what every back-end reveals)", observer.aggregate))
    return seen


def one_run_rows(cfg: ExperimentConfig, settings: AuditSettings, target: AuditTarget, observer: AuditObserver,
                  claimed: float) -> list[AuditRow]:
    design = target.canaries
    assert design is not None
    rows = []
    observations = _observations(cfg, observer, target.client)
    # the verdict is one test per observation: Bonferroni over them keeps the run's false alarms within 1 - confidence
    confidence = 1 - (1 - settings.confidence) / len(observations)
    for observed, seen in observations:
        label = f"{observed}, {seen.rounds} round(s)"
        rounds = seen.at_canaries()
        if rounds is None:
            why = "ciphertexts: nothing the server can score" if not seen.readable else "the client never trained"
            rows.append(AuditRow("one-run ε lower bound", label, "ε_lb (Steinke)", math.nan, None, claimed,
                                 claimed, Verdict.NOT_APPLICABLE, why))
            continue
        bound, kind = best_bound(rounds, design.included, cfg.privacy.delta, confidence)
        verdict = Verdict.VIOLATION if bound.epsilon_steinke > claimed else Verdict.CONSISTENT
        note = (f"m = {design.count} Dirac canaries ({int(design.included.sum())} included); scores: per-round "
                f"values standardised, summed or maximised over rounds; guesses: the top scores at a fixed grid of "
                f"counts; Bonferroni over scores, counts and the {len(observations)} observations; "
                f"δ = {cfg.privacy.delta:g}")
        rows.append(AuditRow("one-run ε lower bound", label,
                             f"ε_lb (Steinke), {bound.correct}/{bound.guesses} guesses right ({kind.value} score)",
                             bound.epsilon_steinke, None, claimed, claimed, verdict, note))
        rows.append(AuditRow("one-run ε lower bound", label, "ε_lb (f-DP, Gaussian)", bound.epsilon_fdp, None,
                             claimed, claimed, Verdict.MEASURED, F_DP_NOTE))
    return rows


def membership_rows(fed: Federation, target: AuditTarget, final: np.ndarray, claimed: float,
                     confidence: float) -> list[AuditRow]:
    members, nonmembers = target.member_data(fed), target.nonmember_data(fed)
    delta = fed.config.privacy.delta
    rows = []
    for label, vector in (("the final model", final), ("the initial model (null control: never saw them)",
                                                        fed.initial_vector)):
        fed.runtime.load(vector)
        scored_in = _scores(fed, members)
        scored_out = _scores(fed, nonmembers)
        for kind in membership.scores_for(fed.task):
            metrics = membership.attack_metrics(kind, scored_in[kind], scored_out[kind], epsilon=claimed,
                                                delta=delta, confidence=confidence)
            observed = f"{label}, {metrics.members} members vs {metrics.nonmembers} held out"
            rows.append(AuditRow("membership inference", observed, f"AUC ({kind.value})", metrics.auc,
                                 metrics.auc_interval, claimed, None, Verdict.MEASURED))
            if vector is fed.initial_vector:
                continue  # the control needs only its AUC
            for point in metrics.tpr_at:
                rows.append(AuditRow(
                    "membership inference", observed,
                    f"TPR at {point.target_fpr:.1%} FPR ({kind.value}; achieved FPR {point.fpr:.2%})",
                    point.tpr.value, (point.tpr.low, point.tpr.high), claimed, point.dp_bound, Verdict.MEASURED,
                    MEMBERSHIP_NOTE))
    fed.runtime.load(final)
    return rows


def _texts(fed: Federation, data) -> list[str]:
    return fed.tokenizer.batch_decode(data.tensors[0], skip_special_tokens=True)


def _scores(fed: Federation, data) -> dict:
    texts = _texts(fed, data) if fed.task is Task.CAUSAL_LM else None
    return membership.example_scores(fed.runtime.model, data, fed.task, fed.runtime.explicit, texts=texts)


def exposure_rows(fed: Federation, target: AuditTarget, final: np.ndarray, claimed: float,
                   settings: AuditSettings) -> list[AuditRow]:
    if not target.secrets:
        why = ("exposure needs a causal language model trained on texts" if fed.task is not Task.CAUSAL_LM or
               fed.test_chats else "no secrets were inserted")
        return [AuditRow("canary exposure", "the final model", "exposure (bits)", math.nan, None, claimed, None,
                         Verdict.NOT_APPLICABLE, why)]
    fed.runtime.load(final)
    rng = np.random.default_rng(derive_seed(fed.config.seed, settings.seed, 0xE1905))
    found = exposure_audit.measure_exposure(fed.runtime.model, fed.tokenizer, target.secret_format, target.secrets,
                                            fed.config.data.max_length, fed.runtime.explicit, rng=rng)
    rows = []
    space = target.secret_format.space_size()
    for copies in sorted({e.insertions for e in found}, reverse=True):
        group = [e.exposure for e in found if e.insertions == copies]
        method = next(e.method for e in found if e.insertions == copies)
        what = "never inserted (control)" if copies == 0 else f"inserted {copies}×"
        rows.append(AuditRow("canary exposure", f"the final model, {len(group)} secret(s) {what}",
                             "exposure (bits, mean)", float(np.mean(group)), (min(group), max(group)), claimed,
                             None, Verdict.MEASURED,
                             f"exposure = log2|R| − log2 rank among |R| = {space:,} candidates "
                             f"(max {math.log2(space):.1f} bits; a random guess ≈ 1.44; "
                             f"{method.value}); interval: lowest and highest of the secrets"))
    return rows


def reconstruction_rows(fed: Federation, target: AuditTarget, observer: AuditObserver,
                         claimed: float) -> list[AuditRow]:
    params = list(zip(fed.trainable_names, fed.runtime.params))
    layout = reconstruction.VectorLayout.from_parameters(params)
    trained = fed.shard(fed.clients[target.client])
    rows = []
    seen = _observations(fed.config, observer, target.client)
    if reconstruction.embedding_tensor_name(layout) is not None:
        # a causal LM's last token is never an input before a target, so its row gets no gradient
        scope = (reconstruction.TokenScope.BEFORE_TARGET if fed.task is Task.CAUSAL_LM
                 else reconstruction.TokenScope.ATTENDED)
        actual = reconstruction.tokens_in(trained, scope)
        for observed, obs in seen:
            if obs.first is None and obs.readable:
                continue  # the client never trained
            found = reconstruction.token_set_attack(obs.first, layout, actual)
            rows.append(AuditRow("reconstruction", f"{observed}, first round",
                                 f"token-set F1 (guessing every token: {found.guess_f1:.3f})", found.f1, None,
                                 claimed, None, Verdict.MEASURED if found.readable else Verdict.NOT_APPLICABLE,
                                 RECORD_LEVEL))
    if fed.task is Task.CLASSIFICATION and reconstruction.head_bias_name(layout) is not None:
        actual_labels = reconstruction.labels_histogram(trained, max(1, len(fed.label_names)))
        for observed, obs in seen:
            if obs.first is None and obs.readable:
                continue
            found = reconstruction.label_histogram_attack(obs.first, layout, actual_labels)
            rows.append(AuditRow("reconstruction", f"{observed}, first round",
                                 f"label-mix TV distance (uniform guess: {found.uniform_tv:.3f})", found.tv_distance,
                                 None, claimed, None, Verdict.MEASURED if found.readable else Verdict.NOT_APPLICABLE,
                                 RECORD_LEVEL))
    if not rows:
        rows.append(AuditRow("reconstruction", "—", "—", math.nan, None, claimed, None, Verdict.NOT_APPLICABLE,
                             "the trainable tensors hold neither the input embedding nor a classification head"))
    return rows
