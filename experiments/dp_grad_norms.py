"""What DP-SGD's first step keeps of the gradient: per-example gradient norms at the adapter's start,
and the clipped mean gradient against the noise, for each clipping norm C.

    python experiments/dp_grad_norms.py [ml100k_dp_large] [--runs eps8-seed42 ...] [--examples 128]
        [--clip 0.001 0.01 0.1 1] [--tiny] [--set key=value ...]

dp_noise.py compares the noise with a clipped mean gradient of norm C, its best case. The real mean is
smaller: per-example gradients below C are not scaled up, and gradients that disagree cancel. This
builds each named run exactly as run.py would (its data, seed, training subset and adapter at its seed's
initialisation, recpeft.training.trainer.Run), backpropagates `--examples` of its training examples one
at a time (a batch of one: each gradient is that example's own, no padding), and prints:
- the per-example gradient norms (quantiles);
- per C: the norm of the mean clipped gradient (the signal the noisy mean keeps), the noise's norm on
  that mean, σ·C·√d / B (σ from opacus' accountant for the run's ε, q and steps, as training gets it; d the
  adapter's trainable numbers; B the expected batch), and their ratio: below 1, a step is mostly noise;
- the same for the numbers that get any gradient at the start (a LoRA's B matrices: its A matrices get
  none while B is zero), and the fraction of d they are;
- for a Yes/No task, the step's direction split into the answer prior's and the ranking's, and the
  ranking's own per-step signal/noise (answer_directions);
- the population signal: |E g|² over all training examples, estimated without the sample mean's bias
  (± a jackknife standard error). A mean of n disagreeing gradients has norm ~1/√n of theirs even when
  they share no direction at all; that part is sampling noise, not a direction SGD can follow.

C below every example's norm is the limit: each gradient becomes C times its direction, so the ratio
stops growing. The mean of the directions' norm says how much the examples agree.
Per example a forward and a backward (~0.5 s for a 400-token ML-100k prompt on a 2-core CPU, SmolLM2-135M).
Writes results/dp_grad_norms.json (with --tiny, results/tiny/).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as runner  # noqa: E402  (experiments/run.py: specs and the config a run trains with)

from recpeft.artifacts import write_json_atomic  # noqa: E402
from recpeft.config import build_config  # noqa: E402
from recpeft.runtime import describe_machine  # noqa: E402


def per_example_gradients(run, examples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(examples, d): the flattened gradient of the adapter's trainable numbers for each of `examples`
    training rows, drawn with a seeded generator, each backpropagated alone; with each row's label and
    loss."""
    from recpeft.tasks.batches import collate

    rows = random.Random(seed).sample(run.train_rows, min(examples, len(run.train_rows)))
    model, params = run.model, run.trainable
    model.train()
    out, losses = [], []
    for row in rows:
        model.zero_grad(set_to_none=True)
        loss = run.task.loss(model, collate([row], run.tok.pad_token_id))
        loss.backward()
        losses.append(float(loss.detach()))
        out.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten().float()
                              for p in params]))
    model.zero_grad(set_to_none=True)
    return torch.stack(out), torch.tensor([r.label for r in rows]), torch.tensor(losses)


def clip_each(grads: torch.Tensor, norms: torch.Tensor, clip: float) -> torch.Tensor:
    """Each per-example gradient scaled down to norm at most `clip`, as DP-SGD clips it before the noisy sum."""
    return grads * (clip / norms.clamp_min(1e-30)).clamp(max=1.0)[:, None]


