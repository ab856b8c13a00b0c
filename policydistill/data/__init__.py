"""Episode data: immutable shards with an atomically replaced manifest."""

from policydistill.data.shards import EpisodeStore, ShardError, ShardWriter, evict

__all__ = ["EpisodeStore", "ShardError", "ShardWriter", "evict"]
