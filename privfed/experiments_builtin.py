"""The demo configuration that ``privfed run`` uses when no ``--config`` is given.

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
  local_steps: 8
  batch_size: 32
  optimizer: adam
  lr: 0.02
federation:
  strategy: fedavg
  client_fraction: 1.0
"""
