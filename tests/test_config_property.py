"""Random configs from the documented choices either run a tiny round or fail as one ``privfed: config error`` line.

Each example draws a value for every key from its valid choices (every enum member, numbers at and inside their
boundaries), plus now and then one value that validation must refuse, and runs ``privfed run`` in-process on a
tiny model (1 round, 1 local step, at most 120 examples). Exit 0, or exit 2 with exactly one stderr line: never a
traceback from Opacus, peft or transformers, and after an error the --out directory does not exist.
"""
from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from privfed import assets
from privfed.cli import main
from privfed.config import load_config
from privfed.errors import ConfigError

CAUSAL_DATASETS = ["chatterbot"] + (["fortunes"] if assets.FORTUNES_DIR.is_dir() else [])  # fortunes: apt, optional

# Every key, with its valid choices. Values that validation passes but a run refuses (too many clients for the
# data, lora_layers beyond a 2-layer model, an epsilon target out of reach) are deliberately among them.
COMMON = {
    "data.max_length": [16, 24, 32],
    "data.test_fraction": [0.01, 0.2, 0.2, 0.2, 0.5, 0.99],
    "data.eval_examples": [0, 1, 16],
    "data.max_examples": [1, 60, 120, 120, 120, 120],
    "partition.num_clients": [1, 2, 3, 3, 3, 40],
    "partition.alpha": [0.01, 1.0, 100.0],
    "partition.min_examples": [1, 4],
    "model.lora_rank": [1, 4],
    "model.lora_alpha": [0.5, 16],
    "model.lora_layers": ["[]", "[0]", "[1]", "[0, 1, 1]", "[2, 3, 4, 5]"],
    "model.lora_top_layers": [0, 0, 0, 1, 4],  # with non-empty lora_layers: refused (one or the other)
    "model.prompt_tokens": [1, 4],
    "privacy.mode": ["off", "fixed_noise", "target_epsilon"],
    "privacy.epsilon": [0.01, 1.0, 8.0, 100.0, 1e4],
    "privacy.delta": [1e-12, 1e-5, 0.5],
    "privacy.noise_multiplier": [0.0, 0.01, 0.1, 1.0, 50.0],
    "privacy.max_grad_norm": [1e-6, 1.0, 1e3],
    "privacy.max_epsilon": [0.01, 5.0, "inf"],
    "privacy.accountant": ["rdp", "rdp", "rdp", "prv"],  # prv takes seconds per client: drawn a quarter of the time
    "privacy.clipping": ["per_sample", "ghost"],
    "privacy.update_clip": [0.05, 0.1],
    "training.batch_size": [1, 4, 64],
    "training.optimizer": ["sgd", "adam"],
    "training.lr": [1e-4, 0.05, 10.0],
    "training.prox_mu": [0.0, 0.1],
    "training.physical_batch_size": [0, 2],
    "training.device": ["auto", "cpu"],
    "federation.client_fraction": [0.01, 0.5, 1.0],
    "federation.strategy": ["fedavg", "fedadam", "fedyogi"],
    "federation.server_lr": [0.5, 1.0],
    "federation.server_beta1": [0.0, 0.9],
    "federation.server_beta2": [0.0, 0.99],
    "federation.server_tau": [1e-9, 1e-3],
    # paillier is left out: a 2048-bit key pair takes tens of seconds to generate on 2 cores, far over this test's
    # budget; tests/test_paillier_runs.py runs it end to end with a prepared key.
    "aggregation.method": ["plain", "secagg"],
    "aggregation.neighbours": [0, 2],
    "aggregation.threshold": [0.51, 0.6, 1.0],
    "aggregation.clip_range": [1e-3, 1.0],
    "aggregation.value_bits": [2, 20, 53],
    "aggregation.dropout_fraction": [0.0, 0.5, 0.99],
    "aggregation.dropout_stage": ["advertise_keys", "share_keys", "masked_input", "unmasking"],
    "aggregation.workers": [0, 1],
    "aggregation.key_bits": [2048, 3072, 4096],
}

