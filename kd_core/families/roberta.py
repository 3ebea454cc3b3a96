"""RoBERTa, XLM-R and CamemBERT: BERT's encoder with learned positions offset by the padding index
(so the longest input is max_position_embeddings - padding_idx - 1, 512 for roberta-base) and an
`lm_head`. DistilRoBERTa is this family with 6 layers."""
from __future__ import annotations

from . import Family, register
from .bert import BERT_UNITS, base_layers, bert_config_sizes, self_attention_qk

ROBERTA = register(Family(
    model_types=("roberta", "xlm-roberta", "camembert"), encoder_layers=base_layers, query_key=self_attention_qk,
    mlm_head=lambda model: model.lm_head,
    **{**bert_config_sizes(), "max_length": lambda c: c.max_position_embeddings - c.pad_token_id - 1}, **BERT_UNITS))
