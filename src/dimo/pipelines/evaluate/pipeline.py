from kedro.pipeline import Node, Pipeline

from .nodes import gate_champion, generate_benchmark, score_benchmark, select_benchmark


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(select_benchmark, ["labelled_clip_table", "benchmark_manifest", "params:evaluate"],
                 "benchmark_pairs", name="select_benchmark"),
            # Target (and driving) clips are read from the clip partitions by clip id. stage3_registration only
            # orders evaluate after training in the default chain; the model is evaluate.model (a registry alias,
            # by default the newest stage-3 model: the champion's candidate), read from the stage's folder
            # (training/handover.py: the manifest and training parameters say where and with which text encoder).
            Node(generate_benchmark, ["benchmark_pairs", "synthetic_clips", "ingested_clips", "stage3_registration",
                                      "params:evaluate", "preprocess_manifest", "params:training"],
                 ["benchmark_videos", "benchmark_side_by_side", "benchmark_montage", "benchmark_generation"],
                 name="generate_benchmark", tags=["starts_from.evaluate.model"]),  # dimo.preflight checks it
            Node(score_benchmark, ["benchmark_pairs", "benchmark_videos", "synthetic_clips", "ingested_clips",
                                   "benchmark_label_store", "benchmark_generation", "params:evaluate",
                                   "params:pseudo_label"],
                 ["benchmark_scores", "benchmark_table_csv", "benchmark_table_md", "benchmark_metrics"],
                 name="score_benchmark"),
            Node(gate_champion, ["benchmark_table_csv", "benchmark_pairs", "benchmark_generation", "params:evaluate"],
                 ["champion_gate", "champion_gate_metrics"], name="gate_champion"),  # moves models:/dimo@champion
        ]
    )
