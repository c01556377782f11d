"""The demo configuration that ``privfed run`` uses when no ``--config`` is given, and the tiny base of
``privfed attack-grid``.

MiniLM + LoRA + DP-SGD (target epsilon 8) on BBC News, 5 Dirichlet clients; sized to finish in under 2 minutes
on 2 CPU cores. It lives in the package (not only under experiments/) so an installed privfed can run it anywhere.
"""

DEMO_CONFIG = """
name: demo-minilm-lora-bbc
seed: 0
data:
  source: bbc_news
  max_length: 64
  eval_examples: 400
partition:
  scheme: dirichlet
  num_clients: 5
  alpha: 1.0
model:
  source: minilm
  regime: lora
  lora_rank: 8
  lora_alpha: 16
  lora_top_layers: 4  # MiniLM's layers 2-5 of 0-5: backward stops at layer 2 (any model: its top 4)
privacy:
  mode: target_epsilon
  epsilon: 8.0
  delta: 1.0e-5
  max_grad_norm: 1.0
training:
  rounds: 3
  local_steps: 4  # the recipe study's pick (experiments/results/recipe.md): batch 64 x 4 steps beat 32 x 8 at the
  batch_size: 64  # same examples processed (Li et al. 2022: larger batches, noise re-calibrated for the same epsilon)
  optimizer: adam
  lr: 0.03
federation:
  strategy: fedavg
  client_fraction: 1.0
"""

ATTACK_GRID_CONFIG = """
name: tiny-attack-grid
seed: 0
data:
  source: bbc_news
  max_length: 32
  max_examples: 1200
  eval_examples: 200
partition:
  scheme: iid
  num_clients: 10
model:
  source: tiny_bert  # random 2-layer BERT, first trained whole for a few rounds (the grid's warm start)
  regime: lora  # then every cell fine-tunes LoRA adapters and the head: small updates, seconds a cell
  lora_rank: 8
privacy:
  mode: off  # the grid sets privacy per cell
training:
  rounds: 4  # after the warm start: attackers in rounds 2-3, persistence measured in round 4
  local_steps: 3
  batch_size: 32
  optimizer: adam
  lr: 0.02
federation:
  strategy: fedavg
attack:
  local_steps: 15  # an attacker trains 5x longer than honest clients (Bagdasaryan et al. 2020)
"""


TINY_WARM_START = 10  # rounds of honest training the tiny grid's cells start from


def attack_grid_config(overrides: list[str] | None = None):
    """The tiny grid's base config with ``--set`` overrides (the attack grid's default)."""
    import yaml

    from privfed.config import apply_overrides, from_dict

    return from_dict(apply_overrides(yaml.safe_load(ATTACK_GRID_CONFIG), overrides or []))
