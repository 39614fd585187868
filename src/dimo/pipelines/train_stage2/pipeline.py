from dimo.training.nodes import stage_pipeline


def create_pipeline(**kwargs):
    return stage_pipeline("stage2", previous="stage1")
