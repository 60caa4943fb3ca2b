"""The YAML training configs, shipped in the wheel as feed_fast.configs (see feed_fast.engine.config)."""
