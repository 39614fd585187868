from kedro.pipeline import Node, Pipeline

from .nodes import build_training_pairs, encode_clips, prepare_codec, write_latent_shards


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(prepare_codec, ["labelled_clip_table", "synthetic_clips", "ingested_clips", "params:preprocess"],
                 ["latent_codec", "codec_metrics"], name="prepare_codec"),
            Node(encode_clips, ["labelled_clip_table", "synthetic_clips", "ingested_clips", "latent_codec",
                                "latent_cache_keys", "params:preprocess"],
                 ["latent_cache", "preprocess_manifest"], name="encode_clips"),
            Node(write_latent_shards, ["latent_cache", "params:preprocess"], "latent_shard_manifest",
                 name="write_latent_shards"),
            Node(build_training_pairs, ["labelled_clip_table", "params:training"], "training_pairs",
                 name="build_training_pairs"),
        ]
    )
