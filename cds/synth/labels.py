"""Label vocabulary of the synthetic anatomy: internal tissue ids and the ground-truth label table.

Two layers, because rendering and ground truth need different distinctions:

* internal ids (``Tissue`` + structure) say what a voxel *is made of* (marrow vs cortex, nucleus vs
  annulus) so that the MR contrast model can give each its own signal;
* ground-truth values (``GT_LABELS``) say *which structure* a voxel belongs to (vertebra L4, disc
  L4-L5, dural sac ...), which is what a segmentation model is trained on.

``internal_to_gt()`` maps the first to the second with one lookup table. ``GT_GROUPS`` names the unions that
match the SPIDER classes (vertebra incl. posterior elements, disc, spinal canal) so a trainer can map our
labels to SPIDER's in one line.
"""

from __future__ import annotations

import itertools
from enum import IntEnum
from types import MappingProxyType
from typing import Final

import numpy as np

#: Vertebrae modelled, cranial to caudal (T10..S4 so that any sagittal field of view has bone in it).
VERTEBRAE: Final[tuple[str, ...]] = (
    "T10",
    "T11",
    "T12",
    "L1",
    "L2",
    "L3",
    "L4",
    "L5",
    "S1",
    "S2",
    "S3",
    "S4",
)
#: Mobile discs modelled (between consecutive vertebrae down to L5-S1), cranial to caudal.
DISCS: Final[tuple[str, ...]] = tuple(f"{a}-{b}" for a, b in itertools.pairwise(VERTEBRAE[:9]))

N_V = len(VERTEBRAE)
N_D = len(DISCS)


class Tissue(IntEnum):
    """What a voxel is made of; the MR contrast model assigns each a T1 and a T2 signal."""

    AIR = 0
    MARROW = 1
    CORTEX = 2
    POSTERIOR_BONE = 3
    NUCLEUS = 4
    ANNULUS = 5
    CSF = 6
    CAUDA_ROOT = 7
    CORD = 8
    EPIDURAL_FAT = 9
    LIGAMENT = 10
    JOINT_FLUID = 11
    NERVE = 12
    MUSCLE = 13
    FAT = 14
    SKIN = 15
    VISCERA = 16
    VESSEL = 17
    ARTICULAR_BONE = 18
    MARROW_LESION = 19  # fatty marrow: Modic type 2 endplate change, haemangioma (bright on T1 and T2)


# ---- internal ids (uint8) -------------------------------------------------------------------
# Per-vertebra / per-disc blocks, then single structures.
MARROW0: Final = 1  # + vertebra index
CORTEX0: Final = MARROW0 + N_V
POST0: Final = CORTEX0 + N_V  # posterior elements (pedicle, lamina, spinous/transverse process)
ARTIC0: Final = POST0 + N_V  # articular processes (facets)
NUCLEUS0: Final = ARTIC0 + N_V  # + disc index
ANNULUS0: Final = NUCLEUS0 + N_D
_NEXT = ANNULUS0 + N_D
CSF: Final = _NEXT
CAUDA: Final = _NEXT + 1
CORD: Final = _NEXT + 2
EPIDURAL_FAT: Final = _NEXT + 3
FLAVUM: Final = _NEXT + 4
FACET_JOINT: Final = _NEXT + 5
ROOT_LEFT: Final = _NEXT + 6
ROOT_RIGHT: Final = _NEXT + 7
FORAMEN_FAT_LEFT: Final = _NEXT + 8
FORAMEN_FAT_RIGHT: Final = _NEXT + 9
MUSCLE: Final = _NEXT + 10
PSOAS: Final = _NEXT + 11
SUBCUT_FAT: Final = _NEXT + 12
SKIN: Final = _NEXT + 13
VISCERA: Final = _NEXT + 14
VESSEL: Final = _NEXT + 15
RETRO_FAT: Final = _NEXT + 16
LESION0: Final = _NEXT + 17  # + vertebra index: marrow lesion inside that vertebral body
N_INTERNAL: Final = LESION0 + N_V

# ---- ground-truth label values written to truth/labels/*.npz -----------------------------------
GT_VERTEBRA0: Final = 1  # 1..12 vertebra_T10..vertebra_S4 (body incl. cortex)
GT_DISC0: Final = 21  # 21..28 disc_T10-T11..disc_L5-S1
GT_POST0: Final = 31  # 31..42 posterior_elements_<V> (pedicles, laminae, spinous/transverse processes)
GT_FACET0: Final = 51  # 51..62 facets_<V> (superior + inferior articular processes of that vertebra)
GT_DURAL_SAC: Final = 70  # CSF in the thecal sac
GT_CAUDA: Final = 71  # intrathecal nerve roots (cauda equina)
GT_CORD: Final = 72  # spinal cord / conus
GT_EPIDURAL_FAT: Final = 73
GT_FLAVUM: Final = 74  # ligamentum flavum
GT_FACET_JOINT: Final = 75
GT_ROOT_LEFT: Final = 76  # exiting nerve root in the foramen
GT_ROOT_RIGHT: Final = 77
GT_FORAMEN_LEFT: Final = 78  # perineural (foraminal) fat
GT_FORAMEN_RIGHT: Final = 79
GT_MUSCLE: Final = 80  # paraspinal and psoas muscles
GT_FAT: Final = 81  # subcutaneous and retroperitoneal fat
GT_OTHER: Final = 82  # skin, viscera, vessels


