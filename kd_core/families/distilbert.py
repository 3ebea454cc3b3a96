"""DistilBERT: `transformer.layer`, `q_lin`/`k_lin`, config names dim/n_layers/n_heads, no token types;
and the renaming of BERT tensors into DistilBERT's (HF extract_distilbert.py does the same)."""
from __future__ import annotations

import re

import torch

from . import Family, Units, register

DISTILBERT = register(Family(
    model_types=("distilbert",),
    encoder_layers=lambda model: model.base_model.transformer.layer,
    query_key=lambda layer: (layer.attention.q_lin, layer.attention.k_lin),
    mlm_transform=lambda model: (lambda h: model.vocab_layer_norm(model.activation(model.vocab_transform(h)))),
    width=lambda c: c.dim, depth=lambda c: c.n_layers, heads=lambda c: c.n_heads,
    max_length=lambda c: c.max_position_embeddings,
    units=lambda layer: Units(layer.attention, (layer.attention.q_lin, layer.attention.k_lin, layer.attention.v_lin),
                              layer.attention.out_lin, layer.ffn.lin1, layer.ffn.lin2),
    heads_attr="n_heads", ffn_key="hidden_dim"))

# BERT parameter names -> DistilBERT's
BERT_TO_DISTILBERT = [

    (r"^bert\.embeddings\.(word_embeddings|position_embeddings|LayerNorm)\.", r"distilbert.embeddings.\1."),
    (r"^bert\.encoder\.layer\.(\d+)\.attention\.self\.query\.", r"distilbert.transformer.layer.\1.attention.q_lin."),
    (r"^bert\.encoder\.layer\.(\d+)\.attention\.self\.key\.", r"distilbert.transformer.layer.\1.attention.k_lin."),
    (r"^bert\.encoder\.layer\.(\d+)\.attention\.self\.value\.", r"distilbert.transformer.layer.\1.attention.v_lin."),
    (r"^bert\.encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"distilbert.transformer.layer.\1.attention.out_lin."),
    (r"^bert\.encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"distilbert.transformer.layer.\1.sa_layer_norm."),
    (r"^bert\.encoder\.layer\.(\d+)\.intermediate\.dense\.", r"distilbert.transformer.layer.\1.ffn.lin1."),
    (r"^bert\.encoder\.layer\.(\d+)\.output\.dense\.", r"distilbert.transformer.layer.\1.ffn.lin2."),
    (r"^bert\.encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"distilbert.transformer.layer.\1.output_layer_norm."),
    (r"^cls\.predictions\.transform\.dense\.", "vocab_transform."),
    (r"^cls\.predictions\.transform\.LayerNorm\.", "vocab_layer_norm."),
    (r"^cls\.predictions\.decoder\.weight$", "vocab_projector.weight"),
    (r"^cls\.predictions\.bias$", "vocab_projector.bias"),
]


def bert_to_distilbert(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename BERT tensors to DistilBERT's. DistilBERT has no token types: token type 0's embedding
    is folded into the position embeddings, so single-segment inputs embed exactly as in BERT."""
    state = dict(state)
    token_types = state.get("bert.embeddings.token_type_embeddings.weight")
    if token_types is not None:
        state["bert.embeddings.position_embeddings.weight"] = (
            state["bert.embeddings.position_embeddings.weight"] + token_types[0])
    out = {}
    for key, value in state.items():
        for pattern, replacement in BERT_TO_DISTILBERT:
            new, n = re.subn(pattern, replacement, key)
            if n:
                out[new] = value
                break
    return out
