"""Run a few steps of a tiny model on synthetic data; used by test_data_parallel.py.

python tests/train/ddp_run.py OUTPUT_DIR BATCH_SIZE
python -m accelerate.commands.launch --num_processes 2 --cpu tests/train/ddp_run.py OUT 2
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from engine_helpers import collate, make_config, next_token_loss, synthetic_dataset, tiny_model

from alignkit.train.engine import Engine


def main() -> None:
    output_dir, batch_size = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(1)
    cfg = make_config(output_dir, batch_size=batch_size, max_steps=4, save_every=2)
    engine = Engine(cfg, tiny_model())
    engine.fit(synthetic_dataset(n=20), collate, next_token_loss, eval_fn=lambda m: {"one": 1.0})


if __name__ == "__main__":
    main()
