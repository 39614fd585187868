from kedro.pipeline import Node, Pipeline

from .nodes import ingest_videos


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                ingest_videos,
                inputs=["raw_videos", "ingest_manifest", "params:ingest"],
                outputs=["ingested_clip_table", "ingested_clips", "ingest_rejects"],
                name="ingest_videos",
            )
        ]
    )
