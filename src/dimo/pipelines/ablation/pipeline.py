"""One node per known model variant (`dimo.models.configs.VARIANTS`; each trains three stages and scores them, or
is skipped when `ablation.variants` leaves it out), then the table."""

from functools import partial, update_wrapper

from kedro.pipeline import Node, Pipeline

from dimo.models.configs import VARIANTS

from .nodes import ablation_table, run_variant

VARIANT_INPUTS = ["training_pairs", "latent_cache", "latent_codec", "preprocess_manifest", "deepspeed_config",
                  "labelled_clip_table", "synthetic_clips", "ingested_clips", "params:training", "params:ablation",
                  "params:evaluate", "params:pseudo_label"]


def create_pipeline(**kwargs) -> Pipeline:
    nodes = [Node(update_wrapper(partial(run_variant, name), run_variant), VARIANT_INPUTS, f"ablation_{name}_result",
                  name=f"ablation_{name}", tags=["starts_from.ablation.base"]) for name in VARIANTS]

    def collect(*args):
        *results, params = args
        return ablation_table(list(results), params)

    nodes.append(Node(update_wrapper(collect, ablation_table),
                      [f"ablation_{name}_result" for name in VARIANTS] + ["params:ablation"],
                      ["ablation_table_csv", "ablation_table_md", "ablation_metrics"], name="ablation_table"))
    return Pipeline(nodes)
