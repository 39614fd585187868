"""Kedro CLI hook: the weight-folder part of the preflight, before Kedro builds the session.

`kedro run` imports every pipeline (torch, diffusers, DeepSpeed, MLflow) before `before_pipeline_run`, which
costs ~20 s of CPU; a paper-scale run whose Wan folder is missing should say so in a few seconds. So for the
runs whose pipelines are known to start from weight folders (training stages, the ablation, preprocess) this
hook reads the parameters alone (no torch), checks those folders with `dimo.preflight.weight_folder_problems`
and exits 2 with the preflight's one line. Everything else (datasets, registry models) is left to the full
preflight in `hooks.PreflightHooks`, which checks the folders again; runs with `--params` or `--conf-source`
go straight there too (their overrides are Kedro's to parse). Registered under `kedro.cli_hooks` in
pyproject.toml.
"""

from __future__ import annotations

import os
import sys

from kedro.framework.cli.hooks import cli_hook_impl


def _option(args: list[str], *names: str) -> str | None:
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


class WeightFolderCheck:
    @cli_hook_impl
    def before_command_run(self, project_metadata, command_args: list[str]) -> None:
        if not command_args or command_args[0] != "run" or project_metadata is None:
            return
        args = command_args[1:]
        if _option(args, "--params", "--conf-source") is not None:
            return
        from kedro.framework.project import settings

        from dimo import preflight

        env = _option(args, "--env", "-e") or os.environ.get("KEDRO_ENV")
        names = (_option(args, "--pipelines", "--pipeline", "-p") or "__default__").split(",")
        loader = settings.CONFIG_LOADER_CLASS(conf_source=str(project_metadata.project_path / settings.CONF_SOURCE),
                                              env=env, **settings.CONFIG_LOADER_ARGS)
        problems = preflight.weight_folder_problems(loader["parameters"], names)
        if problems:
            print(preflight.message(",".join(names), problems, [], env, set()), file=sys.stderr, flush=True)
            raise SystemExit(2)


cli_hooks = WeightFolderCheck()
