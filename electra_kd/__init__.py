"""ELECTRA discriminator distillation with a small generator (see issue: electra_kd)."""
