"""ELECTRA: BERT's encoder (with `embeddings_project` when embedding_size differs from the hidden size);
the generator's MLM head is `generator_predictions` + `generator_lm_head`."""
from __future__ import annotations

from . import Family, register
from .bert import BERT_UNITS, base_layers, bert_config_sizes, self_attention_qk

ELECTRA = register(Family(
    model_types=("electra",), encoder_layers=base_layers, query_key=self_attention_qk,
    mlm_transform=lambda model: model.generator_predictions,
    **bert_config_sizes(), **BERT_UNITS))
