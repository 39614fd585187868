from kedro.pipeline import Node, Pipeline

from .nodes import make_previews, synthesize_views


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                synthesize_views,
                inputs="params:synthesize_views",
                outputs=["synthetic_clip_table", "synthetic_clips", "synthetic_ground_truth"],
                name="synthesize_views",
            ),
            Node(
                make_previews,
                # reads the clips back through the catalog: the previews show what was written
                inputs=["synthetic_clip_table", "synthetic_clips", "params:synthesize_views"],
                outputs=["synthetic_contact_sheet", "synthetic_preview_grid"],
                name="synthetic_previews",
            ),
        ]
    )
