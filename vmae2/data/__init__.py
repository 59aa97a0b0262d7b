"""Data side of pretraining: list files, record mixing and sharding."""
