"""GLUE evaluation harness: tasks as data, metrics, fine-tuning grids, task distillation, reports."""
