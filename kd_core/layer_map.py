"""Layer maps: which teacher layer each student layer copies and imitates (0-based, plain data).

`teacher_layers[i]` is the teacher layer that student layer i is initialised from and, unless a
config says otherwise, the one whose hidden states and attention maps the intermediate losses
compare with student layer i. Hidden state index j+1 is the output of layer j (0 is embeddings).

Presets (n_teacher, n_student given):
- every_other: evenly spaced, starting at layer 0 (HerBERT: 0,2,4,6,8,10 of 12)
- distilbert:  0,2,4,7,9,11 (HF extract_distilbert.py; needs 12 -> 6)
- greek:       0,4,7,11 (the Greek report's "layers 1,5,8,12"; needs 12 -> 4)
- first_k / last_k: the first or last n_student layers
- uniform_last: TinyBERT's g(m) = m * n_teacher / n_student, 1-based, i.e. ending at the last layer
"""
from __future__ import annotations

from dataclasses import dataclass
from .errors import UserError

FIXED = {"distilbert": (12, [0, 2, 4, 7, 9, 11]), "greek": (12, [0, 4, 7, 11])}


@dataclass(frozen=True)
class LayerMap:
    teacher_layers: tuple[int, ...]
    n_teacher: int

    @property
    def n_student(self) -> int:
        return len(self.teacher_layers)

    def hidden_pairs(self) -> list[tuple[int, int]]:
        """(student, teacher) indices into hidden_states tuples (0 = embeddings)."""
        return [(i + 1, t + 1) for i, t in enumerate(self.teacher_layers)]

    def attention_pairs(self) -> list[tuple[int, int]]:
        """(student, teacher) indices into attentions tuples."""
        return list(enumerate(self.teacher_layers))


def resolve_layer_map(spec: str | list[int] | tuple[int, ...], n_teacher: int, n_student: int) -> LayerMap:
    """A preset name or an explicit list of 0-based teacher layers -> a checked LayerMap."""
    if isinstance(spec, str) and "," in spec:
        spec = [int(x) for x in spec.split(",")]
    if n_student < 1:
        raise UserError(f"student.num_layers={n_student}: a student needs at least one layer")
    if isinstance(spec, str) and n_student > n_teacher:
        raise UserError(f"a {n_student}-layer student is deeper than its {n_teacher}-layer teacher: preset "
                        f"'{spec}' would repeat teacher layers; use student.num_layers <= {n_teacher}, or list the "
                        "teacher layers to copy explicitly (e.g. student.layers=0,0,1,1)")
    if isinstance(spec, str):
        if spec in FIXED:
            needs, layers = FIXED[spec]
            if n_teacher != needs or n_student != len(layers):
                raise UserError(f"layer preset '{spec}' is {layers} for a {needs}-layer teacher and "
                                 f"{len(layers)}-layer student, not {n_teacher} -> {n_student}")
        elif spec == "every_other":
            layers = [round(i * n_teacher / n_student) for i in range(n_student)]
        elif spec == "uniform_last":
            layers = [round((i + 1) * n_teacher / n_student) - 1 for i in range(n_student)]
        elif spec == "first_k":
            layers = list(range(n_student))
        elif spec == "last_k":
            layers = list(range(n_teacher - n_student, n_teacher))
        else:
            raise UserError(f"unknown layer preset '{spec}'; use every_other, distilbert, greek, first_k, "
                             "last_k, uniform_last, or a list such as 0,4,7,11")
    else:
        layers = list(spec)
    if len(layers) != n_student:
        raise UserError(f"layer map {layers} has {len(layers)} entries for a {n_student}-layer student")
    bad = [t for t in layers if not 0 <= t < n_teacher]
    if bad:
        raise UserError(f"layer map {layers} names layers {bad} outside the teacher's 0..{n_teacher - 1}")
    return LayerMap(tuple(layers), n_teacher)
