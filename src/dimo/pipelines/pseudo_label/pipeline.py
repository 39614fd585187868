from kedro.pipeline import Node, Pipeline

from .nodes import apply_label_gate, evaluate_label_accuracy, gate_labels, label_clips


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(label_clips, ["validated_clip_table", "synthetic_clips", "ingested_clips", "pseudo_label_store",
                               "params:pseudo_label", "synthetic_ground_truth"],
                 ["pseudo_label_index", "pseudo_label_frames"], name="label_clips"),
            # The quarantine is saved before the gate node runs, so its reasons can always be read.
            Node(gate_labels, ["pseudo_label_index", "pseudo_label_frames", "params:pseudo_label"],
                 ["pseudo_label_quarantine", "pseudo_label_suite_results"], name="gate_labels"),
            Node(apply_label_gate, ["validated_clip_table", "pseudo_label_index", "pseudo_label_quarantine",
                                    "params:pseudo_label"],
                 ["labelled_clip_table", "pseudo_label_metrics"], name="apply_label_gate"),
            Node(evaluate_label_accuracy, ["validated_clip_table", "pseudo_label_index", "synthetic_ground_truth",
                                            "params:pseudo_label"],
                 ["pseudo_label_accuracy", "pseudo_label_accuracy_metrics", "pseudo_label_accuracy_plot"],
                 name="evaluate_label_accuracy"),
        ]
    )
