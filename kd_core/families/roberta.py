"""RoBERTa, XLM-R and CamemBERT: BERT's encoder with learned positions offset by the padding index
(so the longest input is max_position_embeddings - padding_idx - 1, 512 for roberta-base) and an
`lm_head`. DistilRoBERTa is this family with 6 layers."""
from __future__ import annotations

from torch.nn import functional as F

from . import Family, register
from .bert import BERT_UNITS, base_layers, bert_config_sizes, self_attention_qk

ROBERTA = register(Family(
    model_types=("roberta", "xlm-roberta", "camembert"), encoder_layers=base_layers, query_key=self_attention_qk,
    mlm_transform=lambda model: (lambda h: model.lm_head.layer_norm(F.gelu(model.lm_head.dense(h)))),  # lm_head less its decoder
    **{**bert_config_sizes(), "max_length": lambda c: c.max_position_embeddings - c.pad_token_id - 1}, **BERT_UNITS))
