"""Shared core of electra-kd: training engine, config, corpus pipeline, losses, GLUE harness."""
