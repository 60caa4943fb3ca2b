"""Input pipelines (imported as `feed_fast.loaders`)."""