# One key at a time gets a value that validation must refuse, at or just past its boundary.
INVALID = [
    "data.max_length=7", "data.max_length=2049", "data.test_fraction=0", "data.test_fraction=1",
    "data.eval_examples=-1", "data.max_examples=-1", "data.languages=[]", "data.source=imdb",
    "partition.scheme=random", "partition.num_clients=-1", "partition.alpha=0", "partition.min_examples=0",
    "model.source=gpt2", "model.regime=adapter", "model.lora_rank=0", "model.lora_alpha=0", "model.lora_layers=[-1]",
    "model.prompt_tokens=0", "privacy.mode=on", "privacy.epsilon=0", "privacy.epsilon=nan", "privacy.delta=0",
    "privacy.delta=1", "privacy.noise_multiplier=-1", "privacy.max_grad_norm=0", "privacy.max_epsilon=0",
    "privacy.accountant=gdp", "privacy.clipping=flat", "privacy.distributed_noise=-1", "privacy.update_clip=0",
    "training.rounds=0", "training.local_steps=0", "training.batch_size=0", "training.optimizer=lbfgs",
    "training.lr=0", "training.prox_mu=-1", "training.physical_batch_size=-1", "training.device=gpu", "federation.client_fraction=0", "federation.client_fraction=1.01",
    "federation.strategy=fedprox", "federation.server_lr=0", "federation.server_beta1=1",
    "federation.server_beta2=1", "federation.server_tau=0", "aggregation.method=he", "aggregation.neighbours=3",
    "aggregation.threshold=0.5", "aggregation.clip_range=inf", "aggregation.value_bits=1", "aggregation.value_bits=54",
    "aggregation.dropout_fraction=1", "aggregation.dropout_stage=never", "aggregation.key_bits=1024",
    "aggregation.workers=-1", "aggregation.consistency_check=maybe", "aggregation.key_file=k.pem", "seed=x", "name=a/b",
]


BERT_ONLY_INVALID = ["data.max_length=513"]  # a BERT has 512 positions; the LLaMA sources have no such limit


@st.composite
def overrides(draw) -> tuple[list[str], str | None]:
    """``--set`` arguments for one tiny run: a model and matching data, every other key drawn from COMMON."""
    source = draw(st.sampled_from(["tiny_llama", "tiny_bert"]))
    if source == "tiny_bert":  # a classifier: bbc_news, no pre-training (validation's rules, tested elsewhere)
        data = ["data.source=bbc_news", "partition.scheme=" + draw(st.sampled_from(["iid", "dirichlet", "natural"])),
                "model.regime=" + draw(st.sampled_from(["full", "lora", "prompt"]))]
    else:
        data = ["data.source=" + draw(st.sampled_from(CAUSAL_DATASETS)),
                "partition.scheme=" + draw(st.sampled_from(["iid", "natural"])),
                "data.languages=" + draw(st.sampled_from(["[english]", "[english]", "[english, spanish]"])),
                "model.regime=" + draw(st.sampled_from(["pretrain", "full", "lora", "prompt"]))]
    chosen = [f"{key}={draw(st.sampled_from(values))}" for key, values in COMMON.items()]
    if "aggregation.method=secagg" in chosen:  # the consistency check and distributed DP apply to secagg only
        chosen.append(f"aggregation.consistency_check={str(draw(st.booleans())).lower()}")
        chosen.append(f"privacy.distributed_noise={draw(st.sampled_from([0.0, 0.5]))}")
    invalid = INVALID + (BERT_ONLY_INVALID if source == "tiny_bert" else [])
    bad = draw(st.sampled_from(invalid)) if draw(st.integers(0, 3)) == 0 else None  # one run in 4 gets one
    valid = ["model.source=" + source, *data, *chosen, "training.rounds=1", "training.local_steps=1"]
    return valid, bad


_runs = itertools.count()


def _loads(overrides: list[str]) -> bool:
    try:
        load_config(overrides=overrides)
    except ConfigError:
        return False
    return True


@settings(max_examples=16, deadline=None, derandomize=True, print_blob=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(drawn=overrides())
def test_random_config_runs_or_is_one_config_error_line(drawn, tmp_path, capsys):
    valid, bad = drawn
    if bad is not None and _loads(valid):  # the invalid value must be what is refused, and by name
        with pytest.raises(ConfigError) as refused:
            load_config(overrides=[*valid, bad])
        assert refused.value.key.split("[")[0] == bad.split("=")[0]
    out = tmp_path / f"run{next(_runs)}"
    capsys.readouterr()
    args = ["run", "--out", str(out), "--no-progress"]
    for item in [*valid, *([bad] if bad else [])]:
        args += ["--set", item]
    code = main(args)  # batch sizes down to 1 draw empty Poisson batches: they must train, not crash
    err = capsys.readouterr().err
    event("ran" if code == 0 else f"refused: {err.split(':')[2].strip()}")  # --hypothesis-show-statistics
    if code == 0:
        assert bad is None, f"{bad} was accepted"
        assert (out / "results.json").is_file()
        return
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("privfed: config error:"), err
    assert not out.exists()
