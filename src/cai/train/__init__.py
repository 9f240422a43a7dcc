"""Thin wrappers over TRL's trainers: one config dataclass and one `main(config)` each."""
