"""Models by name: where each comes from, whether it is usable offline, and how to build it.

Downloaded weights live in ``<cache>/models`` (``$PATHSEG_CACHE``, default ``~/.cache/pathseg``). A file is
verified against its published hash once, then marked with a ``.verified`` stamp. Any model can also be given
as a local path (``--model /path/to/checkpoint.pth`` or a pathseg model folder).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pathseg.download import DownloadError, cache_dir, download, verify
from pathseg.errors import PathsegError
from pathseg.models.base import NucleusModel
from pathseg.models.folder import folder_task
from pathseg.progress import ProgressCallback


@dataclass(frozen=True)
class RemoteFile:
    """A published weight file: cache file name, download address, and ``algo:hex`` hash."""

    filename: str
    url: str
    known_hash: str
    size_mb: float | None = None


@dataclass(frozen=True)
class ModelEntry:
    """One named model. ``build(paths)`` makes it from the local paths of its ``files`` (in order)."""

    name: str
    task: str
    description: str
    mpp: float
    build: Callable[[list[Path]], object]
    files: tuple[RemoteFile, ...] = field(default_factory=tuple)
    bundled: Path | None = None
    manual: str = ""  #: for weights no program can fetch: where they are published (converted by hand)

    @property
    def source(self) -> str:
        """``built-in``, ``bundled``, or ``download: <host>`` (full addresses: :attr:`files`)."""
        if self.bundled is not None:
            return "bundled"
        if self.manual:
            return "manual: " + self.manual.split("/")[2]
        if not self.files:
            return "built-in"
        hosts = sorted({f.url.split("/")[2] for f in self.files})
        size = sum(f.size_mb or 0 for f in self.files)
        return "download: " + ", ".join(hosts) + (f" ({size:g} MB)" if size else "")

    def offline(self) -> bool:
        """True if the model can be built now without a network."""
        if self.bundled is not None:
            return (self.bundled / "model.safetensors").is_file()
        if self.manual:
            return (models_dir() / self.name / "model.safetensors").is_file()
        return all(_is_verified(models_dir() / f.filename, f.known_hash) for f in self.files)


def models_dir() -> Path:
    """Where downloaded weights are kept: ``<cache>/models``."""
    path = cache_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _is_verified(path: Path, known_hash: str) -> bool:
    stamp = _stamp(path)
    return (
        path.is_file()
        and stamp.is_file()
        and stamp.read_text().strip() == known_hash
        and stamp.stat().st_mtime >= path.stat().st_mtime
    )


def ensure_file(
    f: RemoteFile, offline: bool = False, timeout: float = 60.0, progress: ProgressCallback | None = None
) -> Path:
    """Local path of ``f``: verified cache copy, else a hash-checked download; clear instructions if impossible."""
    path = models_dir() / f.filename
    if _is_verified(path, f.known_hash):
        return path
    if path.is_file():  # placed by hand, or an older download: check it once
        if verify(path, f.known_hash):
            _stamp(path).write_text(f.known_hash)
            return path
        raise PathsegError(f"{path}: does not match the published hash {f.known_hash}; delete it and retry")
    if not offline and os.environ.get("PATHSEG_OFFLINE", "") in ("", "0"):
        try:
            download(f.url, path, f.known_hash, timeout=timeout, progress=progress)
            _stamp(path).write_text(f.known_hash)
            return path
        except DownloadError as exc:
            reason = str(exc)
    else:
        reason = "offline mode (PATHSEG_OFFLINE is set)"
    size = f" ({f.size_mb:g} MB)" if f.size_mb else ""
    raise PathsegError(
        f"{f.filename} is not available: {reason}\n"
        f"  On a machine with internet access, download {f.url}{size}\n"
        f"  and put it at {path} (its {f.known_hash.split(':')[0]} must be {f.known_hash.split(':')[-1]}),\n"
        "  or pass the checkpoint's path with --model PATH."
    )


_REGISTRY: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> None:
    """Add a model to the zoo (an entry with the same name is replaced)."""
    _REGISTRY[entry.name] = entry


def unregister(name: str) -> None:
    """Remove a model from the zoo (no error if absent)."""
    _REGISTRY.pop(name, None)


def _classical(_: list[Path]) -> NucleusModel:
    from pathseg.models.classical import ClassicalModel

    return ClassicalModel()


register(
    ModelEntry(
        "classical",
        "nuclei",
        "weight-free: haematoxylin threshold + distance-transform watershed (parameters in µm)",
        0.25,
        _classical,
    )
)


def _sam_builder(name: str, size: str, mpp: float) -> Callable[[list[Path]], object]:
    def build(paths: list[Path]):
        from pathseg.models.nucleus_sam import attach_semantic, from_checkpoint

        model = from_checkpoint(
            paths[0], size=size, decoder_path=paths[1] if len(paths) > 1 else None, mpp=mpp, name=name
        )
        if len(paths) > 2:
            attach_semantic(model, paths[2])
        return model

    return build


# Official addresses and hashes as published in micro-sam's model registry (SAM: Meta; PathoSAM: Archit et al.).
_SAM = "https://dl.fbaipublicfiles.com/segment_anything/"
_OWN = "https://owncloud.gwdg.de/index.php/s/"
SAM_FILES = {
    "vit_b": RemoteFile(
        "sam_vit_b_01ec64.pth", _SAM + "sam_vit_b_01ec64.pth", "xxh128:6923c33df3637b6a922d7682bfc9a86b", 375
    ),
    "vit_l": RemoteFile(
        "sam_vit_l_0b3195.pth", _SAM + "sam_vit_l_0b3195.pth", "xxh128:a82beb3c660661e3dd38d999cc860e9a", 1250
    ),
    "vit_h": RemoteFile(
        "sam_vit_h_4b8939.pth", _SAM + "sam_vit_h_4b8939.pth", "xxh128:97698fac30bd929c2e6d8d8cc15933c2", 2560
    ),
}
PATHOSAM_FILES = {
    "vit_b": (
        RemoteFile(
            "vit_b_histopathology", _OWN + "sBB4H8CTmIoBZsQ/download", "xxh128:ffd1a2cd84570458b257bd95fdd8f974"
        ),
        RemoteFile(
            "vit_b_histopathology_decoder", _OWN + "KO9AWqynI7SFOBj/download", "xxh128:6a66194dcb6e36199cbee2214ecf7213"
        ),
    ),
    "vit_l": (
        RemoteFile(
            "vit_l_histopathology", _OWN + "IZgnn1cpBq2PHod/download", "xxh128:b591833c89754271023e901281dee3f2"
        ),
        RemoteFile(
            "vit_l_histopathology_decoder", _OWN + "oIs6VSmkOp7XrKF/download", "xxh128:46aab7765d4400e039772d5a50b55c04"
        ),
    ),
    "vit_h": (
        RemoteFile(
            "vit_h_histopathology", _OWN + "L7AcvVz7DoWJ2RZ/download", "xxh128:bd1856dafc156a43fb3aa705f1a6e92e"
        ),
        RemoteFile(
            "vit_h_histopathology_decoder", _OWN + "1qAKxy5H0jgwZvM/download", "xxh128:3ed9f87e46ad5e16935bd8d722c8dc47"
        ),
    ),
}
PATHOSAM_SEMANTIC = RemoteFile(
    "vit_b_histopathology_semantic_segmentation_decoder",
    _OWN + "TFbI25UZoixd1hi/download",
    "sha256:bdd05a55c72c02abce72a7aa6885c6ec21df9c43fda9cf3c5d11ef5788de0ab0",
)

for _size, _file in SAM_FILES.items():
    register(
        ModelEntry(
            f"sam_{_size}",
            "nuclei",
            f"Segment Anything {_size} (Meta); prompts only, no AIS decoder",
            0.25,
            _sam_builder(f"sam_{_size}", _size, 0.25),
            (_file,),
        )
    )
for _size, _files in PATHOSAM_FILES.items():
    register(
        ModelEntry(
            f"pathosam_{_size}",
            "nuclei",
            f"PathoSAM {_size} generalist + AIS decoder",
            0.25,
            _sam_builder(f"pathosam_{_size}", _size, 0.25),
            _files,
        )
    )
register(
    ModelEntry(
        "pathosam_vit_b_semantic",
        "nuclei",
        "PathoSAM vit_b + AIS decoder + semantic decoder (PanNuke: 5 classes + background)",
        0.25,
        _sam_builder("pathosam_vit_b_semantic", "vit_b", 0.25),
        (*PATHOSAM_FILES["vit_b"], PATHOSAM_SEMANTIC),
    )
)

#: HIPT's ViT-S/16 patch encoder (DINO on TCGA 256² patches at 20x), the conditioner of the Large-Image-Diffusion
#: model: a git-LFS object of mahmoodlab/HIPT (sha256 and size from its LFS pointer).
HIPT_VIT256 = RemoteFile(
    "vit256_small_dino.pth",
    "https://media.githubusercontent.com/media/mahmoodlab/HIPT/master/HIPT_4K/Checkpoints/vit256_small_dino.pth",
    "sha256:6960cd5a8657dc8bb214671aa0c6dbd3f5b698e84386884955836487ddc89e24",
    704.2,
)


def _hipt_builder(paths: list[Path]):
    from pathseg.models.diffusion.hipt import load_hipt

    return load_hipt(paths[0])


register(
    ModelEntry(
        "hipt_vit256_small",
        "encoder",
        "HIPT ViT-S/16 patch encoder (DINO, TCGA, 20x): conditions the PathSegDiff diffusion backbone",
        0.5,
        _hipt_builder,
        (HIPT_VIT256,),
    )
)

#: The Large-Image-Diffusion BRCA 20x model (Graikos et al., CVPR 2024): a Google Drive folder, no direct address
#: and no published hash, so it is fetched by hand and converted with `pathseg models convert-ldm`.
LDM_BRCA20X_FOLDER = "https://drive.google.com/drive/folders/1kZ69wVEHV3k3Zr1hgS3kftz9cfNb9BxA"


def _converted_builder(name: str) -> Callable[[list[Path]], object]:
    def build(_: list[Path]):
        from pathseg.models.diffusion.backbone import DiffusionBackbone

        folder = models_dir() / name
        if not (folder / "model.safetensors").is_file():
            raise PathsegError(
                f"{name} is not installed. Its weights are published only as a Google Drive folder, without a "
                f"hash:\n  {LDM_BRCA20X_FOLDER}\n  Download the checkpoint (.ckpt) and its YAML config there, then "
                f"run\n  pathseg models convert-ldm CKPT --config YAML --name {name}\n  which writes {folder}."
            )
        return DiffusionBackbone.from_pretrained(folder)

    return build


register(
    ModelEntry(
        "ldm_brca20x",
        "diffusion_backbone",
        "Large-Image-Diffusion BRCA 20x latent diffusion model (VQ-f4 + UNet, HIPT-conditioned); convert by hand",
        0.5,
        _converted_builder("ldm_brca20x"),
        manual=LDM_BRCA20X_FOLDER,
    )
)


def get_backbone(name: str | os.PathLike):
    """The diffusion backbone ``name``: a zoo name (e.g. ``ldm_brca20x`` once converted), a backbone folder, or a
    tissue model (name or folder), whose backbone is taken (``pathseg_tissue``: pathseg's own)."""
    from pathseg.models.diffusion.backbone import DiffusionBackbone

    if str(name) in _REGISTRY:
        entry = _REGISTRY[str(name)]
        if entry.task == "tissue":  # a tissue model's own backbone (e.g. the bundled one's)
            return get_tissue_model(str(name)).backbone
        if entry.task != "diffusion_backbone":
            raise PathsegError(f"model {name!r} is a {entry.task} model, not a diffusion backbone")
        return entry.build([ensure_file(f) for f in entry.files])
    if Path(name).is_dir() and folder_task(name) == "tissue":
        return get_tissue_model(name).backbone
    return DiffusionBackbone.from_pretrained(name)


#: Models shipped inside the package: ``pathseg/weights/<name>/`` holding config.json + model.safetensors.
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


def _bundled_builder(folder: Path, task: str = "nuclei") -> Callable[[list[Path]], object]:
    def build(_: list[Path]):
        if task == "tissue":
            from pathseg.tissue.model import TissueModel

            return TissueModel.from_pretrained(folder)
        from pathseg.models.nucleus_sam import SamNucleusModel

        return SamNucleusModel.from_pretrained(folder)

    return build


def register_bundled(weights_dir: Path = WEIGHTS_DIR) -> list[str]:
    """Register every model folder found under ``weights_dir`` (its config.json names task and pixel size)."""
    import json

    names = []
    for folder in sorted(p for p in weights_dir.glob("*") if (p / "config.json").is_file()):
        cfg = json.loads((folder / "config.json").read_text())
        name = cfg.get("name", folder.name)
        register(
            ModelEntry(
                name,
                cfg.get("task", "nuclei"),
                cfg.get("description", "bundled model"),
                float(cfg.get("mpp", 0.25)),
                _bundled_builder(folder, cfg.get("task", "nuclei")),
                bundled=folder,
            )
        )
        names.append(name)
    return names


register_bundled()

#: Nucleus models in order of preference for "the best model available offline". PathoSAM models stay opt-in
#: (--model): their 1024-px ViT decoders take ~30 s per 512-px tile on a laptop CPU.
NUCLEUS_PREFERENCE = ("pathseg_nuclei_cpu", "classical")


def list_models(task: str | None = None) -> list[ModelEntry]:
    """All registered models, optionally only those of ``task`` (``"nuclei"``, ``"tissue"``)."""
    return [e for e in _REGISTRY.values() if task is None or e.task == task]


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise PathsegError(f"unknown model {name!r}; available: {known} (see `pathseg models list`)") from None


def get_nucleus_model(name: str | os.PathLike | None = None, progress: ProgressCallback | None = None) -> NucleusModel:
    """Build the nucleus model ``name`` (a zoo name, a checkpoint file or a model folder); ``None``: best offline."""
    if name is None:
        name = default_nucleus_model()
    path = Path(name)
    if str(name) not in _REGISTRY and (path.exists() or os.sep in str(name)):
        return _from_path(path)
    entry = get_entry(str(name))
    if entry.task != "nuclei":
        raise PathsegError(_wrong_task(str(name), entry.task, "nuclei"))
    paths = [ensure_file(f, progress=progress) for f in entry.files]
    return entry.build(paths)  # type: ignore[return-value]


def _wrong_task(name: str, task: str, wanted: str) -> str:
    if task in ("nuclei", "tissue"):
        said = f"model {name!r} segments {task}, not {wanted}"
    else:  # an encoder or a diffusion backbone: a part that other models build on
        said = f"model {name!r} is a part that other models build on ({task}), not a {wanted} model"
    return f"{said}; `pathseg models list` shows each model's task"


def _from_path(path: Path) -> NucleusModel:
    from pathseg.models.nucleus_sam import SamNucleusModel, from_checkpoint

    if path.is_dir():
        task = folder_task(path)
        if task not in (None, "nuclei"):
            raise PathsegError(_wrong_task(str(path), task, "nuclei"))
        return SamNucleusModel.from_pretrained(path)
    if not path.exists():
        raise PathsegError(f"{path}: model file not found")
    return from_checkpoint(path, name=path.stem)


#: Tissue models in order of preference (bundled first).
TISSUE_PREFERENCE = ("pathseg_tissue",)


def get_tissue_model(name: str | os.PathLike | None = None, progress: ProgressCallback | None = None):
    """Build the tissue model ``name`` (a zoo name or a model folder); ``None``: the bundled default."""
    from pathseg.tissue.model import TissueModel

    if name is None:
        name = next((n for n in TISSUE_PREFERENCE if n in _REGISTRY and _REGISTRY[n].offline()), None)
        if name is None:
            raise PathsegError(
                "no tissue model is installed; train one with `pathseg train tissue` and pass --model RUN/best"
            )
    path = Path(name)
    if str(name) not in _REGISTRY and (path.exists() or os.sep in str(name)):
        if not path.is_dir():
            raise PathsegError(f"{path}: a tissue model is a folder holding config.json and model.safetensors")
        task = folder_task(path)
        if task not in (None, "tissue"):
            raise PathsegError(_wrong_task(str(path), task, "tissue"))
        return TissueModel.from_pretrained(path)
    entry = get_entry(str(name))
    if entry.task != "tissue":
        raise PathsegError(_wrong_task(str(name), entry.task, "tissue"))
    paths = [ensure_file(f, progress=progress) for f in entry.files]
    return entry.build(paths)


def default_nucleus_model() -> str:
    """Name of the most accurate nucleus model usable offline."""
    for name in NUCLEUS_PREFERENCE:
        if name in _REGISTRY and _REGISTRY[name].offline():
            return name
    return "classical"