def answer_directions(grads: torch.Tensor, labels: torch.Tensor, losses: torch.Tensor, clips: list[float],
                      sigma: float, batch: float) -> dict:
    """Where the clipped mean gradient points, for a two-answer task (Yes/No): towards a prior shift or
    towards ranking.

    With a 2-way cross-entropy an example's gradient is (p - y)·∇z, z the answer logits' margin (label 1
    minus label 0) and p = P(label 1) = exp(-loss) or 1 - exp(-loss). So ∇z = g / (p - y). Two directions:
    - the prior's, u = mean ∇z: it moves every example's margin the same way (calibration, not AUC);
    - the ranking's, r = mean ∇z over label-1 examples minus over label-0 ones: to first order a step Δ
      raises the mean margin of a (like, dislike) pair by Δ·r, which is what AUC counts.
    Per C, the step -m (m the mean clipped gradient): its cosine with u and with r, and its push along r̂
    against the noise's push along it, (-m·r̂) / (σ·C/B). The noise's projection on any unit vector has
    standard deviation σ·C/B, so this is the per-step signal/noise of the ranking itself; under Adam with
    noise-dominated coordinates the update's projection keeps about 0.8 of it (E sign(m_j + n_j) ≈ 0.8·m_j/s)."""
    y = labels.float()
    p_true = torch.exp(-losses.double()).float()
    p = torch.where(labels == 1, p_true, 1 - p_true)
    dz = grads / (p - y)[:, None]
    u, r = dz.mean(dim=0), dz[labels == 1].mean(dim=0) - dz[labels == 0].mean(dim=0)
    norms = grads.norm(dim=1)

    def cos(a, b):
        return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-30))

    rows = []
    for clip in clips:
        step = -clip_each(grads, norms, clip).mean(dim=0)
        rows.append({"clip": clip, "step_cos_prior": cos(step, u), "step_cos_ranking": cos(step, r),
                     "ranking_signal_over_noise": float(step @ r / r.norm().clamp_min(1e-30)) / (sigma * clip / batch)})
    return {"label1_rate": float(y.mean()), "mean_p_label1": float(p.mean()), "prior_cos_ranking": cos(u, r),
            "per_clip": rows}


def population_signal(x: torch.Tensor) -> tuple[float, float]:
    """(estimate, jackknife standard error) of |E x|², the squared norm of the mean over all training
    examples, from n draws: the mean of x_i·x_j over pairs i != j. The sample mean's own |x̄|² overstates
    it by tr(Σ)/n, which is most of it when examples disagree (unit vectors in random directions give
    |x̄|² ≈ 1/n and |E x|² = 0)."""
    n = x.shape[0]
    gram = (x.double() @ x.double().T)
    total, diag, rows = gram.sum(), gram.diagonal(), gram.sum(dim=1)
    est = float((total - diag.sum()) / (n * (n - 1)))
    # leave example k out: drop its row and column of off-diagonal pairs
    loo = ((total - diag.sum()) - 2 * (rows - diag)) / ((n - 1) * (n - 2)) if n > 2 else torch.zeros(n)
    se = float(((n - 1) / n * ((loo - loo.mean()) ** 2).sum()).sqrt()) if n > 2 else math.nan
    return est, se


def signal_and_noise(grads: torch.Tensor, clips: list[float], sigma: float, batch: float) -> dict:
    """Per clipping norm: the mean clipped gradient's norm, the noise's norm on the mean, their ratio; over
    all d numbers and over those with any gradient in this sample ("live")."""
    norms = grads.norm(dim=1)
    live = grads.abs().sum(dim=0) > 0
    d, d_live = grads.shape[1], int(live.sum())
    directions = grads / norms.clamp_min(1e-30)[:, None]
    rows = []
    for clip in clips:
        clipped = clip_each(grads, norms, clip)
        mean = clipped.mean(dim=0)
        noise, noise_live = sigma * clip * math.sqrt(d) / batch, sigma * clip * math.sqrt(d_live) / batch
        pop, pop_se = population_signal(clipped)
        rows.append({"clip": clip, "clipped_fraction": float((norms > clip).float().mean()),
                     "signal_norm": float(mean.norm()), "noise_norm": noise,
                     "signal_over_noise": float(mean.norm()) / noise,
                     "live_signal_over_noise": float(mean[live].norm()) / noise_live,
                     "population_signal_sq": pop, "population_signal_sq_se": pop_se,
                     "population_signal_over_noise": math.sqrt(max(pop, 0.0)) / noise})
    q = torch.quantile(norms, torch.tensor([0.1, 0.5, 0.9]))
    return {"examples": grads.shape[0], "params": d, "live_params": d_live,
            "grad_norm_quantiles": {"p10": float(q[0]), "p50": float(q[1]), "p90": float(q[2])},
            "unclipped_mean_norm": float(grads.mean(dim=0).norm()),
            "mean_direction_norm": float(directions.mean(dim=0).norm()),
            "population_direction_sq": population_signal(directions), "per_clip": rows}


