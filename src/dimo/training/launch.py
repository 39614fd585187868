"""Train one stage on several ranks under the `deepspeed` launcher (the same node functions as `kedro run`):

    deepspeed --num_gpus 8 --module dimo.training.launch --stage stage1 --env paper

Every rank loads the stage's inputs from the Kedro catalog and trains its share of each global batch; rank 0
saves the outputs through the catalog and registers the weights in MLflow, inside one MLflow run.
Single process: `kedro run --pipelines=train_stage1` does the same.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import mlflow
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from dimo.training.nodes import register_stage, run_stage

PREVIOUS = {"pretrain": None, "stage1": "pretrain", "stage2": "stage1", "stage3": "stage2"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", required=True, choices=list(PREVIOUS))
    parser.add_argument("--env", default=None, help="Kedro configuration environment (default: local)")
    parser.add_argument("--project", default=".", help="project folder (default: the current one)")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the launcher
    args = parser.parse_args(argv)

    project = Path(args.project).resolve()
    os.chdir(project)  # catalog paths are relative to the project
    bootstrap_project(project)
    rank = int(os.environ.get("RANK", "0"))
    with KedroSession.create(project_path=project, env=args.env) as session:
        context = session.load_context()  # kedro-mlflow's hook points mlflow at the project's store here
        catalog = context.catalog
        params = catalog.load("params:training")
        inputs = [catalog.load(name) for name in
                  ("training_pairs", "latent_cache", "latent_codec", "preprocess_manifest", "deepspeed_config")]
        previous = PREVIOUS[args.stage]
        prev_registration = catalog.load(f"{previous}_registration") if previous else None
        # the annealing sweep's best schedule (used only with training.geometric_loss_from_sweep)
        sweep_best = catalog.load("annealing_best_params") if args.stage != "pretrain" else None
        if rank != 0:
            run_stage(args.stage, *inputs, params, prev_registration, sweep_best)
            return
        mlflow.set_experiment(context.mlflow.tracking.experiment.name)  # kedro-mlflow's config
        with mlflow.start_run(run_name=f"{args.stage} (deepspeed x{os.environ.get('WORLD_SIZE', '1')})"):
            mlflow.log_params({"stage": args.stage, "world_size": os.environ.get("WORLD_SIZE", "1"),
                               "env": args.env or "local"})
            model, summary = run_stage(args.stage, *inputs, params, prev_registration, sweep_best)
            catalog.save(f"{args.stage}_model", model)
            catalog.save(f"{args.stage}_summary", summary)
            codec, manifest = inputs[2], inputs[3]
            catalog.save(f"{args.stage}_registration",
                         register_stage(args.stage, model, codec, manifest, summary, params))


if __name__ == "__main__":
    main()
