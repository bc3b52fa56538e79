"""Pipeline stages: IO, iteration, sharding, progress and resume around the pure algorithms."""
