"""Anny bodies with varied identities: phenotype, skin tone, clothing colours painted on vertex regions.

Anny (Z up, faces -Y, left is +X, A-pose rest) is loaded once per process; its first build takes ~60-90 s
and writes ~800 MB under ANNY_CACHE_DIR (scripts/env.sh points it into .cache/), later loads take ~3 s.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np

# Named colours so that captions can say what the renders show (sRGB 0-1).
SKIN_TONES = {
    "very light": (0.96, 0.80, 0.69), "light": (0.91, 0.72, 0.58), "medium": (0.80, 0.60, 0.45),
    "olive": (0.70, 0.53, 0.37), "brown": (0.55, 0.38, 0.26), "dark": (0.36, 0.24, 0.16),
}
SHIRT_COLOURS = {
    "red": (0.80, 0.12, 0.12), "blue": (0.15, 0.30, 0.80), "green": (0.15, 0.60, 0.25),
    "yellow": (0.95, 0.80, 0.15), "white": (0.92, 0.92, 0.92), "black": (0.10, 0.10, 0.10),
    "orange": (0.95, 0.50, 0.10), "purple": (0.50, 0.20, 0.65), "pink": (0.95, 0.55, 0.70),
    "teal": (0.10, 0.55, 0.55), "grey": (0.50, 0.50, 0.52),
}
PANTS_COLOURS = {
    "dark blue": (0.10, 0.15, 0.35), "black": (0.08, 0.08, 0.08), "khaki": (0.72, 0.65, 0.45),
    "grey": (0.40, 0.40, 0.42), "brown": (0.40, 0.26, 0.15), "light blue": (0.45, 0.60, 0.80),
    "olive": (0.35, 0.38, 0.18),
}
HAIR_COLOURS = {"black": (0.05, 0.04, 0.03), "brown": (0.30, 0.18, 0.08), "blond": (0.85, 0.70, 0.40),
                "grey": (0.60, 0.60, 0.60), "red": (0.55, 0.20, 0.08)}
SHOE_COLOURS = {"white": (0.90, 0.90, 0.90), "black": (0.07, 0.07, 0.07), "brown": (0.35, 0.20, 0.10)}

REGIONS = ("skin", "hair", "eyes", "shirt", "sleeve", "pants", "leg", "shoes")


@dataclass(frozen=True)
class Identity:
    identity_id: str
    gender: float  # Anny phenotypes in [0, 1]: gender 0 = male, 1 = female
    age: float  # Anny's age axis: 2/3 = young adult, 1 = old
    muscle: float
    weight: float
    height: float
    proportions: float
    skin: str
    hair: str
    shirt: str
    pants: str
    shoes: str
    long_sleeves: bool
    long_pants: bool

    def phenotype(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in ("gender", "age", "muscle", "weight", "height", "proportions")}

    def describe(self) -> str:
        """Caption subject, e.g. 'A tall young man in a blue long-sleeved shirt and khaki shorts'."""
        size = "tall " if self.height > 0.7 else "short " if self.height < 0.3 else ""
        build = "heavy-set " if self.weight > 0.75 else "slim " if self.weight < 0.25 else (
            "muscular " if self.muscle > 0.75 else "")
        age = "young " if self.age < 0.75 else "older " if self.age > 0.9 else "middle-aged "
        who = "woman" if self.gender > 0.5 else "man"
        top = f"{self.shirt} {'long-sleeved shirt' if self.long_sleeves else 't-shirt'}"
        bottom = f"{self.pants} {'trousers' if self.long_pants else 'shorts'}"
        words = f"{size}{build}{age}{who}".strip()
        article = "An" if words[0] in "aeiou" else "A"
        return f"{article} {words} in a {top} and {bottom}"

    def to_dict(self) -> dict:
        return asdict(self)


def sample_identities(count: int, seed: int) -> list[Identity]:
    """`count` distinct identities from a seed: genders alternate, everything else is drawn."""
    rng = np.random.default_rng([seed, 1])
    out = []
    for i in range(count):
        out.append(Identity(
            identity_id=f"id{i:02d}",
            gender=float(np.clip((i % 2) + rng.normal(0, 0.08), 0, 1)),
            age=float(rng.uniform(0.62, 0.97)),
            muscle=float(rng.uniform(0.1, 0.9)),
            weight=float(rng.uniform(0.1, 0.9)),
            height=float(rng.uniform(0.05, 0.95)),
            proportions=float(rng.uniform(0.2, 0.8)),
            skin=str(rng.choice(list(SKIN_TONES))),
            hair=str(rng.choice(list(HAIR_COLOURS))),
            shirt=list(SHIRT_COLOURS)[(i * 4 + int(rng.integers(0, 3))) % len(SHIRT_COLOURS)],
            pants=str(rng.choice(list(PANTS_COLOURS))),
            shoes=str(rng.choice(list(SHOE_COLOURS))),
            long_sleeves=bool(rng.random() < 0.5),
            long_pants=bool(rng.random() < 0.65),
        ))
    return out


@functools.cache
def load_model():
    """Anny with its default 'local-ref' pose parameterization (what the ground truth stores)."""
    import anny  # imported lazily: warp initialises on import

    model = anny.Anny()
    model.eval()
    return model


@functools.cache
def coco_regressor():
    import anny

    return anny.KeypointsRegressor.coco(load_model())


@functools.cache
def triangles() -> np.ndarray:
    return load_model().get_triangular_faces().numpy().astype(np.int32)


@functools.cache
def vertex_regions() -> np.ndarray:
    """Region index (into REGIONS) of each vertex, from its dominant skinning bone and the rest geometry."""
    import torch

    model = load_model()
    labels = model.bone_labels
    weights = model.vertex_bone_weights.numpy()
    bones = model.vertex_bone_indices.numpy()
    dominant = bones[np.arange(len(bones)), weights.argmax(1)]
    with torch.no_grad():
        rest = model()["vertices"][0].numpy()
    eye = model()["rest_bone_heads"][0, labels.index("eye.L")].numpy()

    def bone_set(*prefixes):
        return np.isin(dominant, [i for i, b in enumerate(labels) if b.startswith(prefixes)])

    region = np.full(len(dominant), REGIONS.index("skin"), dtype=np.int8)
    region[bone_set("spine04", "spine03", "spine02", "spine01", "clavicle", "shoulder01", "upperarm")] = 3
    region[bone_set("lowerarm")] = REGIONS.index("sleeve")
    region[bone_set("root", "pelvis", "spine05", "upperleg")] = REGIONS.index("pants")
    region[bone_set("lowerleg")] = REGIONS.index("leg")
    region[bone_set("foot", "toe")] = REGIONS.index("shoes")
    region[bone_set("eye")] = REGIONS.index("eyes")
    # Hair cap: head vertices above the brow, or behind the ears (Anny is bald; faces -Y, so back is +Y).
    head = bone_set("head")
    dz, dy = rest[:, 2] - eye[2], rest[:, 1] - eye[1]
    region[head & ((dz > 0.035) | ((dz > -0.06) & (dy > 0.10)))] = REGIONS.index("hair")
    return region


def vertex_colors(identity: Identity) -> np.ndarray:
    """(V, 3) float32 sRGB colours of the identity's skin, hair and clothes."""
    skin = SKIN_TONES[identity.skin]
    table = {
        "skin": skin, "hair": HAIR_COLOURS[identity.hair], "eyes": (0.12, 0.08, 0.06),
        "shirt": SHIRT_COLOURS[identity.shirt],
        "sleeve": SHIRT_COLOURS[identity.shirt] if identity.long_sleeves else skin,
        "pants": PANTS_COLOURS[identity.pants],
        "leg": PANTS_COLOURS[identity.pants] if identity.long_pants else skin,
        "shoes": SHOE_COLOURS[identity.shoes],
    }
    palette = np.array([table[r] for r in REGIONS], dtype=np.float32)
    return palette[vertex_regions()]
