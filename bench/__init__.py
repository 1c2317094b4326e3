"""Benchmarks. Each compares agent-runner with a baseline measured in the same run."""
