"""The known checkpoints: where they come from, their checksums and what they do.

Each entry is plain data. The store (:mod:`napari_segsuite.models.store`) turns
an entry into a local path, downloading only when asked to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from napari_segsuite.core.vocabulary import Family, Task

SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
TORCHVISION_URL = "https://download.pytorch.org/models/"
YOLO_URL = "https://github.com/ultralytics/assets/releases/download/v8.3.0/"


@dataclass(frozen=True)
class ModelEntry:
    """One known checkpoint.

    Parameters
    ----------
    name : str
        Registry key, e.g. ``"sam_vit_b"``.
    family : Family
        Runner family (a key of :data:`napari_segsuite.models.base.FAMILIES`).
    tasks : tuple of Task
        What it does (prompt, automatic, video, semantic, instance, panoptic, detection, concepts).
    title : str
        Human-readable name for pickers.
    url : str, optional
        Direct download address of a single file.
    sha256 : str, optional
        Full SHA-256 of that file.
    sha256_prefix : str, optional
        A prefix of the SHA-256 (torchvision publishes one in each file name).
    hf_repo : str, optional
        Hugging Face repository for folder checkpoints (transformers).
    arch : str, optional
        Architecture name the family's loader needs (torchvision builder, SAM type).
    size_mb : float, optional
        Approximate download size.
    needs_unpickling : bool
        The format runs Python pickle code when loaded (ultralytics ``.pt``).
    extra : dict
        Family-specific data; ``folder_family`` names the family sub-folder a
        checkpoint is stored under when several families load the same
        download (SAM 3's concept model and its tracker share ``facebook/sam3``).
    """

    name: str
    family: Family | str
    tasks: tuple[Task | str, ...]
    title: str
    url: str | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None
    hf_repo: str | None = None
    arch: str | None = None
    size_mb: float | None = None
    needs_unpickling: bool = False
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def filename(self) -> str | None:
        """File name of a single-file checkpoint."""
        return self.url.rsplit("/", 1)[-1] if self.url else None

    @property
    def is_folder(self) -> bool:
        """Whether the checkpoint is a folder (transformers ``save_pretrained`` layout)."""
        return self.hf_repo is not None

    @property
    def verified(self) -> bool:
        """Whether the store can check the file against a full checksum."""
        return self.sha256 is not None


def _sam(kind: str, file: str, sha: str, size: float) -> ModelEntry:
    return ModelEntry(
        name=f"sam_{kind}", family=Family.SAM, tasks=(Task.PROMPT, Task.AUTOMATIC),
        title=f"SAM {kind.replace('_', '-').upper()} (Meta)", url=SAM_URL + file, sha256=sha,
        arch=kind, size_mb=size,
    )


def _hf(name, family, tasks, title, repo, size) -> ModelEntry:
    return ModelEntry(name=name, family=family, tasks=tasks, title=title, hf_repo=repo, size_mb=size)


def _tv(name, tasks, title, file, arch, size) -> ModelEntry:
    prefix = file.rsplit("-", 1)[-1].split(".")[0]
    return ModelEntry(
        name=name, family=Family.TORCHVISION, tasks=tasks, title=title, url=TORCHVISION_URL + file,
        sha256_prefix=prefix, arch=arch, size_mb=size,
    )


def _yolo(size_letter: str, size: float) -> ModelEntry:
    return ModelEntry(
        name=f"yolo11{size_letter}_seg", family=Family.YOLO, tasks=(Task.INSTANCE,),
        title=f"YOLO11{size_letter}-seg (Ultralytics, COCO)", url=YOLO_URL + f"yolo11{size_letter}-seg.pt",
        size_mb=size, needs_unpickling=True,
    )


ENTRIES: tuple[ModelEntry, ...] = (
    # Segment Anything, Meta's official checkpoints and checksums.
    _sam("vit_b", "sam_vit_b_01ec64.pth", "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", 358),
    _sam("vit_l", "sam_vit_l_0b3195.pth", "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", 1190),
    _sam("vit_h", "sam_vit_h_4b8939.pth", "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", 2440),
    # SAM 2.1 image models through transformers.
    _hf("sam2.1_hiera_tiny", Family.SAM2, (Task.PROMPT, Task.AUTOMATIC, Task.VIDEO), "SAM 2.1 Hiera tiny", "facebook/sam2.1-hiera-tiny", 156),
    _hf("sam2.1_hiera_small", Family.SAM2, (Task.PROMPT, Task.AUTOMATIC, Task.VIDEO), "SAM 2.1 Hiera small", "facebook/sam2.1-hiera-small", 184),
    _hf("sam2.1_hiera_base_plus", Family.SAM2, (Task.PROMPT, Task.AUTOMATIC, Task.VIDEO), "SAM 2.1 Hiera base+", "facebook/sam2.1-hiera-base-plus", 324),
    _hf("sam2.1_hiera_large", Family.SAM2, (Task.PROMPT, Task.AUTOMATIC, Task.VIDEO), "SAM 2.1 Hiera large", "facebook/sam2.1-hiera-large", 898),
    # EdgeTAM: an on-device SAM 2, the fastest prompt model on a CPU (image encoder ~0.6 s at 1024 px).
    _hf("edgetam", Family.EDGETAM, (Task.PROMPT, Task.AUTOMATIC, Task.VIDEO), "EdgeTAM (fastest on CPU)", "yonigozlan/EdgeTAM-hf", 55),
    # SAM 3: concepts in words or by example (one folder: detector, tracker and video weights).
    _hf("sam3", Family.SAM3, (Task.INSTANCE, Task.CONCEPTS), "SAM 3 concepts (Meta)", "facebook/sam3", 3450),
    ModelEntry(
        name="sam3_tracker", family=Family.SAM3_TRACKER, tasks=(Task.PROMPT, Task.AUTOMATIC, Task.VIDEO),
        title="SAM 3 tracker (points and boxes, Meta)", hf_repo="facebook/sam3", size_mb=3450,
        extra={"folder_family": Family.SAM3},
    ),
    # Open-vocabulary detectors: boxes for objects named in words, masks from a prompt model.
    _hf("grounding_dino_tiny", Family.GROUNDING_DINO, (Task.DETECTION,), "Grounding DINO tiny (open vocabulary)", "IDEA-Research/grounding-dino-tiny", 690),
    _hf("grounding_dino_base", Family.GROUNDING_DINO, (Task.DETECTION,), "Grounding DINO base (open vocabulary)", "IDEA-Research/grounding-dino-base", 940),
    _hf("mm_grounding_dino_tiny", Family.GROUNDING_DINO, (Task.DETECTION,), "MM-Grounding-DINO tiny (open vocabulary)", "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det", 700),
    _hf("owlv2_base_ensemble", Family.OWLV2, (Task.DETECTION,), "OWLv2 base patch16 ensemble (open vocabulary)", "google/owlv2-base-patch16-ensemble", 620),
    # SegFormer (semantic).
    _hf("segformer_b0_ade", Family.SEGFORMER, (Task.SEMANTIC,), "SegFormer-B0 ADE20K 512", "nvidia/segformer-b0-finetuned-ade-512-512", 15),
    _hf("segformer_b2_ade", Family.SEGFORMER, (Task.SEMANTIC,), "SegFormer-B2 ADE20K 512", "nvidia/segformer-b2-finetuned-ade-512-512", 110),
    _hf("segformer_b0_cityscapes", Family.SEGFORMER, (Task.SEMANTIC,), "SegFormer-B0 Cityscapes 1024", "nvidia/segformer-b0-finetuned-cityscapes-1024-1024", 15),
    _hf("segformer_b5_cityscapes", Family.SEGFORMER, (Task.SEMANTIC,), "SegFormer-B5 Cityscapes 1024", "nvidia/segformer-b5-finetuned-cityscapes-1024-1024", 340),
    # Mask2Former (semantic, instance, panoptic).
    _hf("mask2former_swin_tiny_ade_semantic", Family.MASK2FORMER, (Task.SEMANTIC,), "Mask2Former Swin-T ADE20K semantic", "facebook/mask2former-swin-tiny-ade-semantic", 190),
    _hf("mask2former_swin_large_ade_semantic", Family.MASK2FORMER, (Task.SEMANTIC,), "Mask2Former Swin-L ADE20K semantic", "facebook/mask2former-swin-large-ade-semantic", 860),
    _hf("mask2former_swin_tiny_coco_instance", Family.MASK2FORMER, (Task.INSTANCE,), "Mask2Former Swin-T COCO instance", "facebook/mask2former-swin-tiny-coco-instance", 190),
    _hf("mask2former_swin_tiny_coco_panoptic", Family.MASK2FORMER, (Task.PANOPTIC,), "Mask2Former Swin-T COCO panoptic", "facebook/mask2former-swin-tiny-coco-panoptic", 190),
    _hf("mask2former_swin_large_coco_panoptic", Family.MASK2FORMER, (Task.PANOPTIC,), "Mask2Former Swin-L COCO panoptic", "facebook/mask2former-swin-large-coco-panoptic", 870),
    _hf("mask2former_swin_large_ade_panoptic", Family.MASK2FORMER, (Task.PANOPTIC,), "Mask2Former Swin-L ADE20K panoptic", "facebook/mask2former-swin-large-ade-panoptic", 870),
    _hf("mask2former_swin_large_cityscapes_panoptic", Family.MASK2FORMER, (Task.PANOPTIC,), "Mask2Former Swin-L Cityscapes panoptic", "facebook/mask2former-swin-large-cityscapes-panoptic", 870),
    # YOLO11 segmentation. Ultralytics publishes no checksums, so these entries carry none and
    # the store marks them untrusted (YoloRunner refuses to unpickle them; README, Safety).
    _yolo("n", 6), _yolo("s", 20), _yolo("m", 44), _yolo("l", 54), _yolo("x", 120),
    # torchvision; the file names carry a prefix of each file's SHA-256.
    _tv("deeplabv3_resnet50_voc", (Task.SEMANTIC,), "DeepLabV3 ResNet-50 (VOC classes)", "deeplabv3_resnet50_coco-cd0a2569.pth", "deeplabv3_resnet50", 161),
    _tv("deeplabv3_resnet101_voc", (Task.SEMANTIC,), "DeepLabV3 ResNet-101 (VOC classes)", "deeplabv3_resnet101_coco-586e9e4e.pth", "deeplabv3_resnet101", 233),
    _tv("deeplabv3_mobilenet_v3_large_voc", (Task.SEMANTIC,), "DeepLabV3 MobileNetV3 (VOC classes)", "deeplabv3_mobilenet_v3_large-fc3c493d.pth", "deeplabv3_mobilenet_v3_large", 42),
    _tv("lraspp_mobilenet_v3_large_voc", (Task.SEMANTIC,), "LRASPP MobileNetV3 (VOC classes)", "lraspp_mobilenet_v3_large-d234d4ea.pth", "lraspp_mobilenet_v3_large", 12.5),
    _tv("maskrcnn_resnet50_fpn_coco", (Task.INSTANCE,), "Mask R-CNN ResNet-50 FPN (COCO)", "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth", "maskrcnn_resnet50_fpn", 170),
    _tv("maskrcnn_resnet50_fpn_v2_coco", (Task.INSTANCE,), "Mask R-CNN ResNet-50 FPN v2 (COCO)", "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth", "maskrcnn_resnet50_fpn_v2", 177),
)

REGISTRY: dict[str, ModelEntry] = {e.name: e for e in ENTRIES}


def entries_for(task: str | None = None, family: str | None = None) -> list[ModelEntry]:
    """Registry entries that do ``task`` (and belong to ``family``), in registry order."""
    return [
        e for e in ENTRIES
        if (task is None or task in e.tasks) and (family is None or e.family == family)
    ]


def get_entry(name: str) -> ModelEntry:
    """Look up a registry entry by name, with a helpful error listing close names."""
    try:
        return REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"No model named {name!r} in the registry.{hint}") from None
