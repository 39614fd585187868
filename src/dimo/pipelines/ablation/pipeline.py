"""One node per ablation variant (each trains three stages and scores them), then the table."""

from functools import partial, update_wrapper

from kedro.pipeline import Node, Pipeline

from .nodes import ablation_table, run_variant

VARIANTS = ("full", "smpl_control", "channel_concat", "no_geo", "no_hand")  # keys of ablation.variants


def create_pipeline(**kwargs) -> Pipeline:
    nodes = [
        Node(update_wrapper(partial(run_variant, name), run_variant),
             ["training_pairs", "latent_cache", "latent_codec", "preprocess_manifest", "deepspeed_config",
              "labelled_clip_table", "params:training", "params:ablation", "params:evaluate", "params:pseudo_label"],
             f"ablation_{name}_result", name=f"ablation_{name}")
        for name in VARIANTS
    ]

    def collect(*args):
        *results, params = args
        return ablation_table(list(results), params)

    nodes.append(Node(update_wrapper(collect, ablation_table),
                      [f"ablation_{name}_result" for name in VARIANTS] + ["params:ablation"],
                      ["ablation_table_csv", "ablation_table_md", "ablation_metrics"], name="ablation_table"))
    return Pipeline(nodes)