def measure(cfg, examples: int, clips: list[float]) -> dict:
    from recpeft.errors import UserError
    from recpeft.training.checkpoint import CtrlC
    from recpeft.training.trainer import Run

    if cfg.dp_epsilon is None:
        raise UserError("a run without dp_epsilon has no noise to compare with; name a DP run")
    run = Run(cfg, save=False, show_progress=False, ctrl_c=CtrlC(enabled=False))
    # the σ and expected batch training gets: Privacy.attach plans them from the same loader and steps
    sigma = run.privacy.plan(len(run.train_loader), run.total_steps)
    batch = run.privacy.n * run.privacy.sample_rate
    grads, labels, losses = per_example_gradients(run, examples, cfg.seed)
    row = {"epsilon": cfg.dp_epsilon, "sigma": sigma, "expected_batch": batch, "steps": run.total_steps,
           **signal_and_noise(grads, clips, sigma, batch)}
    if len(getattr(run.task, "answers", ())) == 2 and set(labels.tolist()) == {0, 1}:
        row["answer"] = answer_directions(grads, labels, losses, clips, sigma, batch)
    return row


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", nargs="?", default="ml100k_dp_large")
    p.add_argument("--runs", nargs="+", default=["eps8-seed42", "eps8-seed43", "eps8-seed44"])
    p.add_argument("--examples", type=int, default=128)
    p.add_argument("--clip", type=float, nargs="+", default=[0.001, 0.01, 0.1, 1.0])
    p.add_argument("--tiny", action="store_true", help="the YAML's smoke-test settings")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a train setting")
    p.add_argument("--out", type=Path, help="results folder [default: experiments/results]")
    args = p.parse_args(argv)
    if args.examples < 2 or any(c <= 0 for c in args.clip):
        p.error("--examples must be at least 2 and every --clip above 0")
    spec = runner.load_spec(args.experiment, args.tiny, args.set)
    by_name = {r["name"]: r for r in spec["runs"]}
    unknown = [n for n in args.runs if n not in by_name]
    if unknown:
        p.error(f"no run {', '.join(unknown)} in {args.experiment}; runs: {', '.join(by_name)}")
    results = {"experiment": args.experiment, "tiny": args.tiny, "machine": describe_machine(),
               "command": " ".join(["python", "experiments/dp_grad_norms.py", *(argv or sys.argv[1:])]), "runs": {}}
    for name in args.runs:
        overrides = {k: v for k, v in by_name[name].items() if k != "name"}
        cfg = build_config(**{**spec["train"], **overrides, **runner.data_args(spec)})
        results["runs"][name] = row = measure(cfg, args.examples, args.clip)
        best = max(row["per_clip"], key=lambda r: r["signal_over_noise"])
        print(f"{name}: σ {row['sigma']:.3f}, B {row['expected_batch']:g}, grad norm p10/p50/p90 "
              + "/".join(f"{v:.3g}" for v in row["grad_norm_quantiles"].values())
              + f", mean direction {row['mean_direction_norm']:.3f} (population |E u|² "
              + "{:.4f} ± {:.4f}); signal/noise (population) ".format(*row["population_direction_sq"])
              + ", ".join(f"C {r['clip']:g}: {r['signal_over_noise']:.3f} ({r['population_signal_over_noise']:.3f})"
                          for r in row["per_clip"])
              + f" (best C {best['clip']:g})", flush=True)
        if "answer" in row:
            a = row["answer"]
            print(f"  label-1 rate {a['label1_rate']:.3f}, mean P(label 1) {a['mean_p_label1']:.3f}, cos(prior, "
                  f"ranking) {a['prior_cos_ranking']:.3f}; step's cos with prior / ranking, ranking signal/noise: "
                  + ", ".join(f"C {r['clip']:g}: {r['step_cos_prior']:.3f} / {r['step_cos_ranking']:.3f}, "
                              f"{r['ranking_signal_over_noise']:.3f}" for r in a["per_clip"]), flush=True)
    ratios = {c: statistics.fmean(r["per_clip"][i]["signal_over_noise"] for r in results["runs"].values())
              for i, c in enumerate(args.clip)}
    results["mean_signal_over_noise"] = ratios
    out = (args.out or Path(__file__).resolve().parent / "results") / ("tiny" if args.tiny else "")
    write_json_atomic(out / "dp_grad_norms.json", results)
    print(json.dumps({"mean_signal_over_noise": ratios}))
    return results


if __name__ == "__main__":
    runner.exit_on_user_error(main)
