"""BERT -> DistilBERT-style students (see issue: bert_kd)."""
