"""The study: pairs -> units (train + measure, resumable) -> results.json (conf/study, docs/study.md)."""

from kedro.pipeline import Node, Pipeline

from .nodes import run_study, study_pairs, study_results


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(study_pairs, ["labelled_clip_table", "params:training"], "study_training_pairs", name="study_pairs"),
        Node(run_study, ["study_training_pairs", "latent_cache", "latent_codec", "preprocess_manifest",
                         "deepspeed_config", "labelled_clip_table", "synthetic_clips", "synthetic_ground_truth",
                         "params:training", "params:study"], "study_units", name="run_study"),
        Node(study_results, ["study_units", "params:study"],
             ["study_results_json", "study_hypotheses_md", "study_metrics"], name="study_results"),
    ])
