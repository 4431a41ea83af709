"""``pathseg train nuclei|nuclei-classes|nuclei-refiner|tissue`` and ``pathseg pretrain diffusion``."""

from __future__ import annotations

import argparse
import json

from pathseg.cli._common import fraction, int_at_least, log, non_negative_float, positive_float, share
from pathseg.progress import Bar

VAL_FRACTION_HELP = "share of the training images held out for validation, whole source images together (default 0.15)"
VAL_EVERY_HELP = "validate every N steps, keeping the best model (default {})"
SEED_HELP = "random seed of the validation split, crops and augmentation (default 0)"

#: help of ``--box-jitter`` (train nuclei, train nuclei-refiner)
BOX_JITTER_HELP = (
    "each edge of a simulated box moves by up to this fraction of the box's longer side (default 0.05, like a "
    "hand-drawn box; 0: exact bounding boxes, as benchmarks/interactive.py prompts)"
)


def add_train_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """``pathseg train`` and its tasks."""
    p = sub.add_parser("train", help="train models on your annotated images")
    tsub = p.add_subparsers(dest="task", metavar="TASK", required=True)
    t = tsub.add_parser(
        "nuclei",
        parents=[common],
        help="train a SAM-family nucleus model on image / instance-mask folders",
        epilog="several GPUs or machines: torchrun --nproc_per_node N -m pathseg.cli train nuclei ...",
        description="Train or fine-tune a nucleus model on folders holding images/ and instance_masks/ "
        "(integer labels: PNG / TIFF, HoVer-Net .mat, .npy). A validation split is carved from the training "
        "images; the best model by validation mSA is saved to OUT/best (pathseg format: use it with --model "
        "OUT/best). Re-running the same command resumes from OUT/checkpoint.pt.",
    )
    t.add_argument("--data", nargs="+", required=True, metavar="DIR", help="training folders")
    t.add_argument("-o", "--output", required=True, metavar="OUT", help="run folder (checkpoints, best model, log)")
    t.add_argument(
        "--mpp", type=positive_float, default=0.25, help="pixel size of the training images (µm/px; default 0.25, 40x)"
    )
    t.add_argument(
        "--model-mpp", type=positive_float, default=0.5, help="pixel size the model works at (µm/px; default 0.5)"
    )
    t.add_argument(
        "--iterations",
        type=int_at_least(1),
        default=20000,
        help="optimiser steps (default 20000, a GPU-sized run). On a CPU a --decoder-only fine-tune of "
        "pathseg_nuclei_cpu takes ~3 s per step: 600 steps at --lr 5e-4 (~30 min) took CoNSeP test F_d 0.68 -> 0.74",
    )
    t.add_argument("--batch", type=int_at_least(1), default=8, help="crops per step (default 8)")
    t.add_argument(
        "--crop", type=int_at_least(32), default=256, help="training crop size in model pixels (default 256)"
    )
    t.add_argument("--lr", type=positive_float, default=2e-3, help="AdamW learning rate (default 2e-3)")
    t.add_argument("--val-fraction", type=fraction, default=0.15, help=VAL_FRACTION_HELP)
    t.add_argument("--val-every", type=int_at_least(1), default=500, help=VAL_EVERY_HELP.format(500))
    t.add_argument(
        "--init",
        default=None,
        help="fine-tune this model: a zoo name (e.g. pathosam_vit_b), a checkpoint file or a model folder",
    )
    t.add_argument("--seed", type=int_at_least(0), default=0, help=SEED_HELP)
    t.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="auto (default): bf16 mixed precision where the CPU (avx512_bf16 / AMX) or GPU computes it natively, "
        "else fp32; bf16: always (~3x faster than fp32 where native, several times slower where emulated); fp32",
    )
    t.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    t.add_argument(
        "--check-sync",
        action="store_true",
        help="under torchrun: verify at the end that every replica holds identical weights",
    )
    t.add_argument(
        "--prompt-weight",
        type=non_negative_float,
        default=1.0,
        help="weight of the interactive (prompt) loss; 0 trains the automatic path only",
    )
    t.add_argument("--box-jitter", type=non_negative_float, default=0.05, help=BOX_JITTER_HELP)
    t.add_argument(
        "--freeze-bn",
        action="store_true",
        help="keep every BatchNorm layer's running statistics as --init has them (eval mode) while the weights "
        "train, so that small batches of mixed crops do not move them when fine-tuning",
    )
    t.add_argument(
        "--decoder-only",
        nargs="?",
        const=True,
        default=False,
        metavar="DECODER",
        help="train one decoder alone on the --init model's frozen encoder. train nuclei: the AIS decoder (alone "
        "or 'ais') at --model-mpp, which becomes the pixel size of the model's automatic path (prompts and classes "
        "unchanged); 'mask': the prompt path's mask decoder + prompt encoder at --model-mpp, which becomes its "
        "prompt_mpp (prompt loss only, best by validation box + point mSA; automatic path and classes unchanged). "
        "train nuclei-classes: the class decoder (class-weighted cross-entropy only), a small add-on; the nuclei "
        "outputs stay exactly as they were",
    )
    t.set_defaults(func=cmd_train_nuclei)
    tc = tsub.add_parser(
        "nuclei-classes",
        parents=[common],
        help="train a nucleus model's class decoder on instance + type masks (CoNSeP layout)",
        description="Add (or continue) a class decoder on a nucleus model: folders hold images/, instance_masks/ and "
        "type_masks/ (class id per pixel, 0 = background; names from a classes.csv). Class-weighted cross-entropy "
        "(inverse frequency) jointly with the AIS loss; --init fine-tunes an existing model (e.g. the AIS model), "
        "otherwise everything starts from scratch. The best model by validation mean per-class Dice (per-nucleus "
        "vote) is saved to OUT/best.",
    )
    for action in t._actions:  # the same options as `train nuclei`
        if action.dest in ("help", "quiet", "verbose"):
            continue
        tc._add_action(action)
    tc.add_argument(
        "--preset",
        choices=["pannuke", "consep"],
        default=None,
        help="a named class set: pannuke (5 classes, PathoSAM's order) or consep (4, HoVer-Net's grouping); "
        "default: the classes the type masks hold, named by a classes.csv",
    )
    tc.add_argument(
        "--mix",
        nargs="+",
        default=[],
        metavar="DIR",
        help="folders of images + instance masks without type masks (e.g. MoNuSeg), trained beside --data by the "
        "automatic and prompt losses only, so that the whole model keeps what it does on them; each dataset keeps "
        "the validation split it would have alone, and the best model is the one with the best class Dice + "
        "validation mSA of these folders (not with --decoder-only)",
    )
    tc.add_argument(
        "--mix-mpp",
        type=positive_float,
        default=None,
        metavar="MPP",
        help="the pixel size (µm/px) --mix data is trained and validated at (default: --model-mpp); e.g. the "
        "automatic path's ais_mpp, so that the class decoder learns at --model-mpp while the --mix nuclei stay at "
        "the pixel size the automatic path runs at",
    )
    tc.set_defaults(func=cmd_train_nuclei, task_kind="classes")
    tr = tsub.add_parser(
        "nuclei-refiner",
        parents=[common],
        help="add a prompt-mask refiner to a compact nucleus model (sharper interactive masks)",
        description="Train the prompt-mask refiner of a compact nucleus model on image / instance-mask folders: "
        "a small network that turns the mask decoder's quarter-resolution logits into full-resolution masks, "
        "guided by the pixels and the AIS maps, and predicts their IoU. Everything else stays frozen, so automatic "
        "segmentation is unchanged. Prompts are simulated (a point or a box, then corrective points). The best "
        "model by validation mSA of box and point prompts (of boxes alone with --prompts box) is saved to OUT/best. "
        "Re-running resumes.",
    )
    tr.add_argument("--data", nargs="+", required=True, metavar="DIR", help="training folders")
    tr.add_argument("-o", "--output", required=True, metavar="OUT", help="run folder (checkpoints, best model, log)")
    tr.add_argument("--init", default="pathseg_nuclei_cpu", help="the compact model to refine (zoo name or folder)")
    tr.add_argument("--mpp", type=positive_float, default=0.25, help="pixel size of the training images (µm/px)")
    tr.add_argument("--iterations", type=int_at_least(1), default=1500, help="optimiser steps (default 1500)")
    tr.add_argument("--batch", type=int_at_least(1), default=4, help="crops per step (default 4)")
    tr.add_argument(
        "--prompts-per-image", type=int_at_least(1), default=8, help="objects prompted per crop (default 8)"
    )
    tr.add_argument(
        "--corrections",
        type=int_at_least(0),
        default=2,
        help="corrective rounds after each simulated point or box (0: first prompts only, for a refiner shipped "
        "beside a correction refiner: tools/bundle_nuclei_model.py --keep-for-corrections)",
    )
    tr.add_argument("--box-jitter", type=non_negative_float, default=0.05, help=BOX_JITTER_HELP)
    tr.add_argument(
        "--prompts",
        choices=["both", "box"],
        default="both",
        help="both = points and boxes in turn (default); box = boxes alone, the best by validation box mSA kept: "
        "--init's box refiner if it has one (as the bundled model does), else its refiner fine-tuned into one "
        "(shipped beside the point refiner by tools/bundle_nuclei_model.py --add-refiner RUN/best --for-boxes); "
        "the main refiner's AIS-feature projection stays frozen. Each of --init's refiners learns the prompts it "
        "answers: a box alone its box refiner, a corrective round its correction refiner",
    )
    tr.add_argument("--lr", type=positive_float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    tr.add_argument(
        "--width",
        type=int_at_least(1),
        default=32,
        help="channels of a new refiner (default 32; a model's own refiner keeps its shape)",
    )
    tr.add_argument(
        "--dilations",
        type=int_at_least(1),
        nargs="+",
        default=[1, 2, 4, 8],
        help="dilations of a new refiner's 3x3 layers; receptive field 1 + 2 x their sum, in model pixels",
    )
    tr.add_argument(
        "--feature-channels",
        type=int_at_least(0),
        default=0,
        help="a new refiner's guide also holds this many channels, a learned 1x1 projection of the AIS decoder's "
        "last features (default 0: pixels and AIS maps only)",
    )
    tr.add_argument(
        "--val-fraction", type=fraction, default=0.15, help="as for `train nuclei` (same split; default 0.15)"
    )
    tr.add_argument("--val-every", type=int_at_least(1), default=250, help=VAL_EVERY_HELP.format(250))
    tr.add_argument("--seed", type=int_at_least(0), default=0, help=SEED_HELP)
    tr.set_defaults(func=cmd_train_refiner)
    tt = tsub.add_parser(
        "tissue",
        parents=[common],
        help="train a tissue head on frozen diffusion features (image / class-mask folders)",
        description="Train a small fully convolutional head on frozen diffusion features. Folders hold images/ and "
        "masks/ (or class_masks/, or GlaS's binary_masks/) with integer codes, mapped by --classes. Class-weighted "
        "cross-entropy; a validation split is carved from the training images; the best model by validation mIoU "
        "is saved to OUT/best (use it with --model OUT/best). Re-running the same command resumes.",
    )
    tt.add_argument("--data", nargs="+", required=True, metavar="DIR", help="training folders")
    tt.add_argument(
        "--no-cache",
        action="store_true",
        help="run the backbone on fresh random crops every iteration instead of caching the features of the "
        "training patches once (slower; no memory for the cache)",
    )
    tt.add_argument(
        "--views",
        type=int,
        choices=range(1, 9),
        default=2,
        help="dihedral views per image in the cache (1-8, default 2)",
    )
    tt.add_argument(
        "--stain",
        type=non_negative_float,
        default=0.0,
        help="stain augmentation: haematoxylin / eosin densities scaled by up to ±STAIN (cached: every view but "
        "the first gets one draw; default 0: none; 0.05 is mild)",
    )
    tt.add_argument("--cache-gb", type=positive_float, default=4.0, help="largest feature cache (GB, default 4)")
    tt.add_argument("-o", "--output", required=True, metavar="OUT", help="run folder (checkpoint, best model, log)")
    tt.add_argument(
        "--backbone",
        required=True,
        help="diffusion backbone: a folder (pathseg pretrain diffusion's OUT/backbone), a zoo name, or a tissue "
        "model whose backbone to take (pathseg_tissue: the bundled one); random:FOLDER = the same architecture "
        "with random weights (a control)",
    )
    tt.add_argument("--classes", default="glas", help="class map: glas, bcss5 or a JSON file (default glas)")
    tt.add_argument(
        "--timesteps", type=int_at_least(0), nargs="+", default=[50], help="diffusion timestep(s) t (default 50)"
    )
    tt.add_argument(
        "--blocks", type=int_at_least(0), nargs="+", default=[1, 2], help="UNet up blocks to take (default 1 2)"
    )
    tt.add_argument("--mpp", type=positive_float, default=None, help="pixel size of the images (µm/px)")
    tt.add_argument("--crop", type=int_at_least(32), default=256, help="training crop in pixels (default 256)")
    tt.add_argument(
        "--head-dilations",
        type=int_at_least(1),
        nargs="+",
        default=[1, 1],
        help="dilation of each 3x3 block of the head (default 1 1; 1 2 4 8 gives it 31x31 feature pixels of context)",
    )
    tt.add_argument(
        "--refine",
        type=int_at_least(0),
        default=0,
        metavar="WIDTH",
        help="add a pixel refiner of this width to the head: it sharpens the upsampled logits with the image's own "
        "pixels (the features lie on a grid of 4 pixels; default 0: none; 16 is a small one)",
    )
    tt.add_argument("--batch", type=int_at_least(1), default=4, help="crops per step (default 4)")
    tt.add_argument("--iterations", type=int_at_least(1), default=2000, help="optimiser steps (default 2000)")
    tt.add_argument("--lr", type=positive_float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    tt.add_argument("--val-fraction", type=fraction, default=0.15, help=VAL_FRACTION_HELP)
    tt.add_argument("--val-every", type=int_at_least(1), default=200, help=VAL_EVERY_HELP.format(200))
    tt.add_argument(
        "--label-fraction",
        type=share,
        default=1.0,
        help="share of the training images (after the validation split) to train on (e.g. 0.1; default 1)",
    )
    tt.add_argument("--seed", type=int_at_least(0), default=0, help=SEED_HELP)
    tt.add_argument("--name", default="pathseg_tissue", help="name stored in the model's config")
    tt.set_defaults(func=cmd_train_tissue)


def add_pretrain_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """``pathseg pretrain`` and its tasks."""
    p = sub.add_parser("pretrain", help="pretrain backbones on unlabeled images")
    psub = p.add_subparsers(dest="task", metavar="TASK", required=True)
    pd = psub.add_parser(
        "diffusion",
        parents=[common],
        help="train pathseg's own small latent diffusion backbone (for tissue features) on unlabeled H&E",
        description="Two resumable stages on random patches of unlabeled images (masks are never read): a VQ "
        "autoencoder, then a conditional UNet on its latents, conditioned on the nucleus model's image encoder "
        "(mean-pooled). Writes OUT/backbone (use it with `pathseg train tissue --backbone OUT/backbone`). Pass "
        "training splits only. A folder's pixel size comes from its files, else DIR@MPP, else --default-mpp.",
    )
    pd.add_argument("--data", nargs="+", required=True, metavar="DIR[@MPP]", help="image folders or files")
    pd.add_argument("-o", "--output", required=True, metavar="OUT", help="run folder")
    pd.add_argument(
        "--mpp",
        type=positive_float,
        default=1.0,
        help="working pixel size (µm/px, default 1.0: glands and tissue regions need context more than nuclear detail)",
    )
    pd.add_argument("--default-mpp", type=positive_float, default=0.25, help="for files without a pixel size")
    pd.add_argument(
        "--patch", type=int_at_least(32), default=128, help="UNet-stage training patch in pixels (default 128)"
    )
    pd.add_argument(
        "--vq-patch", type=int_at_least(32), default=64, help="autoencoder-stage training patch in pixels (default 64)"
    )
    pd.add_argument("--batch", type=int_at_least(1), default=16, help="patches per step (default 16)")
    pd.add_argument("--vq-iterations", type=int_at_least(1), default=800, help="autoencoder-stage steps (default 800)")
    pd.add_argument("--unet-iterations", type=int_at_least(1), default=3000, help="UNet-stage steps (default 3000)")
    pd.add_argument("--encoder-from", default="pathseg_nuclei_cpu", help="nucleus model whose encoder conditions")
    pd.add_argument(
        "--init",
        default=None,
        metavar="BACKBONE",
        help="continue pretraining this backbone (folder or name; a tissue model such as pathseg_tissue gives its "
        "backbone): the autoencoder stage is skipped and --unet-iterations more UNet iterations run; "
        "--encoder-from is then ignored",
    )
    pd.add_argument("--unet-lr", type=positive_float, default=5e-4, help="UNet-stage learning rate (default 5e-4)")
    pd.add_argument("--seed", type=int_at_least(0), default=0, help=SEED_HELP)
    pd.set_defaults(func=cmd_pretrain_diffusion)


def _train(train, cfg, args: argparse.Namespace) -> int:
    """Run ``train(cfg)`` under a progress bar, then print its best validation scores and where the model is."""
    with Bar("training", quiet=args.quiet) as bar:
        best = train(cfg, progress=bar, log=lambda m: log.info("%s", m))
    if "iteration" in best:
        print(f"best validation scores: {json.dumps(best)}\nmodel: {args.output}/best")
    else:  # nothing was validated: --val-fraction 0
        print(f"no validation split: the model after the last step is {args.output}/best")
    return 0


def cmd_train_nuclei(args: argparse.Namespace) -> int:
    from pathseg.train.nuclei import TrainConfig, train_nuclei

    cfg = TrainConfig(
        data=[str(d) for d in args.data],
        out=str(args.output),
        mpp_in=args.mpp,
        model_mpp=args.model_mpp,
        crop=args.crop,
        batch=args.batch,
        lr=args.lr,
        iterations=args.iterations,
        val_fraction=args.val_fraction,
        val_every=args.val_every,
        seed=args.seed,
        init=args.init,
        precision=args.precision,
        device=args.device,
        check_sync=args.check_sync,
        prompt_weight=args.prompt_weight,
        box_jitter=args.box_jitter,
        freeze_bn=args.freeze_bn,
        task=getattr(args, "task_kind", "nuclei"),
        decoder_only=getattr(args, "decoder_only", False),
        class_preset=getattr(args, "preset", None),
        mix=[str(d) for d in getattr(args, "mix", [])],
        mix_mpp=getattr(args, "mix_mpp", None),
    )
    return _train(train_nuclei, cfg, args)


def cmd_train_refiner(args: argparse.Namespace) -> int:
    from pathseg.train.refine import RefinerConfig, train_refiner

    cfg = RefinerConfig(
        data=[str(d) for d in args.data],
        out=str(args.output),
        init=args.init,
        mpp_in=args.mpp,
        iterations=args.iterations,
        batch=args.batch,
        prompts_per_image=args.prompts_per_image,
        corrections=args.corrections,
        box_jitter=args.box_jitter,
        lr=args.lr,
        width=args.width,
        dilations=tuple(args.dilations),
        feature_channels=args.feature_channels,
        prompts=args.prompts,
        val_fraction=args.val_fraction,
        val_every=args.val_every,
        seed=args.seed,
    )
    return _train(train_refiner, cfg, args)


def cmd_train_tissue(args: argparse.Namespace) -> int:
    from pathseg.train.tissue import TissueTrainConfig, train_tissue

    cfg = TissueTrainConfig(
        data=[str(d) for d in args.data],
        out=str(args.output),
        backbone=args.backbone,
        classes=args.classes,
        timesteps=args.timesteps,
        blocks=args.blocks,
        mpp_in=args.mpp,
        crop=args.crop,
        head_dilations=args.head_dilations,
        refine=args.refine,
        batch=args.batch,
        iterations=args.iterations,
        lr=args.lr,
        val_fraction=args.val_fraction,
        val_every=args.val_every,
        label_fraction=args.label_fraction,
        seed=args.seed,
        name=args.name,
        cache=not args.no_cache,
        views=args.views,
        stain=args.stain,
        cache_gb=args.cache_gb,
    )
    return _train(train_tissue, cfg, args)


def cmd_pretrain_diffusion(args: argparse.Namespace) -> int:
    from pathseg.train.diffusion import PretrainConfig, pretrain_diffusion

    cfg = PretrainConfig(
        data=[str(d) for d in args.data],
        out=str(args.output),
        mpp=args.mpp,
        default_mpp=args.default_mpp,
        patch=args.patch,
        vq_patch=args.vq_patch,
        batch=args.batch,
        vq_iterations=args.vq_iterations,
        unet_iterations=args.unet_iterations,
        encoder_from=args.encoder_from,
        init=args.init,
        lr_unet=args.unet_lr,
        seed=args.seed,
    )
    with Bar("pretraining", quiet=args.quiet) as bar:
        folder = pretrain_diffusion(cfg, progress=bar, log=lambda m: log.info("%s", m))
    print(f"backbone: {folder}")
    return 0
