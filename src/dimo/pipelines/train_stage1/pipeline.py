from dimo.training.nodes import stage_pipeline


def create_pipeline(**kwargs):
    return stage_pipeline("stage1", previous="pretrain")
