"""The YAML training configs, shipped in the wheel as feed_fast.configs. Their schema: feed_fast.config."""