def _gt_names() -> dict[int, str]:
    names = {0: "background"}
    for i, v in enumerate(VERTEBRAE):
        names[GT_VERTEBRA0 + i] = f"vertebra_{v}"
        names[GT_POST0 + i] = f"posterior_elements_{v}"
        names[GT_FACET0 + i] = f"facets_{v}"
    for j, d in enumerate(DISCS):
        names[GT_DISC0 + j] = f"disc_{d}"
    names.update(
        {
            GT_DURAL_SAC: "dural_sac",
            GT_CAUDA: "cauda_equina",
            GT_CORD: "spinal_cord",
            GT_EPIDURAL_FAT: "epidural_fat",
            GT_FLAVUM: "ligamentum_flavum",
            GT_FACET_JOINT: "facet_joint",
            GT_ROOT_LEFT: "nerve_root_left",
            GT_ROOT_RIGHT: "nerve_root_right",
            GT_FORAMEN_LEFT: "foraminal_fat_left",
            GT_FORAMEN_RIGHT: "foraminal_fat_right",
            GT_MUSCLE: "muscle",
            GT_FAT: "fat",
            GT_OTHER: "other_soft_tissue",
        }
    )
    return names


#: value -> name of every ground-truth label.
GT_LABELS: Final = MappingProxyType(_gt_names())

#: SPIDER-compatible unions: SPIDER "vertebra" includes posterior elements; "canal" is the spinal canal.
GT_GROUPS: Final = MappingProxyType(
    {
        "vertebra": tuple(
            sorted(
                [GT_VERTEBRA0 + i for i in range(N_V)]
                + [GT_POST0 + i for i in range(N_V)]
                + [GT_FACET0 + i for i in range(N_V)]
            )
        ),
        "disc": tuple(GT_DISC0 + j for j in range(N_D)),
        "canal": (GT_DURAL_SAC, GT_CAUDA, GT_CORD),
        "canal_with_epidural_fat": (GT_DURAL_SAC, GT_CAUDA, GT_CORD, GT_EPIDURAL_FAT),
        "foramen": (GT_ROOT_LEFT, GT_ROOT_RIGHT, GT_FORAMEN_LEFT, GT_FORAMEN_RIGHT),
    }
)


def _tables() -> tuple[np.ndarray, np.ndarray]:
    tissue = np.zeros(256, np.uint8)
    gt = np.zeros(256, np.uint8)
    for i in range(N_V):
        tissue[MARROW0 + i], gt[MARROW0 + i] = Tissue.MARROW, GT_VERTEBRA0 + i
        tissue[CORTEX0 + i], gt[CORTEX0 + i] = Tissue.CORTEX, GT_VERTEBRA0 + i
        tissue[POST0 + i], gt[POST0 + i] = Tissue.POSTERIOR_BONE, GT_POST0 + i
        tissue[ARTIC0 + i], gt[ARTIC0 + i] = Tissue.ARTICULAR_BONE, GT_FACET0 + i
        tissue[LESION0 + i], gt[LESION0 + i] = Tissue.MARROW_LESION, GT_VERTEBRA0 + i
    for j in range(N_D):
        tissue[NUCLEUS0 + j], gt[NUCLEUS0 + j] = Tissue.NUCLEUS, GT_DISC0 + j
        tissue[ANNULUS0 + j], gt[ANNULUS0 + j] = Tissue.ANNULUS, GT_DISC0 + j
    singles = {
        CSF: (Tissue.CSF, GT_DURAL_SAC),
        CAUDA: (Tissue.CAUDA_ROOT, GT_CAUDA),
        CORD: (Tissue.CORD, GT_CORD),
        EPIDURAL_FAT: (Tissue.EPIDURAL_FAT, GT_EPIDURAL_FAT),
        FLAVUM: (Tissue.LIGAMENT, GT_FLAVUM),
        FACET_JOINT: (Tissue.JOINT_FLUID, GT_FACET_JOINT),
        ROOT_LEFT: (Tissue.NERVE, GT_ROOT_LEFT),
        ROOT_RIGHT: (Tissue.NERVE, GT_ROOT_RIGHT),
        FORAMEN_FAT_LEFT: (Tissue.EPIDURAL_FAT, GT_FORAMEN_LEFT),
        FORAMEN_FAT_RIGHT: (Tissue.EPIDURAL_FAT, GT_FORAMEN_RIGHT),
        MUSCLE: (Tissue.MUSCLE, GT_MUSCLE),
        PSOAS: (Tissue.MUSCLE, GT_MUSCLE),
        SUBCUT_FAT: (Tissue.FAT, GT_FAT),
        SKIN: (Tissue.SKIN, GT_OTHER),
        VISCERA: (Tissue.VISCERA, GT_OTHER),
        VESSEL: (Tissue.VESSEL, GT_OTHER),
        RETRO_FAT: (Tissue.FAT, GT_FAT),
    }
    for k, (t, g) in singles.items():
        tissue[k], gt[k] = t, g
    return tissue, gt


_TISSUE_OF, _GT_OF = _tables()


def tissue_of(internal: np.ndarray) -> np.ndarray:
    """Tissue class of each internal id (same shape)."""
    return _TISSUE_OF[internal]


def internal_to_gt(internal: np.ndarray) -> np.ndarray:
    """Ground-truth label value of each internal id (same shape, uint8)."""
    return _GT_OF[internal]


#: Internal ids that make up the dural sac contents (what DSCA counts).
SAC_IDS: Final = (CSF, CAUDA, CORD)
