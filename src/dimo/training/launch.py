"""Train one stage on several ranks under the `deepspeed` launcher (the same node functions as `kedro run`):

    deepspeed --num_gpus 8 --module dimo.training.launch --stage stage1 --env paper

Every rank loads the stage's inputs from the Kedro catalog (the datasets its pipeline's train node reads,
`Stage.inputs`) and trains its share of each global batch; rank 0 saves the outputs through the catalog and
registers the weights in MLflow, inside one MLflow run. Single process: `kedro run --pipelines=train_stage1`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import mlflow
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from dimo.training import stages


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", required=True, choices=[s.key for s in stages.STAGES])
    parser.add_argument("--env", default=None, help="Kedro configuration environment (default: local)")
    parser.add_argument("--project", default=".", help="project folder (default: the current one)")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the launcher
    args = parser.parse_args(argv)

    project = Path(args.project).resolve()
    os.chdir(project)  # catalog paths are relative to the project
    bootstrap_project(project)
    rank = int(os.environ.get("RANK", "0"))
    stage = stages.get(args.stage)
    with KedroSession.create(project_path=project, env=args.env) as session:
        context = session.load_context()  # kedro-mlflow's hook points mlflow at the project's store here
        catalog = context.catalog
        # run_stage's arguments by name: the shared inputs, `previous`, and `sweep_best` for paper stages
        inputs = {arg: catalog.load(dataset) for arg, dataset in stage.inputs.items()}
        if rank != 0:
            for _ in stages.run_chain([stage.key], **inputs, register=False):
                pass
            return
        mlflow.set_experiment(context.mlflow.tracking.experiment.name)  # kedro-mlflow's config
        with mlflow.start_run(run_name=f"{stage.key} (deepspeed x{os.environ.get('WORLD_SIZE', '1')})"):
            mlflow.log_params({"stage": stage.key, "world_size": os.environ.get("WORLD_SIZE", "1"),
                               "env": args.env or "local"})
            for result in stages.run_chain([stage.key], **inputs, register=True):
                for name, value in (("model", result.model), ("summary", result.summary),
                                    ("registration", result.registration)):
                    catalog.save(stage.outputs[name], value)


if __name__ == "__main__":
    main()
