"""Evaluation inside sharding.across, for test_ddp: in one process, or in each of 2 spawned gloo processes.

A module of its own so the spawned processes import only what scoring needs, not the test modules.
"""

from __future__ import annotations

import json
import os

import torch

# (task, domain, extra settings): every scoring loop that recpeft.evaluation.sharding splits
# (rows, ranking users, generation)
CASES = [("preference", "video", {}), ("rating", "ecommerce", {}), ("ranking", "ecommerce", {"negatives": 5}),
         ("interests", "news", {})]
LIMIT = 9  # 9 rows in batches of 4: 3 batches, so two processes' shares are uneven (2 and 1)


def evaluate_cases(model: str) -> dict[str, dict]:
    """Each case's validation metrics and per-example outputs with the untrained model, JSON-ready."""
    from recpeft.config import TrainConfig
    from recpeft.data.formats.csvdir import load_sample
    from recpeft.domains import get_domain
    from recpeft.models.load import load_base
    from recpeft.tasks import get_task

    base, tok, _ = load_base(model)
    out = {}
    for task, domain, extra in CASES:
        cfg = TrainConfig(model=model, task=task, domain=domain, threads=1, **extra)
        the_task = get_task(task, load_sample(domain), get_domain(domain), tok, cfg)
        result = the_task.evaluate(base, the_task.eval_set("valid", LIMIT), batch_size=4)
        out[task] = {"metrics": result.metrics, "outputs": result.outputs}
    return json.loads(json.dumps(out))


def worker(rank: int, world: int, port: int, model: str, out_dir: str) -> None:
    """torch.multiprocessing.spawn target: join a gloo group of `world`, evaluate, write rank<N>.json."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from accelerate import PartialState

    from recpeft.evaluation import sharding
    from recpeft.training.launch import closing_process_group

    with closing_process_group():  # as a recpeft worker ends: no gloo abort at exit
        with sharding.across(PartialState(cpu=True)) as share:
            results = evaluate_cases(model)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"results": results, "units": share.units}, f)
