"""BERT (and any BERT-shaped encoder with a `cls` MLM head, e.g. all-MiniLM-L6-v2)."""
from __future__ import annotations

from . import Family, Units, register


def base_layers(model):
    return model.base_model.encoder.layer


def self_attention_qk(layer):
    return layer.attention.self.query, layer.attention.self.key


def bert_units(layer) -> Units:
    attention = layer.attention.self
    return Units(attention, (attention.query, attention.key, attention.value), layer.attention.output.dense,
                 layer.intermediate.dense, layer.output.dense)


BERT_UNITS = dict(units=bert_units, heads_attr="num_attention_heads", ffn_key="intermediate_size")


def bert_config_sizes():
    """width/depth/heads/max_length readers shared by the families with BERT's config names."""
    return dict(width=lambda c: c.hidden_size, depth=lambda c: c.num_hidden_layers,
                heads=lambda c: c.num_attention_heads, max_length=lambda c: c.max_position_embeddings)


BERT = register(Family(model_types=("bert",), encoder_layers=base_layers, query_key=self_attention_qk,
                       mlm_transform=lambda model: model.cls.predictions.transform, **bert_config_sizes(), **BERT_UNITS))
