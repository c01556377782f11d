"""Each regime trains (held-out loss falls, without DP, on tiny random models) and moves only its own tensors."""
import pytest

import privfed


@pytest.mark.parametrize("fixture, source, regime, lr", [
    ("tiny_causal", "tiny_llama", "pretrain", 0.01),
    ("tiny_causal", "tiny_llama", "full", 0.01),
    ("tiny_causal", "tiny_llama", "lora", 0.05),
    ("tiny_causal", "tiny_llama", "prompt", 0.05),
    ("tiny_classifier", "tiny_bert", "full", 0.01),
    ("tiny_classifier", "minilm", "lora", 0.005),
    # adapters and soft prompts steer a pretrained encoder; a frozen random one has nothing to steer
    ("tiny_classifier", "minilm", "prompt", 0.05),
])
def test_regime_trains(request, tmp_path, fixture, source, regime, lr):
    cfg = request.getfixturevalue(fixture)(f"model.regime={regime}", f"model.source={source}", f"training.lr={lr}",
                                           "training.rounds=3", "partition.scheme=iid")
    res = privfed.run(cfg, tmp_path / regime, progress=False)
    assert res["rounds"][-1]["eval_loss"] < res["initial"]["eval_loss"] - 1e-3
    names = res["model"]["trainable_names"]
    if regime == "lora":
        assert all("lora_" in n or "classifier" in n for n in names)
    if regime == "prompt":
        assert all("prompt_encoder" in n or "classifier" in n for n in names)
    full_size = sum(1 for _ in names) if regime in ("full", "pretrain") else None
    assert full_size is None or full_size > 10
    assert res["rounds"][0]["bytes_up"] == res["model"]["bytes_per_transfer"] * len(res["partition"]) + \
        4 * len(res["partition"])  # each client sends its weighted update and its example count
