from kedro.pipeline import Node, Pipeline

from .nodes import apply_validation_gate, combine_clip_tables, profile_clips, run_expectation_suite


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(combine_clip_tables, ["ingested_clip_table", "synthetic_clip_table", "params:validate"],
                 "candidate_clip_table", name="combine_clip_tables"),
            Node(profile_clips, ["candidate_clip_table", "synthetic_clips", "ingested_clips", "params:validate"],
                 "clip_profile", name="profile_clips"),
            # Quarantine and report are saved before the gate runs, so a failing gate still leaves them to read.
            Node(run_expectation_suite, ["clip_profile", "ingest_rejects", "params:validate"],
                 ["clip_quarantine", "validation_report", "validation_results"], name="run_expectation_suite"),
            Node(apply_validation_gate, ["clip_profile", "clip_quarantine", "params:validate"],
                 ["validated_clip_table", "validation_metrics"], name="apply_validation_gate"),
        ]
    )
