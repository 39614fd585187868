from kedro.pipeline import Node, Pipeline

from .nodes import register_motion_tokenizer, train_motion_tokenizer


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(train_motion_tokenizer, ["labelled_clip_table", "params:train_motion_tokenizer"],
                 ["motion_tokenizer", "motion_tokenizer_metrics", "motion_tokenizer_report"],
                 name="train_motion_tokenizer"),
            Node(register_motion_tokenizer, ["motion_tokenizer", "motion_tokenizer_report",
                                             "params:train_motion_tokenizer"],
                 "motion_tokenizer_registration", name="register_motion_tokenizer"),
        ]
    )
